"""verify: packets, not text. Two identical Docker hosts in network namespaces, one with the
iptables rules (iptables-legacy), one with the generated nft table, and the same probes through both.

Layout of one side (``nftdv-<pid>-<L|N>-...``)::

    outside (eth0 203.0.113.2) --- (nftdvup 203.0.113.1) host [bridges with gateway addresses]
                                                              |  one veth per endpoint
                                                      container namespaces (eth0, eth1, ...)

Probes are derived from the scenario (:func:`plan`), never hand-listed. Each namespace runs a
small agent (:func:`agent_main`, this module run by the venv's interpreter under ``ip netns exec``)
that sets sysctls, runs echo servers that answer with the peer address they saw (so masquerade and
SNAT are observable) and runs probe clients with a bounded pool and timeout.

Probes exercise the kernel rules only; docker-proxy is not run on either side, so a path that only
the proxy serves (for example from the host to 127.0.0.1:PORT with the userland proxy on) is
refused on both sides: still an agreement.

Two deliberate departures from a real Docker host, both on both sides:

- a container whose only networks are internal gets a default route via its bridge's gateway
  (Docker gives it none), standing in for a container that crafts packets with raw sockets, so that
  the internal-network DROP rules see traffic;
- br_netfilter is on for every bridge (this kernel has it built in, and a new namespace starts with
  ``bridge-nf-call-iptables=1``), so same-bridge traffic always passes the rules.

Only :func:`plan` and the report are pure; everything else needs root. pyroute2 is imported lazily.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any, Callable, Iterable, Sequence

from nftdocker.errors import EnvironmentProblem, ReferenceError_, UsageError

SIDES = ("legacy", "nft")
SIDE_TAG = {"legacy": "L", "nft": "N"}
PREFIX = "nftdv"
UPLINK_IF = "nftdvup"
ECHO_PORT = 7
DEFAULT_TIMEOUT = 1.0
DEFAULT_JOBS = 32
KERNEL_ONLY_NOTE = "probes exercise the kernel rules only; docker-proxy is not run"

# Test address plan for the uplink (host <-> outside peer): the first that no network uses.
UPLINK4_CANDIDATES = ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24")
UPLINK6_CANDIDATES = ("2001:db8:ffff::/64", "2001:db8:fffe::/64", "2001:db8:fffd::/64")

IFA_F_NODAD = 0x02
BRIDGE_MODE_HAIRPIN = 1


# ---------------------------------------------------------------------- the plan (pure)


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
    """The topology, servers and probe matrix for a :class:`~nftdocker.generate.Generated`. Pure."""
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

    # Controls: the harness itself works (see _check_controls).
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


# ---------------------------------------------------------------------- outcomes and the report


@dataclass(frozen=True)
class Outcome:
    """What one probe got: open (with who answered and the source it saw), refused, timeout, ..."""

    result: str
    served: str = ""  # "c1:80": the namespace and port that answered
    seen: str = ""  # the source address that server saw
    detail: str = ""

    def key(self) -> tuple[str, str, str]:
        return (self.result, self.served, self.seen)

    def text(self) -> str:
        return f"{self.result} {self.served}".strip()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Outcome":
        return cls(d.get("result", "error"), d.get("served", ""), d.get("seen", ""), d.get("detail", ""))


@dataclass
class Row:
    probe: Probe
    legacy: Outcome
    nft: Outcome

    @property
    def agree(self) -> bool:
        return self.legacy.key() == self.nft.key()


@dataclass
class Report:
    scenario: str
    legacy_source: dict[str, str]
    rows: list[Row]
    namespaces: list[str]
    kept: bool
    seconds: float
    skipped: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def differences(self) -> list[Row]:
        return [r for r in self.rows if not r.agree]

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        d = len(self.differences)
        return (f"{len(self.rows)} probes: {len(self.rows) - d} agree, {d} differ "
                f"({self.seconds:.1f} s; {KERNEL_ONLY_NOTE})")

    def to_json(self) -> dict[str, Any]:
        def oc(o: Outcome) -> dict[str, str]:
            return {"result": o.result, "served": o.served, "seen": o.seen, **({"detail": o.detail} if o.detail else {})}

        return {
            "scenario": self.scenario,
            "legacy": self.legacy_source,
            "nft": "generated table, libnftables",
            "note": KERNEL_ONLY_NOTE,
            "ok": self.ok,
            "probes": [
                {"id": r.probe.id, "kind": r.probe.kind, "from": r.probe.src, "to": r.probe.dst, "addr": r.probe.addr,
                 "port": r.probe.port, "proto": r.probe.proto, "legacy": oc(r.legacy), "nft": oc(r.nft), "agree": r.agree}
                for r in self.rows
            ],
            "summary": {"probes": len(self.rows), "agree": len(self.rows) - len(self.differences),
                        "differ": [r.probe.describe() for r in self.differences], "seconds": round(self.seconds, 3)},
            "skipped": self.skipped,
            "namespaces": self.namespaces,
            "kept": self.kept,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def text(self) -> str:
        out = [f"nftdocker verify {self.scenario}"]
        for fam, src in self.legacy_source.items():
            out.append(f"  legacy {fam}: {src}")
        out.append("  nft: the generated table, loaded with libnftables")
        out.append(f"  {KERNEL_ONLY_NOTE}")
        out.append("")
        head = ("", "#", "kind", "from", "to", "legacy", "nft", "seen")
        lines = [head]
        for r in self.rows:
            seen = r.legacy.seen if r.legacy.seen == r.nft.seen else f"{r.legacy.seen or '-'} | {r.nft.seen or '-'}"
            lines.append(("!" if not r.agree else "", str(r.probe.id), r.probe.kind, r.probe.src, r.probe.target,
                          r.legacy.text(), r.nft.text(), seen))
        widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
        for l in lines:
            out.append("  ".join(c.ljust(w) for c, w in zip(l, widths)).rstrip())
        out.append("")
        for s in self.skipped:
            out.append(f"skipped: {s}")
        for r in self.differences:
            out.append(f"DIFFERS {r.probe.describe()}: legacy {_long(r.legacy)}, nft {_long(r.nft)}")
        out.append(self.summary())
        if self.kept:
            out.append(f"namespaces kept; remove them with: {removal_command(self.namespaces)}")
        return "\n".join(out) + "\n"


def _long(o: Outcome) -> str:
    s = o.text()
    if o.seen:
        s += f" (saw {o.seen})"
    if o.detail:
        s += f" [{o.detail}]"
    return s


def removal_command(namespaces: Sequence[str]) -> str:
    return "for ns in " + " ".join(namespaces) + '; do ip netns delete "$ns"; done'


# ---------------------------------------------------------------------- the environment


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise EnvironmentProblem(f"verify needs {name!r}, which is not installed")
    return path


def check_environment() -> None:
    """Root, the tools verify runs and pyroute2, or EnvironmentProblem (exit 3)."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("verify needs root: it builds network namespaces")
    for t in ("ip", "iptables-legacy-restore", "ip6tables-legacy-restore"):
        _tool(t)
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("verify needs pyroute2 (pip install 'nftdocker[kernel]')") from None


