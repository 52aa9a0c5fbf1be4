"""Generation: the scenario replayed as Docker 28.0.1 would program it, as rule IR.

Docker builds its chains with ``-I`` (insert at the top), ``-A`` (append) and ``-D`` as the
daemon starts and networks and containers come and go; the order iptables-save shows is the
history of those calls. :class:`Firewall` replays the same operations on per-chain lists, so
the exact order (removals included) comes out by construction. One method per moby function,
named after it, each with a docstring line naming the function it mirrors (moby commit
76417bf763, libnetwork/drivers/bridge/...).

Pure: no I/O, deterministic.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Iterable, Iterator, Literal

from nftdocker.errors import GenerationError
from nftdocker.nft.ir import (
    Action,
    Addr,
    AddrTypeLocal,
    Chain,
    CtState,
    Dnat,
    Iface,
    Jump,
    L4Proto,
    Masquerade,
    Port,
    Rule,
    Ruleset,
    Snat,
    Verdict,
    gc_paused,
    host,
    rule,
)
from nftdocker.model import (
    DEFAULT_BRIDGE_NETWORK,
    PROTO_ORDER,
    Binding,
    Container,
    Endpoint,
    Event,
    IPAddress,
    Network,
    PortSpec,
    Scenario,
)

V = Literal[4, 6]

DOCKER = "DOCKER"
DOCKER_FORWARD = "DOCKER-FORWARD"
DOCKER_BRIDGE = "DOCKER-BRIDGE"
DOCKER_CT = "DOCKER-CT"
DOCKER_USER = "DOCKER-USER"
ISOLATION1 = "DOCKER-ISOLATION-STAGE-1"
ISOLATION2 = "DOCKER-ISOLATION-STAGE-2"

LOOPBACK4 = ip_network("127.0.0.0/8")
LOOPBACK6 = ip_network("::1/128")
LINK_LOCAL6 = ip_network("fe80::/10")

ANY_V4 = IPv4Address("0.0.0.0")
ANY_V6 = IPv6Address("::")

# Linux's default net.ipv4.ip_local_port_range, which Docker's port allocator reads.
EPHEMERAL_PORTS = (32768, 60999)


@dataclass(frozen=True)
class Sysctl:
    """A kernel setting Docker makes beside its rules (applied by ``apply --sysctls``)."""

    key: str
    value: str
    origin: str


def sysctl_path(key: str) -> str:
    """The /proc/sys file of a sysctl key; interface names may hold dots (net.ipv4.conf.br.1.route_localnet)."""
    parts = key.split(".")
    if len(parts) > 4 and parts[0] == "net" and parts[1] in ("ipv4", "ipv6") and parts[2] == "conf":
        parts = parts[:3] + [".".join(parts[3:-1]), parts[-1]]
    return "/proc/sys/" + "/".join(parts)


@dataclass
class Generated:
    """The result of generation: one ruleset per family plus what Docker sets beside it."""

    scenario: Scenario
    rulesets: dict[str, Ruleset]
    endpoints: list[Endpoint] = field(default_factory=list)
    bindings: dict[str, list[Binding]] = field(default_factory=dict)
    sysctls: list[Sysctl] = field(default_factory=list)
    hairpin_ports: list[str] = field(default_factory=list)

    def families(self) -> list[str]:
        """The families Docker writes rules for (``ip6`` only while ip6tables is on)."""
        return [f for f in ("ip", "ip6") if not self.rulesets[f].is_empty()]


class Iptables:
    """One family's iptables, as Docker drives it: check-then-insert/append, delete, policy.

    ``index`` holds each chain's rules as a set, so the ``-C`` check before every insert and
    append costs O(1) instead of a scan of the chain (thousands of rules on a large host). A rule
    is only added when absent, so a chain never holds one twice.
    """

    def __init__(self, family: Literal["ip", "ip6"]) -> None:
        self.rs = Ruleset(family)
        self.index: dict[tuple[str, str], set[Rule]] = {}
        #: while set, every rule added is recorded here (what an operation must undo later)
        self.journal: list[tuple[str, str, Rule]] | None = None

    def chain(self, table: str, name: str) -> Chain:
        key = (table, name)
        c = self.rs.chains.get(key)
        if c is None:
            c = Chain(table, name)
            if c.builtin:
                c.policy = "ACCEPT"
            self.rs.chains[key] = c
            self.index[key] = set()
        return c

    def new_chain(self, table: str, name: str) -> None:
        """iptables.NewChain: ``-N`` if missing; never flushed."""
        self.chain(table, name)

    def has(self, table: str, chain: str, r: Rule) -> bool:
        present = self.index.get((table, chain))
        return present is not None and r in present

    def append(self, table: str, chain: str, r: Rule) -> None:
        """Rule.Append: ``-C`` then ``-A`` if absent."""
        c = self.chain(table, chain)
        present = self.index[(table, chain)]
        if r not in present:
            c.rules.append(r)
            present.add(r)
            if self.journal is not None:
                self.journal.append((table, chain, r))

    def insert(self, table: str, chain: str, r: Rule) -> None:
        """Rule.Insert: ``-C`` then ``-I`` (position 1) if absent."""
        c = self.chain(table, chain)
        present = self.index[(table, chain)]
        if r not in present:
            c.rules.insert(0, r)
            present.add(r)
            if self.journal is not None:
                self.journal.append((table, chain, r))

    def delete(self, table: str, chain: str, r: Rule) -> None:
        """Rule.Delete: ``-D`` if present."""
        present = self.index.get((table, chain))
        if present is not None and r in present:
            self.rs.chains[(table, chain)].rules.remove(r)
            present.remove(r)

    def ensure_jump(self, table: str, src: str, dst: str, origin: str) -> None:
        """iptables.EnsureJumpRule: delete ``-j dst`` if present, then insert it at the top."""
        r = rule(action=Jump(dst), origin=origin)
        self.delete(table, src, r)
        self.insert(table, src, r)

    def set_policy(self, table: str, chain: str, policy: Literal["ACCEPT", "DROP"]) -> None:
        """iptables.SetDefaultPolicy: ``-P``."""
        self.chain(table, chain).policy = policy


class Firewall:
    """Docker's bridge driver and daemon, replayed: one method per moby function."""

    def __init__(self, scenario: Scenario) -> None:
        self.sc = scenario
        self.daemon = scenario.daemon
        self.ipt: dict[int, Iptables] = {4: Iptables("ip"), 6: Iptables("ip6")}
        self.forwarding = {4: scenario.host.ipv4_forwarding, 6: scenario.host.ipv6_forwarding}
        self.sysctls: dict[tuple[str, str], Sysctl] = {}  # by (key, value), in the order first set
        self.ipam: dict[tuple[str, int], _Pool] = {}
        self.ports = _PortAllocator()
        self.endpoints: list[Endpoint] = []
        self.bindings: dict[str, list[Binding]] = {}
        self.hairpin_ports: list[str] = []
        self.networks = {n.name: n for n in scenario.networks}
        self.containers = {c.name: c for c in scenario.containers}
        self.eps: dict[tuple[str, str], Endpoint] = {}  # (container, network) -> its endpoint, for links
        # the history (events): what each running container and each network programmed, to undo it
        self.running: dict[str, list[tuple[Network, Endpoint]]] = {}
        self.gateway: dict[str, str] = {}  # container -> the network of its gateway endpoint
        self.external: dict[str, dict[int, list]] = {}  # container -> rules its gateway endpoint added
        self.network_rules: dict[str, dict[int, list]] = {}
        self.last_addresses: dict[tuple[str, str], Endpoint] = {}  # a stopped container's endpoints

    def enabled(self, v: V) -> bool:
        return self.daemon.iptables if v == 4 else self.daemon.ip6tables

    # ------------------------------------------------------------------ daemon start

    def start_daemon(self) -> None:
        """bridge.configure + libnetwork.New + configureNetworking (daemon start, fresh host)."""
        for v in (4, 6):
            if self.enabled(v):
                self.setup_ip_chains(v)
        for v in (4, 6):
            if self.enabled(v):
                self.setup_user_chain(v)

    def setup_ip_chains(self, v: V) -> None:
        """setup_ip_tables_linux.go setupIPChains: Docker's chains and the jumps into them."""
        ipt = self.ipt[v]
        o = "setupIPChains"
        ipt.new_chain("nat", DOCKER)
        for name in (DOCKER, DOCKER_FORWARD, DOCKER_BRIDGE, DOCKER_CT, ISOLATION1, ISOLATION2):
            ipt.new_chain("filter", name)
        self.add_nat_jump_rules(v)
        ipt.ensure_jump("filter", "FORWARD", DOCKER_FORWARD, o)
        ipt.ensure_jump("filter", DOCKER_FORWARD, DOCKER_BRIDGE, o)
        ipt.ensure_jump("filter", DOCKER_FORWARD, ISOLATION1, o)
        ipt.ensure_jump("filter", DOCKER_FORWARD, DOCKER_CT, o)

    def add_nat_jump_rules(self, v: V) -> None:
        """setup_ip_tables_linux.go addNATJumpRules: PREROUTING/OUTPUT ``-m addrtype --dst-type LOCAL -j DOCKER``."""
        ipt = self.ipt[v]
        o = "addNATJumpRules"
        ipt.append("nat", "PREROUTING", rule(AddrTypeLocal("d"), action=Jump(DOCKER), origin=o))
        loopback = None
        if not self.daemon.hairpin:
            loopback = Addr("d", LOOPBACK4 if v == 4 else LOOPBACK6, negate=True)
        ipt.append("nat", "OUTPUT", rule(AddrTypeLocal("d"), loopback, action=Jump(DOCKER), origin=o))

    def setup_user_chain(self, v: V) -> None:
        """firewall_linux.go setupUserChain: DOCKER-USER with its RETURN, jumped to first from FORWARD."""
        ipt = self.ipt[v]
        ipt.new_chain("filter", DOCKER_USER)
        ipt.append("filter", DOCKER_USER, rule(action=Verdict("RETURN"), origin="setupUserChain"))
        ipt.ensure_jump("filter", "FORWARD", DOCKER_USER, "setupUserChain")

    # ------------------------------------------------------------------ networks

    def create_network(self, net: Network) -> None:
        """bridge_linux.go createNetwork: the setup steps that touch the firewall, in their order."""
        d = self.daemon
        has4, has6 = net.enable_ipv4, net.enable_ipv6
        for v, has in ((4, has4), (6, has6)):
            pool_nets = net.subnets4 if v == 4 else net.subnets6
            gws = net.gateways4 if v == 4 else net.gateways6
            ranges = net.ip_ranges4 if v == 4 else net.ip_ranges6
            if has:
                self.ipam[(net.name, v)] = _Pool(pool_nets[0], gws[0] if gws else None, ranges[0] if ranges else None)
        if has4 and d.ip_forward:
            self.setup_ip_forwarding(4, net)
        if has6 and d.ip_forward:
            self.setup_ip_forwarding(6, net)
        if d.hairpin:
            self.sysctl(f"net.ipv4.conf.{net.bridge}.route_localnet", "1", f"setupLoopbackAddressesRouting[{net.name}]")
        if has4 and self.enabled(4):
            self.setup_ip_tables(4, net, net.subnets4[0])
        if has6 and self.enabled(6):
            self.setup_ip_tables(6, net, net.subnets6[0])
        if self.enabled(4) or self.enabled(6):
            self.isolate_network(net)
        if not net.icc or d.hairpin:
            if self.enabled(4) and self.forwarding[4]:
                self.sysctl("net.bridge.bridge-nf-call-iptables", "1", f"setupIPv4BridgeNetFiltering[{net.name}]")
            if self.enabled(6) and has6:
                self.sysctl("net.bridge.bridge-nf-call-ip6tables", "1", f"setupIPv6BridgeNetFiltering[{net.name}]")

    def setup_ip_forwarding(self, v: V, net: Network) -> None:
        """setup_ip_forwarding.go setupIPv4Forwarding/setupIPv6Forwarding: FORWARD DROP only if dockerd turned it on."""
        if v == 4:
            self.sysctl("net.ipv4.ip_forward", "1", f"setupIPv4Forwarding[{net.name}]")
        else:
            self.sysctl("net.ipv6.conf.default.forwarding", "1", f"setupIPv6Forwarding[{net.name}]")
            self.sysctl("net.ipv6.conf.all.forwarding", "1", f"setupIPv6Forwarding[{net.name}]")
        changed = not self.forwarding[v]
        self.forwarding[v] = True
        if changed and self.enabled(v) and not self.daemon.ip_forward_no_drop:
            self.ipt[v].set_policy("filter", "FORWARD", "DROP")

    def setup_ip_tables(self, v: V, net: Network, subnet: IPv4Network | IPv6Network) -> None:
        """setup_ip_tables_linux.go setupIPTables."""
        if net.internal:
            self.setup_internal_network_rules(v, net, subnet)
            return
        self.setup_non_internal_network_rules(v, net, subnet)
        self.set_default_forward_rule(v, net)
        br = net.bridge
        self.ipt[v].append(
            "filter", DOCKER_CT,
            rule(Iface("o", br), CtState(), action=Verdict("ACCEPT"), origin=f"setupIPTables[{net.name}] ct related"),
        )
        self.ipt[v].append(
            "filter", DOCKER_BRIDGE,
            rule(Iface("o", br), action=Jump(DOCKER), origin=f"setupIPTables[{net.name}] jump to docker"),
        )

    def gw_mode(self, v: V, net: Network) -> str:
        return net.gw_mode4 if v == 4 else net.gw_mode6

    def setup_non_internal_network_rules(self, v: V, net: Network, subnet: IPv4Network | IPv6Network) -> None:
        """setup_ip_tables_linux.go setupNonInternalNetworkRules: NAT, skip-DNAT, hairpin MASQ, ICC, ICMP, outgoing."""
        ipt = self.ipt[v]
        br = net.bridge
        o = f"setupNonInternalNetworkRules[{net.name}]"
        host_ip = net.host_ipv4 if v == 4 else net.host_ipv6
        nat = self.gw_mode(v, net) != "routed"
        hairpin = self.daemon.hairpin
        masq: Action = Snat(host_ip) if host_ip is not None else Masquerade()
        if nat and net.masquerade:
            ipt.insert("nat", "POSTROUTING", rule(Addr("s", subnet), Iface("o", br, True), action=masq, origin=o + " NAT"))
        if not nat or (net.masquerade and not hairpin):
            ipt.insert("nat", DOCKER, rule(Iface("i", br), action=Verdict("RETURN"), origin=o + " SKIP DNAT"))
        if hairpin:
            ipt.insert("nat", "POSTROUTING", rule(AddrTypeLocal("s"), Iface("o", br), action=masq, origin=o + " MASQ LOCAL HOST"))
        # else Docker deletes that rule; hairpin is the daemon's setting, so on this host it was never added
        self.set_icc(v, net, internal=False)
        if not nat:
            self.set_icmp(v, net)
        out_no_icc = rule(Iface("i", br), Iface("o", br, True), action=Verdict("ACCEPT"), origin=o + " ACCEPT NON_ICC OUTGOING")
        if net.icc:
            ipt.append("filter", DOCKER_FORWARD, rule(Iface("i", br), action=Verdict("ACCEPT"), origin=o + " ACCEPT OUTGOING"))
        else:
            ipt.append("filter", DOCKER_FORWARD, out_no_icc)

    def set_icc(self, v: V, net: Network, internal: bool) -> None:
        """setup_ip_tables_linux.go setIcc: ``-i BR -o BR`` ACCEPT (internal + icc) or DROP (no icc)."""
        ipt = self.ipt[v]
        br = net.bridge
        o = f"setIcc[{net.name}]"
        accept = rule(Iface("i", br), Iface("o", br), action=Verdict("ACCEPT"), origin=o)
        drop = rule(Iface("i", br), Iface("o", br), action=Verdict("DROP"), origin=o)
        if net.icc and internal:
            ipt.append("filter", DOCKER_FORWARD, accept)
        else:
            ipt.delete("filter", DOCKER_FORWARD, accept)
        if not net.icc:
            ipt.append("filter", DOCKER_FORWARD, drop)
        else:
            ipt.delete("filter", DOCKER_FORWARD, drop)

    def set_icmp(self, v: V, net: Network) -> None:
        """setup_ip_tables_linux.go setICMP: routed networks accept ICMP to the bridge."""
        proto = "icmp" if v == 4 else "ipv6-icmp"
        self.ipt[v].append(
            "filter", DOCKER, rule(Iface("o", net.bridge), L4Proto(proto), action=Verdict("ACCEPT"), origin=f"setICMP[{net.name}]")
        )

    def set_default_forward_rule(self, v: V, net: Network) -> None:
        """setup_ip_tables_linux.go setDefaultForwardRule: ``! -i BR -o BR`` DROP (ACCEPT when nat-unprotected)."""
        action = "ACCEPT" if self.gw_mode(v, net) == "nat-unprotected" else "DROP"
        self.ipt[v].append(
            "filter", DOCKER,
            rule(Iface("i", net.bridge, True), Iface("o", net.bridge), action=Verdict(action), origin=f"setDefaultForwardRule[{net.name}]"),  # type: ignore[arg-type]
        )

    def setup_internal_network_rules(self, v: V, net: Network, subnet: IPv4Network | IPv6Network) -> None:
        """setup_ip_tables_linux.go setupInternalNetworkRules: keep an internal network's traffic on its bridge."""
        ipt = self.ipt[v]
        br = net.bridge
        o = f"setupInternalNetworkRules[{net.name}]"
        if v == 4:
            in_drop = rule(Iface("i", br), Addr("d", subnet, True), action=Verdict("DROP"), origin=o + " DROP INCOMING")
            out_drop = rule(Iface("o", br), Addr("s", subnet, True), action=Verdict("DROP"), origin=o + " DROP OUTGOING")
        else:
            in_drop = rule(Iface("i", br), Iface("o", br, True), Addr("d", subnet, True), action=Verdict("DROP"), origin=o + " DROP INCOMING")
            out_drop = rule(Iface("i", br, True), Iface("o", br), Addr("s", subnet, True), action=Verdict("DROP"), origin=o + " DROP OUTGOING")
        ipt.insert("filter", ISOLATION1, in_drop)
        ipt.insert("filter", ISOLATION1, out_drop)
        self.set_icc(v, net, internal=True)

    def isolate_network(self, net: Network) -> None:
        """bridge_linux.go isolateNetwork: inter-network isolation, per family the network has."""
        if net.internal:
            return
        if self.enabled(4) and net.enable_ipv4:
            self.set_inc(4, net)
        if self.enabled(6) and net.enable_ipv6:
            self.set_inc(6, net)

    def set_inc(self, v: V, net: Network) -> None:
        """setup_ip_tables_linux.go setINC: STAGE-1 jump to STAGE-2, STAGE-2 DROP (routed: RETURN and ct ACCEPT on top)."""
        ipt = self.ipt[v]
        br = net.bridge
        o = f"setINC[{net.name}]"
        if self.gw_mode(v, net) == "routed":
            ipt.insert("filter", ISOLATION1, rule(Iface("o", br), action=Verdict("RETURN"), origin=o))
            ipt.insert("filter", ISOLATION1, rule(Iface("i", br), CtState(), action=Verdict("ACCEPT"), origin=o))
        ipt.append("filter", ISOLATION1, rule(Iface("i", br), Iface("o", br, True), action=Jump(ISOLATION2), origin=o))
        ipt.insert("filter", ISOLATION2, rule(Iface("o", br), action=Verdict("DROP"), origin=o))

    # ------------------------------------------------------------------ endpoints and ports

    def create_endpoint(self, ctr: Container, net: Network, before: Endpoint | None = None) -> Endpoint:
        """bridge_linux.go CreateEndpoint: allocate the endpoint's addresses (IPAM); ``before``: the
        endpoint it had when it last ran, whose addresses it gets again while they are free."""
        want = [a for (n, a) in ctr.addresses if n == net.name]
        if before is not None:
            want += [a for a in (before.ipv4, before.ipv6) if a is not None and a.version not in {w.version for w in want}
                     and (pool := self.ipam.get((net.name, a.version))) is not None and pool.is_free(a)]
        addrs: dict[int, IPAddress | None] = {4: None, 6: None}
        for v in (4, 6):
            pool = self.ipam.get((net.name, v))
            explicit = [a for a in want if a.version == v]
            if pool is None:
                if explicit:
                    raise GenerationError(
                        f"{self.sc.source}: container {ctr.name!r}: network {net.name!r} has no IPv{v} subnet for {explicit[0]}"
                    )
                continue
            try:
                addrs[v] = pool.allocate(explicit[0] if explicit else None)
            except ValueError as e:
                raise GenerationError(f"{self.sc.source}: container {ctr.name!r} on {net.name!r}: {e}") from None
        if self.daemon.hairpin:
            self.hairpin_ports.append(f"{net.bridge}:{ctr.name}")
        ep = Endpoint(ctr.name, net.name, addrs[4], addrs[6])  # type: ignore[arg-type]
        self.endpoints.append(ep)
        return ep

    def program_external_connectivity(self, ctr: Container, net: Network, ep: Endpoint) -> None:
        """bridge_linux.go ProgramExternalConnectivity: port mappings, then legacy links when icc is off."""
        bindings = self.add_port_mappings(ctr, net, ep)
        self.bindings[ctr.name] = bindings

    def add_port_mappings(self, ctr: Container, net: Network, ep: Endpoint) -> list[Binding]:
        """port_mapping_linux.go addPortMappings: sort, expand per family, allocate host ports, program rules."""
        if not ctr.publish:
            return []
        def_host_ip: IPAddress = net.host_binding if net.host_binding is not None else ANY_V4
        cfg = sorted(ctr.publish, key=_pb_sort_key)
        disable_nat = {4: net.gw_mode4 == "routed", 6: net.gw_mode6 == "routed"}
        out: list[Binding] = []
        group: list[tuple[PortSpec, IPAddress, IPAddress]] = []
        for i, c in enumerate(cfg):
            b4 = _configure_binding_v4(c, ep.ipv4, def_host_ip, disable_nat[4])
            if b4 is not None:
                group.append((c, *b4))
            cip6: IPAddress | None = ep.ipv6
            if ep.ipv6 is None and self.daemon.userland_proxy:
                cip6 = ep.ipv4
            b6 = _configure_binding_v6(c, cip6, def_host_ip, disable_nat[6])
            if b6 is not None:
                group.append((c, *b6))
            if i < len(cfg) - 1 and _need_same_port(c, cfg[i + 1]):
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

    def link(self, net: Network, parent: Container, parent_ep: Endpoint, child: Container, child_ep: Endpoint) -> None:
        """bridge_linux.go link / link.go: legacy ``--link`` ACCEPT rules for the child's exposed ports (icc off)."""
        if not self.enabled(4) or parent_ep.ipv4 is None or child_ep.ipv4 is None:
            return
        br = net.bridge
        # nat.SortPortMap order for exposed ports: port descending, tcp first.
        exposed = set(child.expose) | {(p.container_port, p.proto) for p in child.publish}
        ports = sorted(exposed, key=lambda t: (-t[0], t[1] != "tcp", PROTO_ORDER[t[1]]))
        for port, proto in ports:
            o = f"link[{parent.name}->{child.name} {port}/{proto}]"
            self.ipt[4].append(
                "filter", DOCKER,
                rule(Addr("s", host(parent_ep.ipv4)), Addr("d", host(child_ep.ipv4)), Iface("i", br), Iface("o", br),
                     Port(proto, "d", port), action=Verdict("ACCEPT"), origin=o),
            )
            self.ipt[4].append(
                "filter", DOCKER,
                rule(Addr("s", host(child_ep.ipv4)), Addr("d", host(parent_ep.ipv4)), Iface("i", br), Iface("o", br),
                     Port(proto, "s", port), action=Verdict("ACCEPT"), origin=o),
            )

    # ------------------------------------------------------------------ whole host

    def sysctl(self, key: str, value: str, origin: str) -> None:
        self.sysctls.setdefault((key, value), Sysctl(key, value, origin))

    def run_container(self, ctr: Container) -> None:
        """docker run then docker network connect: endpoints in order, ports on the gateway endpoint."""
        self.containers[ctr.name] = ctr
        mine = self.running[ctr.name] = []
        for net in (self.networks[n] for n in ctr.networks):
            mine.append((net, self.join(ctr, net)))
        self.program_gateway(ctr)

    def join(self, ctr: Container, net: Network) -> Endpoint:
        """sandbox join: the endpoint, at the address it had when the container last ran if that is free."""
        ep = self.create_endpoint(ctr, net, self.last_addresses.pop((ctr.name, net.name), None))
        self.eps[(ctr.name, net.name)] = ep
        return ep

    def program_gateway(self, ctr: Container) -> None:
        """sandbox.go updateGateway: port mappings and links on the gateway endpoint, recorded for revoking."""
        gw = _gateway_endpoint(self.running[ctr.name], dict(ctr.gw_priority))
        if gw is None:
            return
        net, ep = gw
        self.gateway[ctr.name] = net.name
        with self.journal() as added:
            self.program_external_connectivity(ctr, net, ep)
            if not net.icc and net.name == DEFAULT_BRIDGE_NETWORK:
                for l in ctr.links:
                    child = self.containers[l.name]
                    child_ep = self.eps.get((child.name, net.name))
                    if child_ep is not None:
                        self.link(net, ctr, ep, child, child_ep)
        self.external[ctr.name] = added

    def revoke_gateway(self, name: str) -> None:
        """bridge_linux.go RevokeExternalConnectivity: the gateway endpoint's rules deleted, its host ports released."""
        self.gateway.pop(name, None)
        self.undo(self.external.pop(name, {}))
        for b in self.bindings.pop(name, []):
            self.ports.release(b.host_ip, b.proto, b.host_port)

    def leave(self, name: str, net: Network, ep: Endpoint) -> None:
        """sandbox leave + endpoint delete: the endpoint's addresses go back to IPAM."""
        for v, a in ((4, ep.ipv4), (6, ep.ipv6)):
            pool = self.ipam.get((net.name, v))
            if a is not None and pool is not None:
                pool.release(a)
        self.endpoints.remove(ep)
        self.eps.pop((name, net.name), None)
        port = f"{net.bridge}:{name}"
        if port in self.hairpin_ports:
            self.hairpin_ports.remove(port)

    @contextlib.contextmanager
    def journal(self) -> Iterator[dict[int, list]]:
        """Record the rules added inside the block, per family (nested blocks record into both)."""
        outer = {v: self.ipt[v].journal for v in (4, 6)}
        added: dict[int, list] = {4: [], 6: []}
        for v in (4, 6):
            self.ipt[v].journal = added[v]
        try:
            yield added
        finally:
            for v in (4, 6):
                self.ipt[v].journal = outer[v]
                if outer[v] is not None:
                    outer[v].extend(added[v])

    def undo(self, added: dict[int, list]) -> None:
        """Docker's ``-D`` of every rule an operation added."""
        for v, rules in added.items():
            for table, chain, r in reversed(rules):
                self.ipt[v].delete(table, chain, r)

    # ------------------------------------------------------------------ the history ([[events]])

    def stop(self, name: str) -> None:
        """docker stop: the gateway's rules and host ports revoked, every endpoint left."""
        self.revoke_gateway(name)
        for net, ep in self.running.pop(name):
            self.last_addresses[(name, net.name)] = ep
            self.leave(name, net, ep)

    def connect(self, ev: Event) -> None:
        """docker network connect: a new endpoint; the port mappings move when it becomes the gateway."""
        ctr = self.containers[ev.container]
        prio = tuple(p for p in ctr.gw_priority if p[0] != ev.network) + ((ev.network, ev.gw_priority),) if ev.gw_priority is not None else ctr.gw_priority
        ctr = replace(ctr, networks=ctr.networks + (ev.network,), gw_priority=prio,
                      addresses=ctr.addresses + tuple((ev.network, a) for a in ev.addresses))
        self.containers[ctr.name] = ctr
        if ctr.name not in self.running:
            return
        net = self.networks[ev.network]
        self.running[ctr.name].append((net, self.join(ctr, net)))
        self._update_gateway(ctr)

    def disconnect(self, ev: Event) -> None:
        """docker network disconnect: the endpoint leaves; the port mappings move if it was the gateway."""
        ctr = self.containers[ev.container]
        ctr = replace(ctr, networks=tuple(n for n in ctr.networks if n != ev.network),
                      addresses=tuple(a for a in ctr.addresses if a[0] != ev.network),
                      gw_priority=tuple(p for p in ctr.gw_priority if p[0] != ev.network))
        self.containers[ctr.name] = ctr
        self.last_addresses.pop((ctr.name, ev.network), None)
        if ctr.name not in self.running:
            return
        mine = self.running[ctr.name]
        (net, ep), = [(n, e) for n, e in mine if n.name == ev.network]
        if self.gateway.get(ctr.name) == ev.network:
            self.revoke_gateway(ctr.name)
        mine.remove((net, ep))
        self.leave(ctr.name, net, ep)
        if ctr.name not in self.gateway:
            self.program_gateway(ctr)

    def _update_gateway(self, ctr: Container) -> None:
        gw = _gateway_endpoint(self.running[ctr.name], dict(ctr.gw_priority))
        if (gw[0].name if gw else None) != self.gateway.get(ctr.name):
            self.revoke_gateway(ctr.name)
            self.program_gateway(ctr)

    def add_network(self, net: Network) -> None:
        """docker network create: the network's rules, recorded for docker network rm."""
        self.networks[net.name] = net
        with self.journal() as added:
            self.create_network(net)
        self.network_rules[net.name] = added

    def remove_network(self, name: str) -> None:
        """docker network rm (bridge_linux.go deleteNetwork): the rules its setup added are deleted."""
        self.undo(self.network_rules.pop(name, {}))
        for v in (4, 6):
            self.ipam.pop((name, v), None)
        del self.networks[name]

    def replay(self, i: int, ev: Event) -> None:
        """One event of the history, as Docker carries it out."""
        try:
            if ev.do == "run":
                self.run_container(ev.spec)  # type: ignore[arg-type]
            elif ev.do == "stop":
                self.stop(ev.container)
            elif ev.do == "start":
                self.run_container(self.containers[ev.container])
            elif ev.do == "restart":
                if ev.container in self.running:
                    self.stop(ev.container)
                self.run_container(self.containers[ev.container])
            elif ev.do == "rm":
                if ev.container in self.running:
                    self.stop(ev.container)
                del self.containers[ev.container]
                for key in [k for k in self.last_addresses if k[0] == ev.container]:
                    del self.last_addresses[key]
            elif ev.do == "connect":
                self.connect(ev)
            elif ev.do == "disconnect":
                self.disconnect(ev)
            elif ev.do == "network create":
                self.add_network(ev.spec)  # type: ignore[arg-type]
            elif ev.do == "network rm":
                self.remove_network(ev.network)
        except GenerationError as e:
            raise GenerationError(f"events[{i}] ({ev.do}): {e.message}") from None

    def run(self) -> Generated:
        with gc_paused():
            self.start_daemon()
            for net in self.sc.networks:  # what each network programs is recorded, for a later docker network rm
                self.add_network(net)
            for ctr in self.sc.containers:
                self.run_container(ctr)
            for i, ev in enumerate(self.sc.events):
                self.replay(i, ev)
        return self.generated()

    def add_containers(self, scenario: Scenario, ctrs: Iterable[Container]) -> None:
        """Run ``ctrs`` (the containers ``scenario`` appends to the one run so far) on this state."""
        self.sc = scenario
        for ctr in ctrs:
            self.containers[ctr.name] = ctr
            self.run_container(ctr)

    def generated(self) -> Generated:
        rulesets = {"ip": self.ipt[4].rs, "ip6": self.ipt[6].rs}
        sc = self.sc
        if sc.events:  # the host as the history left it: its networks, and its running containers in the order they last started
            sc = replace(sc, networks=tuple(self.networks.values()), containers=tuple(self.containers[n] for n in self.running),
                         events=())
        return Generated(sc, rulesets, self.endpoints, self.bindings, list(self.sysctls.values()), self.hairpin_ports)


