"""The address pool of one bridge subnet: how Docker picks a container's addresses.

Mirrors moby 76417bf763 libnetwork/ipams/defaultipam/allocator.go (``RequestAddress``,
``getAddress``, over libnetwork/internal/addrset).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from nftdocker.model import IPAddress


class Pool:
    """libnetwork's default IPAM for one subnet (defaultipam getAddress): lowest free address, reused after release.

    The first address (and the IPv4 broadcast) is reserved; the gateway is requested first, so with
    the default gateway (.1 / ::1) containers get .2, .3, ... An address asked for (``--ip``) may
    be anywhere in the subnet; the others come from the range (``--ip-range``, ``--fixed-cidr``)
    when there is one (AddAnyInRange, not serial on a bridge network).
    """

    def __init__(self, subnet: IPv4Network | IPv6Network, gateway: IPAddress | None,
                 ip_range: IPv4Network | IPv6Network | None = None) -> None:
        self.subnet = subnet
        self.range = ip_range
        self.used: set[int] = set()
        within = ip_range if ip_range is not None else subnet
        self.first = int(within.network_address)
        self.last = int(within.broadcast_address)
        if not (subnet.version == 4 and subnet.prefixlen >= 31):
            self.used.add(int(subnet.network_address))
            if subnet.version == 4:
                self.used.add(int(subnet.broadcast_address))
        if gateway is not None:
            self.used.add(int(gateway))
        self.free_from = self.first  # every address below it is in use

    def is_free(self, a: IPAddress) -> bool:
        return a in self.subnet and int(a) not in self.used

    def release(self, a: IPAddress) -> None:
        """An endpoint went away: its address is free again (and the lowest free one may be lower now)."""
        self.used.discard(int(a))
        self.free_from = min(self.free_from, int(a))

    def allocate(self, want: IPAddress | None) -> IPAddress:
        if want is not None:
            if want not in self.subnet:
                raise ValueError(f"address {want} is not in subnet {self.subnet}")
            if int(want) in self.used:
                raise ValueError(f"address {want} is already in use")
            self.used.add(int(want))
            return want
        n = self.free_from
        for _ in range(min(self.last - n + 1, 1 << 20)):
            if n not in self.used:
                self.used.add(n)
                self.free_from = n + 1
                return IPv4Address(n) if self.subnet.version == 4 else IPv6Address(n)
            n += 1
        raise ValueError(f"no free address left in {self.range or self.subnet}")