def _run_in(ns: str, argv: list[str], stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("ip"), "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True, timeout=timeout)


def _load_legacy(ns: str, text4: str, text6: str) -> None:
    """The iptables rules into ``ns`` through iptables-legacy-restore / ip6tables-legacy-restore."""
    for tool, text in (("iptables-legacy-restore", text4), ("ip6tables-legacy-restore", text6)):
        if not text.strip():
            continue
        p = _run_in(ns, [_tool(tool), "-w", "10"], stdin=text)
        if p.returncode != 0:
            raise ReferenceError_(f"{tool} refused the rules: {(p.stderr or p.stdout).strip()}")


def _load_nft(ns: str, gen: Any, table: str) -> None:
    """The generated nft table into ``ns``, replacing any earlier one, in one libnftables transaction."""
    from nftdocker.nft import kernel

    kernel.apply(gen, netns_name=ns, table=table)


class Agent:
    """The helper process in one namespace: JSON lines in, JSON lines out."""

    def __init__(self, ns: str, node: str) -> None:
        self.ns = ns
        self.node = node
        pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = f"import sys; sys.path.insert(0, {pkg_parent!r}); from nftdocker.verify.verify import agent_main; agent_main()"
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [_tool("ip"), "netns", "exec", ns, sys.executable, "-S", "-c", code],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True,
        )
        self.buf = b""

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def recv(self, deadline: float) -> dict[str, Any]:
        import select

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EnvironmentProblem(f"the agent in {self.ns} did not answer in time")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.err.seek(0)
                    tail = self.err.read().decode(errors="replace").strip().splitlines()[-5:]
                    raise EnvironmentProblem(f"the agent in {self.ns} exited: {' / '.join(tail) or 'no message'}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, msg: dict[str, Any], seconds: float = 30) -> dict[str, Any]:
        self.send(msg)
        return self.recv(time.monotonic() + seconds)

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.err.close()


# ---------------------------------------------------------------------- the session


class Session:
    """Both sides' namespaces, agents and servers; load rules, run probes, clean up.

    Use as a context manager: namespaces are removed on leaving it (also on errors and Ctrl-C)
    unless ``keep`` is set.
    """

    def __init__(self, gen: Any, table: str = "nftdocker", timeout: float = DEFAULT_TIMEOUT, jobs: int = DEFAULT_JOBS,
                 keep: bool = False, sides: Sequence[str] = SIDES, tag: str | None = None) -> None:
        self.gen = gen
        self.plan = plan(gen)
        self.table = table
        self.timeout = timeout
        self.jobs = jobs
        self.keep = keep
        self.sides = list(sides)
        self.tag = tag or _next_tag()
        self.created: list[str] = []
        self.agents: dict[tuple[str, str], Agent] = {}
        self.timings: dict[str, float] = {}

    def ns(self, side: str, node: str) -> str:
        short = {"host": "host", "outside": "out"}.get(node, f"c-{node}")
        return f"{self.tag}-{SIDE_TAG[side]}-{short}"

    def __enter__(self) -> "Session":
        try:
            t = time.monotonic()
            # pyroute2 forks short-lived helpers; a signal must not reach one of them (it would run
            # our cleanup as a second process), so it waits here until they are gone.
            blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
            old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
            try:
                for side in self.sides:
                    self._build(side)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            self.timings["build"] = time.monotonic() - t
            t = time.monotonic()
            for side in self.sides:
                for node in self.plan.nodes():
                    self.agents[(side, node)] = Agent(self.ns(side, node), node)
            deadline = time.monotonic() + 30
            for a in self.agents.values():
                if a.recv(deadline).get("ready") is not True:
                    raise EnvironmentProblem(f"the agent in {a.ns} did not start")
            self._configure()
            self.timings["agents"] = time.monotonic() - t
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _build(self, side: str) -> None:
        from pyroute2 import IPRoute, netns

        p = self.plan
        for node in p.nodes():
            name = self.ns(side, node)
            try:
                netns.create(name)
            except Exception as e:
                raise EnvironmentProblem(f"cannot create network namespace {name}: {e}") from None
            self.created.append(name)
        try:
            host = self.ns(side, "host")
            with IPRoute(netns=host) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                for br, addrs in p.bridges:
                    ipr.link("add", ifname=br, kind="bridge")
                    idx = ipr.link_lookup(ifname=br)[0]
                    for a in addrs:
                        _addr(ipr, idx, a)
                    ipr.link("set", index=idx, state="up")
                ipr.link("add", ifname=UPLINK_IF, kind="veth", peer={"ifname": "eth0", "net_ns_fd": self.ns(side, "outside")})
                idx = ipr.link_lookup(ifname=UPLINK_IF)[0]
                for a in (p.uplink4[0], p.uplink6[0], *p.extra_host_addrs):
                    _addr(ipr, idx, a)
                ipr.link("set", index=idx, state="up")
                for l in p.links:
                    ipr.link("add", ifname=l.host_if, kind="veth", peer={"ifname": l.peer_if, "net_ns_fd": self.ns(side, l.node)})
                    idx = ipr.link_lookup(ifname=l.host_if)[0]
                    ipr.link("set", index=idx, master=ipr.link_lookup(ifname=l.bridge)[0], state="up")
                    if l.hairpin:
                        ipr.brport("set", index=idx, mode=BRIDGE_MODE_HAIRPIN)
            peers: dict[str, list[Link]] = {}
            for l in p.links:
                peers.setdefault(l.node, []).append(l)
            for node in ["outside", *p.containers]:
                with IPRoute(netns=self.ns(side, node)) as ipr:
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                    ifs = [("eth0", (p.uplink4[1], p.uplink6[1]))] if node == "outside" else [(l.peer_if, l.addrs) for l in peers[node]]
                    for ifname, addrs in ifs:
                        idx = ipr.link_lookup(ifname=ifname)[0]
                        for a in addrs:
                            _addr(ipr, idx, a)
                        ipr.link("set", index=idx, state="up")
                    for g in p.routes.get(node, []):
                        ipr.route("add", dst="default", gateway=g, family=10 if ":" in g else 2)
        except EnvironmentProblem:
            raise
        except Exception as e:
            raise EnvironmentProblem(f"cannot build the {side} side's namespaces: {e}") from None

    def _configure(self) -> None:
        p = self.plan
        msgs: list[tuple[Agent, dict[str, Any]]] = []
        for side in self.sides:
            msgs.append((self.agents[(side, "host")], {"op": "sysctl", "set": p.host_sysctls}))
            for node, listen in p.servers.items():
                msgs.append((self.agents[(side, node)], {"op": "serve", "name": node, "listen": listen}))
        for a, m in msgs:
            a.send(m)
        deadline = time.monotonic() + 30
        for a, m in msgs:
            r = a.recv(deadline)
            if r.get("errors"):
                raise EnvironmentProblem(f"{a.ns}: {m['op']}: {'; '.join(r['errors'])}")

    def load_legacy(self, text4: str, text6: str) -> None:
        _load_legacy(self.ns("legacy", "host"), text4, text6)

    def load_nft(self, gen: Any | None = None) -> None:
        _load_nft(self.ns("nft", "host"), gen or self.gen, self.table)

    def probe(self, sides: Sequence[str] | None = None, probes: Sequence[Probe] | None = None,
              timeout: float | None = None) -> dict[str, dict[int, Outcome]]:
        """Run the probes through the given sides at once; every agent runs its share in parallel."""
        sides = list(sides or self.sides)
        timeout = timeout or self.timeout
        probes = list(self.plan.probes if probes is None else probes)
        by_src: dict[str, list[Probe]] = {}
        for pr in probes:
            by_src.setdefault(pr.src, []).append(pr)
        calls: list[tuple[str, Agent]] = []
        for side in sides:
            for src, prs in by_src.items():
                a = self.agents[(side, src)]
                a.send({"op": "probe", "timeout": timeout, "jobs": self.jobs,
                        "probes": [{"id": x.id, "proto": x.proto, "addr": x.addr, "port": x.port} for x in prs]})
                calls.append((side, a))
        longest = max((len(v) for v in by_src.values()), default=0)
        deadline = time.monotonic() + (timeout * 2 + 0.5) * (longest // max(self.jobs, 1) + 1) + 15
        out: dict[str, dict[int, Outcome]] = {s: {} for s in sides}
        for side, a in calls:
            r = a.recv(deadline)
            for k, v in r.get("results", {}).items():
                out[side][int(k)] = Outcome.from_json(v)
        return out

    def close(self) -> None:
        for a in self.agents.values():
            try:
                a.close()
            except Exception:
                pass
        self.agents.clear()
        if self.keep or not self.created:
            return
        from pyroute2 import netns

        for name in self.created:
            try:
                netns.remove(name)
            except Exception:
                subprocess.run([_tool("ip"), "netns", "delete", name], capture_output=True)
        self.created = []


_sessions = itertools.count()


def _next_tag() -> str:
    """``nftdv-<pid>`` for a process's first session, ``nftdv-<pid>.<n>`` after it."""
    n = next(_sessions)
    return f"{PREFIX}-{os.getpid()}" + (f".{n}" if n else "")


def _addr(ipr: Any, idx: int, a: IPv4Interface | IPv6Interface) -> None:
    kw: dict[str, Any] = {"index": idx, "address": str(a.ip), "prefixlen": a.network.prefixlen}
    if a.version == 6:
        kw["flags"] = IFA_F_NODAD
    ipr.addr("add", **kw)


# ---------------------------------------------------------------------- entry points


def legacy_texts(gen: Any, table: str, reference4: str | None = None, reference6: str | None = None,
                 names: tuple[str | None, str | None] = (None, None)) -> tuple[str, str, dict[str, str]]:
    """The iptables-save text for each family: the reference where given, else nftdocker's compat output."""
    from nftdocker.compat.translate import compat_of

    src: dict[str, str] = {}
    texts = []
    for fam, ref, name in (("ip", reference4, names[0]), ("ip6", reference6, names[1])):
        if ref is not None:
            texts.append(ref)
            src[fam] = f"iptables-legacy-restore of {name or 'the reference'}"
        else:
            texts.append(compat_of(gen, fam, table))
            src[fam] = "iptables-legacy-restore of nftdocker compat output"
    return texts[0], texts[1], src


def _got(results: dict[int, Outcome], pr: Probe) -> Outcome:
    return results.get(pr.id, Outcome("missing"))


def _key(results: dict[int, Outcome], pr: Probe) -> tuple[str, str, str]:
    return _got(results, pr).key()


def _check_controls(s: Session, results: dict[str, dict[int, Outcome]]) -> None:
    expect = {"host": "refused", "outside": "open"}  # control probes by destination
    for pr in s.plan.probes:
        if pr.kind != "control":
            continue
        got = [_got(results[side], pr) for side in results]
        if all(o.result != expect[pr.dst] for o in got):
            raise EnvironmentProblem(
                f"the test topology does not work: control probe {pr.describe()} got {got[0].result} on every side "
                f"(expected {expect[pr.dst]})")


def verify(gen: Any, *, reference4: str | None = None, reference6: str | None = None,
           reference_names: tuple[str | None, str | None] = (None, None), nft_gen: Any | None = None,
           table: str = "nftdocker", timeout: float = DEFAULT_TIMEOUT, jobs: int = DEFAULT_JOBS,
           keep: bool = False, tag: str | None = None, add_probes: Callable[[Plan], Any] | None = None) -> Report:
    """Build both sides, load the legacy rules and the nft table, run every probe through both.

    ``nft_gen`` loads another generation's rulesets on the nft side (tests alter one rule that way);
    topology and probes always come from ``gen``; ``add_probes`` may append more to the plan (and
    the servers they need) before anything is built.
    """
    check_environment()
    t0 = time.monotonic()
    text4, text6, src = legacy_texts(gen, table, reference4, reference6, reference_names)
    s = Session(gen, table=table, timeout=timeout, jobs=jobs, keep=keep, tag=tag)
    if add_probes is not None:
        add_probes(s.plan)
    with s:
        t = time.monotonic()
        s.load_legacy(text4, text6)
        s.load_nft(nft_gen)
        s.timings["load"] = time.monotonic() - t
        t = time.monotonic()
        results = s.probe()
        _check_controls(s, results)
        # A difference made by a rule comes back every time; one made by a slow machine does not.
        again = [pr for pr in s.plan.probes if _key(results["legacy"], pr) != _key(results["nft"], pr)]
        if again:
            for side, got in s.probe(probes=again, timeout=timeout * 2).items():
                results[side].update(got)
        s.timings["probe"] = time.monotonic() - t
        rows = [Row(pr, _got(results["legacy"], pr), _got(results["nft"], pr))
                for pr in s.plan.probes]
        names = list(s.created)
        timings = dict(s.timings)
    return Report(gen.scenario.source, src, rows, names, keep, time.monotonic() - t0, s.plan.skipped, timings)


@dataclass
class RuleCoverage:
    family: str
    chain: str
    index: int
    text: str
    origin: str
    caught_by: list[Probe]


def without_rule(gen: Any, family: str, chain_key: tuple[str, str], index: int) -> Any:
    """A copy of ``gen`` whose ruleset lacks one rule (for coverage and tests)."""
    rulesets = copy.deepcopy(gen.rulesets)
    del rulesets[family].chains[chain_key].rules[index]
    return dataclasses.replace(gen, rulesets=rulesets)


def coverage(gen: Any, *, table: str = "nftdocker", timeout: float = DEFAULT_TIMEOUT, jobs: int = DEFAULT_JOBS,
             progress: Callable[[str], None] | None = None) -> tuple[list[Probe], list[RuleCoverage]]:
    """Drop each rule of the nft table in turn and list the probes whose outcome changes.

    Only the nft side is built; the unaltered table's outcomes are the baseline. A rule no probe
    catches either changes nothing for the traffic the scenario can produce (an empty network, a
    rule another one backs up, a no-op such as DOCKER-USER's RETURN) or needs traffic it does not.
    """
    from nftdocker.nft.render import rule_text

    check_environment()
    out: list[RuleCoverage] = []
    with Session(gen, table=table, timeout=timeout, jobs=jobs, sides=("nft",)) as s:
        s.load_nft()
        base = s.probe()
        _check_controls(s, base)
        for fam in gen.families():
            rs = gen.rulesets[fam]
            for key, chain in rs.chains.items():
                for i, r in enumerate(chain.rules):
                    s.load_nft(without_rule(gen, fam, key, i))
                    got = s.probe()["nft"]
                    caught = [pr for pr in s.plan.probes if _key(got, pr) != _key(base["nft"], pr)]
                    if caught:  # confirm, as verify() does
                        got.update(s.probe(probes=caught, timeout=timeout * 2)["nft"])
                        caught = [pr for pr in caught if _key(got, pr) != _key(base["nft"], pr)]
                    text = f"{chain.nft_name}: {rule_text(r, rs, chain.table)}"
                    out.append(RuleCoverage(fam, chain.nft_name, i, text, r.origin, caught))
                    if progress:
                        progress(f"{fam} {text}: {'caught by ' + ', '.join('#' + str(p.id) for p in caught) if caught else 'NOT CAUGHT'}")
        probes = list(s.plan.probes)
    return probes, out


# ---------------------------------------------------------------------- the agent (runs in a namespace)


def _serve_tcp(sock: Any, name: str) -> None:
    while True:
        try:
            conn, peer = sock.accept()
        except OSError:
            return
        try:
            local = conn.getsockname()
            conn.sendall(f"nftdv {name} {local[0]} {local[1]} {peer[0]}\n".encode())
        except OSError:
            pass
        finally:
            conn.close()


def _serve_udp(sock: Any, name: str) -> None:
    local = sock.getsockname()
    while True:
        try:
            _, peer = sock.recvfrom(512)
            sock.sendto(f"nftdv {name} {local[0]} {local[1]} {peer[0]}\n".encode(), peer)
        except OSError:
            continue


def _outcome_from_reply(data: bytes) -> dict[str, str]:
    parts = data.decode(errors="replace").split()
    if len(parts) == 5 and parts[0] == "nftdv":
        return {"result": "open", "served": f"{parts[1]}:{parts[3]}", "seen": parts[4], "local": parts[2]}
    return {"result": "open", "detail": "unexpected reply " + data[:40].decode(errors="replace")}


def _probe_one(p: dict[str, Any], timeout: float) -> dict[str, str]:
    import errno
    import socket

    fam = socket.AF_INET6 if ":" in p["addr"] else socket.AF_INET
    typ = socket.SOCK_STREAM if p["proto"] == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, typ)
    s.settimeout(timeout)
    try:
        s.connect((p["addr"], p["port"]))
        if typ == socket.SOCK_DGRAM:
            s.send(b"nftdv?\n")
        data = b""
        while b"\n" not in data:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        if not data:
            return {"result": "silent"}
        return _outcome_from_reply(data)
    except ConnectionRefusedError:
        return {"result": "refused"}
    except socket.timeout:
        return {"result": "timeout"} if typ == socket.SOCK_DGRAM or not _connected(s) else {"result": "silent"}
    except OSError as e:
        if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return {"result": "unreachable"}
        return {"result": "error", "detail": errno.errorcode.get(e.errno or 0, str(e))}
    finally:
        s.close()


def _connected(s: Any) -> bool:
    try:
        s.getpeername()
        return True
    except OSError:
        return False


def agent_main() -> None:
    """The agent: reads JSON commands on stdin, answers one JSON line each, exits at EOF."""
    import socket
    import threading
    from concurrent.futures import ThreadPoolExecutor as Pool

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"ready": True})
    socks = []
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        if op == "sysctl":
            from nftdocker.docker.generate import sysctl_path

            errors = []
            for key, value in msg["set"]:
                try:
                    with open(sysctl_path(key), "w") as f:
                        f.write(str(value))
                except OSError as e:
                    errors.append(f"{key}={value}: {e.strerror}")
            reply({"ok": not errors, "errors": errors})
        elif op == "serve":
            errors = []
            for proto, addr, port in msg["listen"]:
                fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((addr, port))
                    if proto == "tcp":
                        s.listen(128)
                except OSError as e:
                    errors.append(f"{proto} {addr} {port}: {e.strerror}")
                    s.close()
                    continue
                socks.append(s)
                target = _serve_tcp if proto == "tcp" else _serve_udp
                threading.Thread(target=target, args=(s, msg["name"]), daemon=True).start()
            reply({"ok": not errors, "errors": errors})
        elif op == "probe":
            timeout = float(msg.get("timeout", DEFAULT_TIMEOUT))
            probes = msg["probes"]
            with Pool(max_workers=max(1, min(int(msg.get("jobs", DEFAULT_JOBS)), len(probes) or 1))) as pool:
                results = list(pool.map(lambda p: _probe_one(p, timeout), probes))
            reply({"results": {str(p["id"]): r for p, r in zip(probes, results)}})
        else:
            reply({"error": f"unknown op {op!r}"})


if __name__ == "__main__":
    agent_main()
