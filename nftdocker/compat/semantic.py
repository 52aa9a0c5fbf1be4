"""What an iptables rule matches, as a box of packet fields; overlap, and concrete packets in a box.

A rule's match is a conjunction of constraints on fields (input/output interface with negation and
iptables' ``+`` wildcard, source/destination prefix with negation, protocol, ports or ranges,
conntrack state, ``addrtype LOCAL``). Anything not understood (a match module, option or value
this module does not know) makes the rule *opaque*: it overlaps every rule, and the evaluator
cannot tell whether a packet matches it (:mod:`nftdocker.compat.chain_eval`). The boxes are conservative only in one direction: two
boxes said disjoint never match a common packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any, Iterator, Sequence

from nftdocker.nft.parse import PROTO_NUMBERS

STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED")
TERMINAL = {"ACCEPT", "DROP", "REJECT", "DNAT", "SNAT", "MASQUERADE", "REDIRECT"}
SIDE_EFFECT_FREE = TERMINAL | {"RETURN"}
_PROTO = {**PROTO_NUMBERS, "icmpv6": "ipv6-icmp"}
_WITNESS_PROTOS = ("tcp", "udp", "icmp", "ipv6-icmp")
_MODULES = {"tcp", "udp", "sctp", "conntrack", "state", "addrtype", "comment"}


@dataclass(frozen=True)
class Box:
    """Constraints, each a (value, negated) pair; the box is their conjunction."""

    iif: tuple = ()
    oif: tuple = ()
    src: tuple = ()
    dst: tuple = ()
    proto: tuple = ()
    sport: tuple = ()
    dport: tuple = ()
    state: tuple = ()
    src_local: tuple = ()  # (wanted: bool,)
    dst_local: tuple = ()
    opaque: tuple = ()  # what was not understood

    def __and__(self, other: "Box") -> "Box":
        return Box(*(getattr(self, f) + getattr(other, f) for f in _FIELDS))


_FIELDS = ("iif", "oif", "src", "dst", "proto", "sport", "dport", "state", "src_local", "dst_local", "opaque")


@dataclass(frozen=True)
class Rule:
    text: str  # "-A CHAIN ..." as the dump shows it
    chain: str
    box: Box
    target: str  # "ACCEPT", "DNAT --to-destination 1.2.3.4:80", "DOCKER", ...
    goto: bool = False

    @property
    def target_name(self) -> str:
        return self.target.split(" ", 1)[0]

    def keys(self) -> tuple:
        """Per bucketing field, a value two rules must share to overlap, or None (no such literal)."""
        b = self.box
        if b.opaque:
            return (None,) * 5
        return (_lit_iface(b.oif), _lit_iface(b.iif), _lit_port(b), _lit_host(b.dst), _lit_host(b.src))


def _lit_iface(cs: tuple) -> str | None:
    for name, neg in cs:
        if not neg and not name.endswith("+"):
            return name
    return None


def _lit_port(b: Box) -> tuple | None:
    proto = next((p for p, neg in b.proto if not neg), None)
    for (lo, hi), neg in b.dport:
        if not neg and lo == hi and proto:
            return (proto, lo)
    return None


def _lit_host(cs: tuple) -> Any:
    for net, neg in cs:
        if not neg and net.prefixlen == net.max_prefixlen:
            return net.network_address
    return None


def _ports(v: str) -> tuple[int, int]:
    lo, sep, hi = v.partition(":")
    a = int(lo) if lo else 0
    b = (int(hi) if hi else 65535) if sep else a
    if not (0 <= a <= b <= 65535):
        raise ValueError(v)
    return (a, b)


def parse_rule(text: str) -> Rule:
    """One ``-A CHAIN ...`` line of iptables-save text."""
    toks = text.split()
    chain = toks[1] if len(toks) > 1 else ""
    jt = next((i for i, t in enumerate(toks) if t in ("-j", "--jump", "-g", "--goto")), None)
    target = " ".join(toks[jt + 1:]) if jt is not None else ""
    body = toks[2:jt] if jt is not None else toks[2:]
    c: dict[str, list] = {f: [] for f in _FIELDS}
    module = None
    neg = False
    i = 0
    while i < len(body):
        t = body[i]
        if t == "!":
            neg = True
            i += 1
            continue
        v = body[i + 1] if i + 1 < len(body) else ""
        try:
            if t in ("-i", "--in-interface", "-o", "--out-interface"):
                c["iif" if t in ("-i", "--in-interface") else "oif"].append((v, neg))
            elif t in ("-s", "--source", "--src", "-d", "--destination", "--dst"):
                if "," in v:
                    raise ValueError(v)
                c["src" if t in ("-s", "--source", "--src") else "dst"].append((ip_network(v, strict=False), neg))
            elif t in ("-p", "--protocol"):
                p = _PROTO.get(v.lower(), v.lower())
                if p != "all" or neg:
                    c["proto"].append((p, neg))
            elif t in ("-m", "--match"):
                module = v
                if v not in _MODULES:
                    c["opaque"].append(f"-m {v}")
            elif t in ("--dport", "--destination-port", "--sport", "--source-port") and module in ("tcp", "udp", "sctp"):
                c["dport" if t in ("--dport", "--destination-port") else "sport"].append((_ports(v), neg))
            elif t in ("--ctstate", "--state") and module in ("conntrack", "state"):
                states = frozenset(v.upper().split(","))
                if not states <= set(STATES):
                    raise ValueError(v)
                c["state"].append((states, neg))
            elif t in ("--dst-type", "--src-type") and module == "addrtype" and v == "LOCAL":
                c["dst_local" if t == "--dst-type" else "src_local"].append((not neg,))
            elif t == "--comment" and module == "comment":
                pass
            else:
                c["opaque"].append(t)
                i += 1
                neg = False
                continue
        except ValueError:
            c["opaque"].append(f"{t} {v}")
        neg = False
        i += 2
    if not target:
        c["opaque"].append("no target")
    return Rule(text, chain, Box(**{k: tuple(v) for k, v in c.items()}), target, jt is not None and toks[jt] in ("-g", "--goto"))


# ---------------------------------------------------------------------- satisfiability


def _iface_names(cs: tuple, hints: Sequence[str], defaults: Sequence[str]) -> list[str]:
    """Interface names meeting every constraint: literal ones, then hints, then defaults."""
    pos = [n for n, neg in cs if not neg]
    lits = [n for n in pos if not n.endswith("+")]
    cands: list[str] = []
    if lits:
        cands = lits[:1]
    else:
        pre = max((n[:-1] for n in pos), key=len, default=None)
        if pre is not None:
            cands = [h for h in hints if h.startswith(pre)] + [pre + s for s in ("0", "1", "x9")]
        else:
            cands = list(defaults) + list(hints)
    return [n for n in dict.fromkeys(cands) if all(_iface_match(p, n) != neg for p, neg in cs)]


def _iface_match(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _iface_sat(cs: tuple) -> bool:
    pos = [n for n, neg in cs if not neg]
    negs = [n for n, neg in cs if neg]
    lits = [n for n in pos if not n.endswith("+")]
    if lits:
        name = lits[0]
        return all(_iface_match(p, name) for p in pos) and not any(_iface_match(p, name) for p in negs)
    pres = sorted((n[:-1] for n in pos), key=len)
    if any(not pres[-1].startswith(p) for p in pres):
        return False
    longest = pres[-1] if pres else ""
    # A negated wildcard rules out every name under it; negated literals leave other names.
    return not any(p.endswith("+") and longest.startswith(p[:-1]) for p in negs)


def _addr_sat(cs: tuple) -> bool:
    pos = [n for n, neg in cs if not neg]
    negs = [n for n, neg in cs if neg]
    if pos:
        narrow = max(pos, key=lambda n: n.prefixlen)
        if not all(narrow.version == p.version and narrow.subnet_of(p) for p in pos):
            return False
    else:
        narrow = None
    for n in negs:
        if narrow is None and n.prefixlen == 0:
            return False
        if narrow is not None and n.version == narrow.version and narrow.subnet_of(n):
            return False
    return True


def _range(cs: tuple) -> tuple[int, int] | None:
    lo, hi = 0, 65535
    for (a, b), neg in cs:
        if not neg:
            lo, hi = max(lo, a), min(hi, b)
    if lo > hi or any(neg and a <= lo and hi <= b for (a, b), neg in cs):
        return None
    return (lo, hi)


def _states(cs: tuple) -> set[str]:
    ok = set(STATES)
    for s, neg in cs:
        ok = ok - s if neg else ok & s
    return ok


def satisfiable(b: Box) -> bool:
    """False only when no packet can meet every constraint of ``b``."""
    if b.opaque:
        return True
    if not (_iface_sat(b.iif) and _iface_sat(b.oif) and _addr_sat(b.src) and _addr_sat(b.dst)):
        return False
    pos = {p for p, neg in b.proto if not neg}
    if len(pos) > 1 or (pos and any(neg and p in pos for p, neg in b.proto)):
        return False
    if (b.sport or b.dport) and (_range(b.sport) is None or _range(b.dport) is None):
        return False
    if b.state and not _states(b.state):
        return False
    return all(len({w for (w,) in cs}) <= 1 for cs in (b.src_local, b.dst_local))


def overlap(a: Rule, b: Rule) -> bool:
    return satisfiable(a.box & b.box)


# ---------------------------------------------------------------------- packets


@dataclass(frozen=True)
class Packet:
    proto: str
    src: IPv4Address | IPv6Address
    sport: int
    dst: IPv4Address | IPv6Address
    dport: int
    iif: str | None
    oif: str | None
    state: str = "NEW"
    src_local: bool = False
    dst_local: bool = False

    def text(self) -> str:
        def hp(a: Any, p: int) -> str:
            return f"[{a}]:{p}" if a.version == 6 else f"{a}:{p}"

        if self.proto in ("tcp", "udp"):
            s = f"{self.proto} {hp(self.src, self.sport)} -> {hp(self.dst, self.dport)}"
        else:
            s = f"{self.proto} {self.src} -> {self.dst}"
        s += "".join(f" {k} {v}" for k, v in (("in", self.iif), ("out", self.oif)) if v)
        if self.state != "NEW":
            s += f" ctstate {self.state}"
        s += " (dst local)" if self.dst_local else ""
        s += " (src local)" if self.src_local else ""
        return s

    def to_json(self) -> dict[str, Any]:
        return {"proto": self.proto, "src": str(self.src), "sport": self.sport, "dst": str(self.dst), "dport": self.dport,
                "in": self.iif, "out": self.oif, "ctstate": self.state, "src_local": self.src_local,
                "dst_local": self.dst_local}


def matches(b: Box, p: Packet) -> bool | None:
    """Whether ``p`` meets ``b``; None when ``b`` is opaque."""
    if b.opaque:
        return None
    for cs, name in ((b.iif, p.iif), (b.oif, p.oif)):
        for pat, neg in cs:
            if name is None or _iface_match(pat, name) == neg:
                return False
    for cs, a in ((b.src, p.src), (b.dst, p.dst)):
        for net, neg in cs:
            if (net.version == a.version and a in net) == neg:
                return False
    for pr, neg in b.proto:
        if (pr == p.proto) == neg:
            return False
    for cs, port in ((b.sport, p.sport), (b.dport, p.dport)):
        for (lo, hi), neg in cs:
            if (lo <= port <= hi) == neg:
                return False
    for s, neg in b.state:
        if (p.state in s) == neg:
            return False
    return all(w == p.src_local for (w,) in b.src_local) and all(w == p.dst_local for (w,) in b.dst_local)


@dataclass
class Hints:
    """Values the dumps mention (interfaces, host addresses, ports), to pick realistic witnesses."""

    ifaces: list[str] = field(default_factory=list)
    hosts: list[Any] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> "Hints":
        ifs: dict[str, None] = {}
        hosts: dict[Any, None] = {}
        ports: dict[int, None] = {}
        for r in rules:
            for n, _ in r.box.iif + r.box.oif:
                if not n.endswith("+"):
                    ifs[n] = None
            for net, _ in r.box.dst + r.box.src:
                if net.prefixlen == net.max_prefixlen:
                    hosts[net.network_address] = None
            for (lo, _), _neg in r.box.dport:
                ports[lo] = None
            if r.target_name == "DNAT" and "--to-destination" in r.target:
                hp = r.target.split("--to-destination", 1)[1].split()[0]
                host = hp.rsplit(":", 1)[0].strip("[]") if (hp.count(":") == 1 or hp.startswith("[")) else hp
                try:
                    hosts[ip_address(host)] = None
                except ValueError:
                    pass
        return cls(list(ifs), list(hosts), list(ports))


def _addresses(cs: tuple, hosts: Sequence[Any], default: str, version: int, hosts_first: bool) -> list[Any]:
    pos = [n for n, neg in cs if not neg]
    narrow = max(pos, key=lambda n: n.prefixlen) if pos else None
    mine = [h for h in hosts if h.version == version]
    if narrow is not None:
        derived = [narrow.network_address + k for k in (2, 1, 3) if k < narrow.num_addresses] or [narrow.network_address]
        cands = mine + derived
    else:
        d = ip_address(default) if version == 4 else ip_address("2001:db8:ffff::9" if default.startswith("203") else "2001:db8:fffe::9")
        cands = mine + [d] if hosts_first else [d] + mine
    return [a for a in dict.fromkeys(cands) if all((n.version == a.version and a in n) != neg for n, neg in cs)][:6]


def _port_values(cs: tuple, hints: Sequence[int], default: int) -> list[int]:
    r = _range(cs)
    if r is None:
        return []
    lo, hi = r
    cands = ([default] if lo == 0 and hi == 65535 else [lo, hi, lo + 1]) + list(hints)
    return [p for p in dict.fromkeys(cands) if lo <= p <= hi and not any(neg and a <= p <= b for (a, b), neg in cs)][:4]


def candidates(b: Box, hints: Hints, version: int) -> Iterator[Packet]:
    """Concrete packets in ``b``: a base packet, then one field changed at a time (bounded)."""
    pos = [p for p, neg in b.proto if not neg]
    protos = [p for p in (pos[:1] or ["tcp", "udp"]) if p in _WITNESS_PROTOS and all((p == q) != neg for q, neg in b.proto)]
    fields = {
        "proto": protos,
        "src": _addresses(b.src, hints.hosts, "203.0.113.9", version, hosts_first=False),
        "sport": _port_values(b.sport, [], 40000),
        "dst": _addresses(b.dst, hints.hosts, "198.51.100.9", version, hosts_first=True),
        "dport": _port_values(b.dport, hints.ports, 60),
        "iif": _iface_names(b.iif, hints.ifaces, ["eth0"]),
        "oif": _iface_names(b.oif, hints.ifaces, ["eth0"]),
        "state": [s for s in STATES if s in _states(b.state)][:3],
        "src_local": [w for w in (False, True) if all(w == x for (x,) in b.src_local)],
        "dst_local": [w for w in (False, True) if all(w == x for (x,) in b.dst_local)],
    }
    if any(not v for v in fields.values()):
        return
    base = Packet(**{k: v[0] for k, v in fields.items()})
    yield base
    for k, vs in fields.items():
        for v in vs[1:]:
            yield replace(base, **{k: v})
