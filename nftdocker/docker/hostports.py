"""Host ports: Docker's sort of a container's port bindings, their per-family configuration, and the allocator.

Mirrors moby 76417bf763 libnetwork/drivers/bridge/port_mapping_linux.go (``cmpPortBinding``,
``needSamePort``, ``configurePortBindingIPv4``/``IPv6``, ``bindHostPorts``) and
libnetwork/portallocator (``RequestPortsInRange``, the ephemeral range it reads from
``net.ipv4.ip_local_port_range``).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Iterable

from nftdocker import DOCKER_ENGINE_VERSION
from nftdocker.model import PROTO_ORDER, IPAddress, PortSpec

ANY_V4 = IPv4Address("0.0.0.0")
ANY_V6 = IPv6Address("::")

# Linux's default net.ipv4.ip_local_port_range, which Docker's port allocator reads.
EPHEMERAL_PORTS = (32768, 60999)


def binding_sort_key(p: PortSpec) -> tuple:
    """port_mapping_linux.go cmpPortBinding: exact ports before ranges, then port, proto, host port, host IP."""
    end = p.host_port_end or p.host_port
    is_range = p.host_port == 0 or p.host_port != end
    if p.host_ip is None:
        ip_key: tuple = (0, 0, 0)
    else:
        ip_key = (1, p.host_ip.version, int(p.host_ip))
    return (is_range, p.container_port, PROTO_ORDER[p.proto], p.host_port, end, ip_key)


def need_same_port(a: PortSpec, b: PortSpec) -> bool:
    """port_mapping_linux.go needSamePort."""
    return (
        a.container_port == b.container_port
        and a.proto == b.proto
        and a.host_port == b.host_port
        and (a.host_port_end or a.host_port) == (b.host_port_end or b.host_port)
    )


def configure_binding_v4(
    c: PortSpec, cip: IPAddress | None, def_host_ip: IPAddress, disable_nat: bool
) -> tuple[IPAddress, IPAddress] | None:
    """port_mapping_linux.go configurePortBindingIPv4: (host IP, container IP) or None."""
    if cip is None:
        return None
    hip = c.host_ip
    if hip is not None and hip.version != 4:
        return None
    if hip is None:
        if def_host_ip.version != 4:
            return None
        hip = ANY_V4 if disable_nat else def_host_ip
    if disable_nat and not hip.is_unspecified:
        hip = ANY_V4
    return hip, cip


def configure_binding_v6(
    c: PortSpec, cip: IPAddress | None, def_host_ip: IPAddress, disable_nat: bool
) -> tuple[IPAddress, IPAddress] | None:
    """port_mapping_linux.go configurePortBindingIPv6: (host IP, container IP) or None."""
    if cip is None:
        return None
    hip = c.host_ip
    if hip is not None and hip.version != 6:
        return None
    if hip is None:
        if def_host_ip == ANY_V4:
            hip = ANY_V6
        elif def_host_ip.version == 6:
            hip = ANY_V6 if disable_nat else def_host_ip
        else:
            return None
    if disable_nat and not hip.is_unspecified:
        hip = ANY_V6
    return hip, cip


class PortAllocator:
    """libnetwork/portallocator plus the sockets bindHostPorts binds: how Docker picks host ports.

    The allocator keeps ports per (host address, protocol): 0.0.0.0, :: and specific addresses
    are separate keys. A range record starts with ``last = end``, so the first port handed out is
    the range's start; later requests continue after the last one, wrapping. Each allocated port
    is then bound (SO_REUSEADDR, IPV6_V6ONLY) and, for TCP, listened on once all of a container's
    ports are bound. So the kernel refuses a TCP bind that overlaps (same family and port, equal
    addresses or one of them unspecified) a listening socket of an earlier container, and an SCTP
    bind that overlaps any (no SO_REUSEADDR); UDP never clashes. Docker then releases the port
    and retries (bindHostPorts, up to 10 attempts), the range's ``last`` already moved on: that
    is why ``-p 127.0.0.1::81`` after another container's ``-p 80`` gets 32769, not 32768.
    """

    ATTEMPTS = 10  # bridge_linux.go maxAllocatePortAttempts

    def __init__(self) -> None:
        self.taken: dict[tuple[IPAddress, str], set[int]] = {}
        self.last: dict[tuple[IPAddress, str, int, int], int] = {}
        # (proto, port) -> the bound sockets: [host address, listening]
        self.sockets: dict[tuple[str, int], list[list]] = {}

    def release(self, hip: IPAddress, proto: str, port: int) -> None:
        """The port mapping went away (a container stopped): the host port and its socket are free again."""
        if not port:
            return
        self.taken.get((hip, proto), set()).discard(port)
        socks = self.sockets.get((proto, port), [])
        for i, (h, _) in enumerate(socks):
            if h == hip:
                del socks[i]
                break

    def _allocate(self, hips: list[IPAddress], proto: str, lo: int, hi: int) -> int:
        """portallocator RequestPortsInRange."""
        if lo == hi:
            if any(lo in self.taken.get((h, proto), ()) for h in hips):
                raise ValueError(f"host port {lo}/{proto} is already allocated")
            for h in hips:
                self.taken.setdefault((h, proto), set()).add(lo)
            return lo
        port = self.last.get((hips[0], proto, lo, hi), hi)
        for _ in range(hi - lo + 1):
            port = lo if port >= hi else port + 1
            if all(port not in self.taken.get((h, proto), ()) for h in hips):
                for h in hips:
                    self.taken.setdefault((h, proto), set()).add(port)
                    self.last[(h, proto, lo, hi)] = port
                return port
        raise ValueError(f"no free host port in {lo}-{hi}/{proto}")

    def _clash(self, hip: IPAddress, proto: str, port: int, listening_only: bool) -> IPAddress | None:
        for other, listening in self.sockets.get((proto, port), ()):
            if other.version == hip.version and (other == hip or other.is_unspecified or hip.is_unspecified):
                if listening or not listening_only:
                    return other
        return None

    def _bind_clash(self, hip: IPAddress, proto: str, port: int) -> IPAddress | None:
        """The socket that makes bind() fail with EADDRINUSE, if any."""
        if proto == "udp":
            return None
        return self._clash(hip, proto, port, listening_only=proto == "tcp")

    def request(self, hips: Iterable[IPAddress], proto: str, lo: int, hi: int, allocated: int = 0) -> int:
        """bindHostPorts: allocate one port for all of ``hips`` and bind it; ``allocated`` is what a dump shows."""
        hips = list(hips)
        if lo == 0:
            lo, hi = EPHEMERAL_PORTS
        if allocated:  # the daemon did bind it: record it, as the range's last port too
            for h in hips:
                self.taken.setdefault((h, proto), set()).add(allocated)
                if lo != hi:
                    self.last[(h, proto, lo, hi)] = allocated
                self.sockets.setdefault((proto, allocated), []).append([h, False])
            return allocated
        problem = ""
        for _ in range(self.ATTEMPTS):
            port = self._allocate(hips, proto, lo, hi)
            clash = next(((h, o) for h in hips for o in [self._bind_clash(h, proto, port)] if o is not None), None)
            if clash is None:
                for h in hips:
                    self.sockets.setdefault((proto, port), []).append([h, False])
                return port
            for h in hips:
                self.taken[(h, proto)].discard(port)
            h, o = clash
            problem = (f"Docker {DOCKER_ENGINE_VERSION} fails to start it: binding {_hostport(h, port)}/{proto} fails "
                       f"(address already in use by {_hostport(o, port)} of an earlier container)")
            if lo == hi:
                break
        raise ValueError(problem)

    def listen(self, proto: str, port: int, hip: IPAddress) -> None:
        """The TCP listen() after a container's ports are bound; fails on an overlapping listener."""
        if proto != "tcp" or port == 0:
            return
        clash = self._clash(hip, proto, port, listening_only=True)
        if clash is not None:
            raise ValueError(f"Docker {DOCKER_ENGINE_VERSION} fails to start it: listen on {_hostport(hip, port)}/tcp fails "
                             f"(address already in use by its own {_hostport(clash, port)})")
        for sock in self.sockets.get((proto, port), ()):
            if sock[0] == hip and not sock[1]:
                sock[1] = True
                return


def _hostport(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