def generate(scenario: Scenario) -> Generated:
    """Model -> rule IR, exactly as Docker 28.0.1 would program the host."""
    return Firewall(scenario).run()


# ---------------------------------------------------------------------- helpers


def _gateway_endpoint(eps: list[tuple[Network, Endpoint]], priority: dict[str, int]) -> tuple[Network, Endpoint] | None:
    """sandbox.go Less + default_gateway.go selectGatewayEndpoint: the endpoint that gets the port mappings.

    Endpoints rank by: higher GwPriority, not docker_gwbridge, not internal, more gateways
    (dual-stack first), network name. Internal networks have no gateway and never win.
    """
    def gateways(net: Network) -> int:
        return int(net.enable_ipv4) + int(net.enable_ipv6)

    ranked = sorted(eps, key=lambda t: (-priority.get(t[0].name, 0), t[0].bridge == "docker_gwbridge", t[0].internal,
                                        -gateways(t[0]), t[0].name))
    for net, ep in ranked:
        if not net.internal and gateways(net):
            return net, ep
    return None


def _pb_sort_key(p: PortSpec) -> tuple:
    """port_mapping_linux.go cmpPortBinding: exact ports before ranges, then port, proto, host port, host IP."""
    end = p.host_port_end or p.host_port
    is_range = p.host_port == 0 or p.host_port != end
    if p.host_ip is None:
        ip_key: tuple = (0, 0, 0)
    else:
        ip_key = (1, p.host_ip.version, int(p.host_ip))
    return (is_range, p.container_port, PROTO_ORDER[p.proto], p.host_port, end, ip_key)


def _need_same_port(a: PortSpec, b: PortSpec) -> bool:
    """port_mapping_linux.go needSamePort."""
    return (
        a.container_port == b.container_port
        and a.proto == b.proto
        and a.host_port == b.host_port
        and (a.host_port_end or a.host_port) == (b.host_port_end or b.host_port)
    )


def _configure_binding_v4(
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


def _configure_binding_v6(
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


class _Pool:
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


class _PortAllocator:
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
            problem = (f"Docker 28.0.1 fails to start it: binding {_hostport(h, port)}/{proto} fails "
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
            raise ValueError(f"Docker 28.0.1 fails to start it: listen on {_hostport(hip, port)}/tcp fails "
                             f"(address already in use by its own {_hostport(clash, port)})")
        for sock in self.sockets.get((proto, port), ()):
            if sock[0] == hip and not sock[1]:
                sock[1] = True
                return


def _hostport(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
