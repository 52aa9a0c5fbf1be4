"""A container's port mappings: host ports allocated, then the rules of each binding.

Mirrors moby 76417bf763 libnetwork/drivers/bridge/port_mapping_linux.go: ``addPortMappings``,
``bindHostPorts``, ``setPerPortIptables``, ``filterPortMappedOnLoopback``, ``filterDirectAccess``,
``setPerPortNAT``, ``setPerPortForwarding``.
"""

from __future__ import annotations

from ipaddress import ip_network

from nftdocker.docker.hostports import ANY_V4, binding_sort_key, configure_binding_v4, configure_binding_v6, need_same_port
from nftdocker.docker.iptables import DOCKER, V
from nftdocker.docker.state import FirewallState
from nftdocker.errors import GenerationError
from nftdocker.model import Binding, Container, Endpoint, IPAddress, Network, PortSpec
from nftdocker.nft.ir import Addr, Dnat, Iface, Masquerade, Port, Verdict, host, rule

LINK_LOCAL6 = ip_network("fe80::/10")


class PortMappings(FirewallState):
    """The port mappings of a container's gateway endpoint: one method per moby function."""

    def add_port_mappings(self, ctr: Container, net: Network, ep: Endpoint) -> list[Binding]:
        """port_mapping_linux.go addPortMappings: sort, expand per family, allocate host ports, program rules."""
        if not ctr.publish:
            return []
        def_host_ip: IPAddress = net.host_binding if net.host_binding is not None else ANY_V4
        cfg = sorted(ctr.publish, key=binding_sort_key)
        disable_nat = {4: net.gw_mode4 == "routed", 6: net.gw_mode6 == "routed"}
        out: list[Binding] = []
        group: list[tuple[PortSpec, IPAddress, IPAddress]] = []
        for i, c in enumerate(cfg):
            b4 = configure_binding_v4(c, ep.ipv4, def_host_ip, disable_nat[4])
            if b4 is not None:
                group.append((c, *b4))
            cip6: IPAddress | None = ep.ipv6
            if ep.ipv6 is None and self.daemon.userland_proxy:
                cip6 = ep.ipv4
            b6 = configure_binding_v6(c, cip6, def_host_ip, disable_nat[6])
            if b6 is not None:
                group.append((c, *b6))
            if i < len(cfg) - 1 and need_same_port(c, cfg[i + 1]):
                continue
            out.extend(self._bind_host_ports(ctr, group, disable_nat))
            group = []
        for b in out:
            self.set_per_port_iptables(net, b, ctr.name)
        for b in out:
            try:
                self.ports.listen(b.proto, b.host_port, b.host_ip)
            except ValueError as e:
                raise GenerationError(f"{self.sc.source}: container {ctr.name!r}: -p {b.host_port}:{b.container_port}/{b.proto}: {e}") from None
        return out

    def _bind_host_ports(
        self, ctr: Container, group: list[tuple[PortSpec, IPAddress, IPAddress]], disable_nat: dict[int, bool]
    ) -> list[Binding]:
        """port_mapping_linux.go bindHostPorts: one host port for every address of the group."""
        if not group:
            return []
        spec = group[0][0]
        nat_group = [(s, hip, cip) for (s, hip, cip) in group if not disable_nat[cip.version]]
        port = 0
        if nat_group:
            lo, hi = spec.host_port, spec.host_port_end or spec.host_port
            try:
                port = self.ports.request([hip for (_, hip, _) in nat_group], spec.proto, lo, hi, spec.allocated)
            except ValueError as e:
                raise GenerationError(f"{self.sc.source}: container {ctr.name!r}: -p {spec}: {e}") from None
        out = []
        for s, hip, cip in group:
            hp = 0 if disable_nat[cip.version] else port
            out.append(Binding(s.proto, cip, s.container_port, hip, hp))
        return out

    def set_per_port_iptables(self, net: Network, b: Binding, ctr: str) -> None:
        """port_mapping_linux.go setPerPortIptables: loopback filter, direct-access filter, DNAT, per-port ACCEPT."""
        v: V = b.container_ip.version  # type: ignore[assignment]
        if not self.enabled(v):
            return
        origin = f"{net.name} {ctr} {b.host_port}->{b.container_port}/{b.proto}"
        self.filter_port_mapped_on_loopback(b, origin)
        self.filter_direct_access(net, b, origin)
        if b.container_ip.version != b.host_ip.version:
            return
        self.set_per_port_nat(net, b, origin)
        if self.gw_mode(v, net) != "nat-unprotected":
            self.set_per_port_forwarding(net, b, origin)

    def filter_port_mapped_on_loopback(self, b: Binding, origin: str) -> None:
        """port_mapping_linux.go filterPortMappedOnLoopback: raw ``-d 127.x --dport HP ! -i lo -j DROP``."""
        if b.host_port == 0 or b.host_ip.version != 4 or not b.host_ip.is_loopback:
            return
        if not self.daemon.iptables:
            return
        self.ipt[4].append(
            "raw", "PREROUTING",
            rule(Addr("d", host(b.host_ip)), Iface("i", "lo", True), Port(b.proto, "d", b.host_port),
                 action=Verdict("DROP"), origin=f"filterPortMappedOnLoopback[{origin}]"),
        )

    def filter_direct_access(self, net: Network, b: Binding, origin: str) -> None:
        """port_mapping_linux.go filterDirectAccess: raw ``-d CIP --dport CPORT ! -i BR -j DROP`` (nat mode only)."""
        v: V = b.container_ip.version  # type: ignore[assignment]
        if self.gw_mode(v, net) in ("nat-unprotected", "routed"):
            return
        self.ipt[v].append(
            "raw", "PREROUTING",
            rule(Addr("d", host(b.container_ip)), Iface("i", net.bridge, True), Port(b.proto, "d", b.container_port),
                 action=Verdict("DROP"), origin=f"filterDirectAccess[{origin}]"),
        )

    def set_per_port_nat(self, net: Network, b: Binding, origin: str) -> None:
        """port_mapping_linux.go setPerPortNAT: DNAT in nat DOCKER; hairpin MASQUERADE without the proxy."""
        if b.host_port == 0:
            return
        v: V = b.container_ip.version  # type: ignore[assignment]
        ipt = self.ipt[v]
        dst = None if b.host_ip.is_unspecified else Addr("d", host(b.host_ip))
        not_bridge = None if self.daemon.hairpin else Iface("i", net.bridge, True)
        not_ll = Addr("s", LINK_LOCAL6, True) if v == 6 else None
        ipt.append(
            "nat", DOCKER,
            rule(dst, not_bridge, not_ll, Port(b.proto, "d", b.host_port),
                 action=Dnat(b.container_ip, b.container_port), origin=f"setPerPortNAT[{origin}] DNAT"),
        )
        if not self.daemon.hairpin:
            # Docker deletes the hairpin MASQUERADE here; only a host without the proxy ever adds
            # it, and the proxy setting is the daemon's, so on this host there is none to delete.
            return
        ipt.append("nat", "POSTROUTING",
                   rule(Addr("s", host(b.container_ip)), Addr("d", host(b.container_ip)), Port(b.proto, "d", b.container_port),
                        action=Masquerade(), origin=f"setPerPortNAT[{origin}] MASQUERADE"))

    def set_per_port_forwarding(self, net: Network, b: Binding, origin: str) -> None:
        """port_mapping_linux.go setPerPortForwarding: filter DOCKER ``-I`` ACCEPT to the container port."""
        v: V = b.container_ip.version  # type: ignore[assignment]
        self.ipt[v].insert(
            "filter", DOCKER,
            rule(Addr("d", host(b.container_ip)), Iface("i", net.bridge, True), Iface("o", net.bridge),
                 Port(b.proto, "d", b.container_port), action=Verdict("ACCEPT"), origin=f"setPerPortForwarding[{origin}]"),
        )
