"""verify's plan: the topology, the servers and the probe matrix both sides build and run. Pure.

Everything is derived from a generated scenario (:func:`plan`), never hand-listed: one bridge per
network with its gateway addresses, one veth per endpoint (``ethN`` in the container, in the order
it joined), an uplink to an outside peer on the first test range no network uses, echo servers on
every published, exposed and one unpublished port, and the probes (controls, published ports,
loopback, hairpin, direct access, egress, isolation, icc).

One deliberate departure from a real Docker host: a container whose only networks are internal gets
a default route via its bridge's gateway (Docker gives it none), standing in for a container that
crafts packets with raw sockets, so that the internal-network DROP rules see traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any, Iterable, Sequence

from nftdocker.errors import UsageError

PREFIX = "nftdv"
ECHO_PORT = 7

# Test address plan for the uplink (host <-> outside peer): the first that no network uses.
UPLINK4_CANDIDATES = ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24")
UPLINK6_CANDIDATES = ("2001:db8:ffff::/64", "2001:db8:fffe::/64", "2001:db8:fffd::/64")


@dataclass(frozen=True)
class Probe:
    """One connection attempt: from a namespace to an address and port."""

    id: int
    kind: str  # control, published, loopback, hairpin, direct, host-direct, egress, isolation, icc
    src: str  # node: "host", "outside" or a container name
    dst: str  # what the address belongs to: "host", "outside" or a container name
    addr: str
    port: int
    proto: str

    @property
    def target(self) -> str:
        a = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"{self.dst} {a}:{self.port}/{self.proto}"

    def describe(self) -> str:
        return f"#{self.id} {self.kind} {self.src} -> {self.target}"


@dataclass(frozen=True)
class Link:
    """A veth in the host namespace, its peer in ``node`` as ``peer_if``."""

    host_if: str
    node: str
    peer_if: str
    bridge: str
    addrs: tuple[IPv4Interface | IPv6Interface, ...]
    hairpin: bool


@dataclass
class Plan:
    """Everything both sides build and run, derived from a generated scenario."""

    uplink4: tuple[IPv4Interface, IPv4Interface]  # host, outside
    uplink6: tuple[IPv6Interface, IPv6Interface]
    extra_host_addrs: list[IPv4Interface | IPv6Interface]
    bridges: list[tuple[str, list[IPv4Interface | IPv6Interface]]]
    links: list[Link]
    routes: dict[str, list[str]]  # node -> default gateways
    containers: list[str]
    servers: dict[str, list[tuple[str, str, int]]]  # node -> (proto, addr, port)
    host_sysctls: list[tuple[str, str]]
    probes: list[Probe]
    unpublished: int
    skipped: list[str] = field(default_factory=list)

    def nodes(self) -> list[str]:
        return ["host", "outside", *self.containers]


def _pick_uplink(candidates: Sequence[str], used: Iterable[IPv4Network | IPv6Network]) -> IPv4Network | IPv6Network:
    used = list(used)
    for c in candidates:
        net = IPv4Network(c) if "." in c else IPv6Network(c)
        if not any(net.version == u.version and net.overlaps(u) for u in used):
            return net
    raise UsageError(f"every uplink address range verify may use ({', '.join(candidates)}) overlaps a network of the scenario")


def _iface(addr: IPv4Address | IPv6Address, nets: Iterable[IPv4Network | IPv6Network]) -> IPv4Interface | IPv6Interface:
    for n in nets:
        if n.version == addr.version and addr in n:
            return IPv4Interface(f"{addr}/{n.prefixlen}") if addr.version == 4 else IPv6Interface(f"{addr}/{n.prefixlen}")
    return IPv4Interface(f"{addr}/32") if addr.version == 4 else IPv6Interface(f"{addr}/128")


def plan(gen: Any) -> Plan:
    """The topology, servers and probe matrix for a :class:`~nftdocker.docker.generate.Generated`. Pure."""
    sc = gen.scenario
    nets = {n.name: n for n in sc.networks}
    all4 = [s for n in sc.networks for s in n.subnets4]
    all6 = [s for n in sc.networks for s in n.subnets6]
    up4 = _pick_uplink(UPLINK4_CANDIDATES, all4)
    up6 = _pick_uplink(UPLINK6_CANDIDATES, all6)
    uplink4 = (IPv4Interface(f"{up4[1]}/{up4.prefixlen}"), IPv4Interface(f"{up4[2]}/{up4.prefixlen}"))
    uplink6 = (IPv6Interface(f"{up6[1]}/{up6.prefixlen}"), IPv6Interface(f"{up6[2]}/{up6.prefixlen}"))
    up_host = {4: str(uplink4[0].ip), 6: str(uplink6[0].ip)}
    up_peer = {4: str(uplink4[1].ip), 6: str(uplink6[1].ip)}

    # Bridges and their gateway addresses.
    bridges: list[tuple[str, list[IPv4Interface | IPv6Interface]]] = []
    gw: dict[tuple[str, int], str] = {}
    for n in sc.networks:
        addrs: list[IPv4Interface | IPv6Interface] = []
        for g in n.gateways4:
            addrs.append(_iface(g, n.subnets4))
        if n.enable_ipv6:
            for g in n.gateways6:
                addrs.append(_iface(g, n.subnets6))
        for a in addrs:
            gw.setdefault((n.name, a.version), str(a.ip))
        bridges.append((n.bridge, addrs))
    local_addrs = {str(a.ip) for _, addrs in bridges for a in addrs} | set(up_host.values())

    # Endpoints: one veth each, ethN in the container in the order the container joined.
    eps_by_ctr: dict[str, list[Any]] = {}
    for ep in gen.endpoints:
        eps_by_ctr.setdefault(ep.container, []).append(ep)
    containers = [c.name for c in sc.containers if c.name in eps_by_ctr]
    hairpin = set(gen.hairpin_ports)
    links: list[Link] = []
    routes: dict[str, list[str]] = {"outside": [up_host[4], up_host[6]]}
    used_ifnames = {b for b, _ in bridges}
    n_if = 0
    for ctr in containers:
        eps = eps_by_ctr[ctr]
        for k, ep in enumerate(eps):
            net = nets[ep.network]
            while f"{PREFIX}{n_if}" in used_ifnames:
                n_if += 1
            addrs = []
            if ep.ipv4 is not None:
                addrs.append(_iface(ep.ipv4, net.subnets4))
            if ep.ipv6 is not None:
                addrs.append(_iface(ep.ipv6, net.subnets6))
            links.append(Link(f"{PREFIX}{n_if}", ctr, f"eth{k}", net.bridge, tuple(addrs), f"{net.bridge}:{ctr}" in hairpin))
            n_if += 1
        # Docker's gateway endpoint: the first non-internal network. Internal-only: see the module doc.
        gw_eps = [ep for ep in eps if not nets[ep.network].internal] or eps
        gws = []
        for v in (4, 6):
            for ep in gw_eps:
                g = gw.get((ep.network, v))
                if g is not None and (ep.ipv4 if v == 4 else ep.ipv6) is not None:
                    gws.append(g)
                    break
        routes[ctr] = gws

    # Ports: one unpublished port per scenario, free on every side of every mapping.
    bindings = [(ctr, b) for ctr in containers for b in gen.bindings.get(ctr, [])]
    used_ports = {b.host_port for _, b in bindings} | {b.container_port for _, b in bindings}
    used_ports |= {p for c in sc.containers for (p, _) in c.expose} | {ECHO_PORT}
    unpub = next(p for p in range(9999, 1024, -1) if p not in used_ports)

    extra: list[IPv4Interface | IPv6Interface] = []
    for _, b in bindings:
        h = b.host_ip
        if not h.is_unspecified and not h.is_loopback and str(h) not in local_addrs and h not in [a.ip for a in extra]:
            extra.append(_iface(h, ()))

    ctr_addrs: dict[str, dict[int, list[str]]] = {}
    for ctr in containers:
        d: dict[int, list[str]] = {4: [], 6: []}
        for ep in eps_by_ctr[ctr]:
            if ep.ipv4 is not None:
                d[4].append(str(ep.ipv4))
            if ep.ipv6 is not None:
                d[6].append(str(ep.ipv6))
        ctr_addrs[ctr] = d
    expose = {c.name: list(c.expose) for c in sc.containers}

    # Servers: every container listens on its published and exposed container ports and the
    # unpublished port, on all its addresses; the outside peer on the echo port.
    ports_of: dict[str, list[tuple[str, int]]] = {}
    for ctr in containers:
        ps = [(b.proto, b.container_port) for b in gen.bindings.get(ctr, []) if b.proto != "sctp"]
        ps += [(proto, p) for (p, proto) in expose.get(ctr, []) if proto != "sctp"]
        ps += [("tcp", unpub), ("udp", unpub)]
        ports_of[ctr] = list(dict.fromkeys(ps))
    servers: dict[str, list[tuple[str, str, int]]] = {
        "outside": [(proto, up_peer[v], ECHO_PORT) for v in (4, 6) for proto in ("tcp", "udp")]
    }
    for ctr in containers:
        servers[ctr] = [(proto, a, port) for (proto, port) in ports_of[ctr] for v in (4, 6) for a in ctr_addrs[ctr][v]]

    probes: list[Probe] = []
    seen_keys: set[tuple[str, str, int, str]] = set()
    skipped: list[str] = []

    def add(kind: str, src: str, dst: str, addr: str, port: int, proto: str) -> None:
        key = (src, addr, port, proto)
        if key in seen_keys:
            return
        seen_keys.add(key)
        probes.append(Probe(len(probes) + 1, kind, src, dst, addr, port, proto))

    # Controls: the harness itself works (see run._check_controls).
    add("control", "host", "outside", up_peer[4], ECHO_PORT, "tcp")
    add("control", "outside", "host", up_host[4], unpub, "tcp")

    def network_of(ctr: str, addr: str) -> str | None:
        for ep in eps_by_ctr[ctr]:
            if str(ep.ipv4) == addr or str(ep.ipv6) == addr:
                return ep.network
        return None

    def has_family(ctr: str, v: int) -> bool:
        return bool(ctr_addrs[ctr][v])

    members: dict[str, list[str]] = {}
    for ep in gen.endpoints:
        members.setdefault(ep.network, [])
        if ep.container not in members[ep.network]:
            members[ep.network].append(ep.container)

    # Published ports.
    for ctr, b in bindings:
        if b.proto == "sctp":
            skipped.append(f"{ctr} {b.host_ip}:{b.host_port}->{b.container_port}/sctp: no SCTP probes")
            continue
        if b.host_port == 0:
            continue
        v = b.host_ip.version
        public = up_host[v] if (b.host_ip.is_unspecified or b.host_ip.is_loopback) else str(b.host_ip)
        pnet = network_of(ctr, str(b.container_ip))
        add("published", "outside", "host", public, b.host_port, b.proto)
        add("published", "host", "host", public, b.host_port, b.proto)
        if b.host_ip.is_unspecified and pnet is not None and (pnet, v) in gw:
            add("published", "host", "host", gw[(pnet, v)], b.host_port, b.proto)
        if b.host_ip.is_unspecified or b.host_ip.is_loopback:
            add("loopback", "host", "host", "127.0.0.1" if v == 4 else "::1", b.host_port, b.proto)
        for net, ctrs in members.items():
            if net == pnet:
                continue
            rep = next((c for c in ctrs if c != ctr and has_family(c, v)), None)
            if rep is not None:
                add("published", rep, "host", public, b.host_port, b.proto)
        if pnet is not None:
            rep = next((c for c in members[pnet] if c != ctr and has_family(c, v)), None)
            if rep is not None:
                add("published", rep, "host", public, b.host_port, b.proto)
        if has_family(ctr, v):
            add("hairpin", ctr, "host", public, b.host_port, b.proto)

    # Direct routed access to container ports, published and not.
    for ctr, b in bindings:
        if b.proto != "sctp":
            add("direct", "outside", ctr, str(b.container_ip), b.container_port, b.proto)
    for ctr in containers:
        for v in (4, 6):
            for a in ctr_addrs[ctr][v]:
                add("direct", "outside", ctr, a, unpub, "tcp")
                add("host-direct", "host", ctr, a, unpub, "tcp")

    # Containers to the outside: the address the far end saw shows masquerade/SNAT.
    for ctr in containers:
        for v in (4, 6):
            if has_family(ctr, v):
                for proto in ("tcp", "udp"):
                    add("egress", ctr, "outside", up_peer[v], ECHO_PORT, proto)

    # Across networks (isolation) and within one (icc, links): to the addresses the source has a family for.
    def addr_on(ctr: str, net: str, v: int) -> str | None:
        for ep in eps_by_ctr[ctr]:
            a = ep.ipv4 if v == 4 else ep.ipv6
            if ep.network == net and a is not None:
                return str(a)
        return None

    def targets(src: str, src_net: str, dst: str, dst_net: str) -> list[str]:
        return [a for v in (4, 6) if addr_on(src, src_net, v) and (a := addr_on(dst, dst_net, v))]

    names = [n.name for n in sc.networks if n.name in members]
    for n1 in names:
        for n2 in names:
            src = next((c for c in members[n1] if c not in members[n2]), None)
            dst = next((c for c in members[n2] if c != src), None)
            if n1 == n2 or src is None or dst is None:
                continue
            for a in targets(src, n1, dst, n2):
                for proto in ("tcp", "udp"):
                    add("isolation", src, dst, a, unpub, proto)
    for n in names:
        ctrs = members[n][:3]
        for src in ctrs:
            for dst in ctrs:
                if src != dst:
                    for a in targets(src, n, dst, n):
                        for proto, port in ports_of[dst]:
                            add("icc", src, dst, a, port, proto)

    host_sysctls: list[tuple[str, str]] = []
    if sc.host.ipv4_forwarding:
        host_sysctls.append(("net.ipv4.ip_forward", "1"))
    if sc.host.ipv6_forwarding:
        host_sysctls.append(("net.ipv6.conf.all.forwarding", "1"))
    for s in gen.sysctls:
        host_sysctls.append((s.key, s.value))

    return Plan(uplink4, uplink6, extra, bridges, links, routes, containers, servers,
                list(dict.fromkeys(host_sysctls)), probes, unpub, skipped)
