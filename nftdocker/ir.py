"""The rule IR: one small typed tree per rule, rendered to nft text, libnftables JSON and iptables-save.

A :class:`Rule` holds matches and one action. Matches are kept in iptables' canonical
argument order (``-s -d -i -o -p --sport/--dport -m addrtype -m conntrack``), so two rules
that iptables would consider the same (``iptables -C``) compare equal here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Literal, NamedTuple, Union

Dir = Literal["s", "d"]


# Matches and actions are tuples (C-speed hashing and equality: generation checks every rule
# against its chain, as Docker's ``-C`` does). The ``tag`` field, last and never passed, keeps
# two kinds apart whose other fields happen to be equal.


class Addr(NamedTuple):
    """``[!] -s/-d PREFIX`` / ``ip saddr/daddr [!=] PREFIX``."""

    dir: Dir
    net: IPv4Network | IPv6Network
    negate: bool = False
    tag: str = "addr"


class Iface(NamedTuple):
    """``[!] -i/-o NAME`` / ``iifname/oifname [!=] NAME``."""

    dir: Literal["i", "o"]
    name: str
    negate: bool = False
    tag: str = "iface"


class L4Proto(NamedTuple):
    """``-p PROTO`` with no port / ``meta l4proto PROTO``."""

    proto: str  # tcp udp sctp icmp ipv6-icmp
    tag: str = "l4proto"


class Port(NamedTuple):
    """``-p PROTO -m PROTO --sport/--dport N`` / ``PROTO sport/dport N``."""

    proto: str
    dir: Dir
    port: int
    tag: str = "port"


class AddrTypeLocal(NamedTuple):
    """``-m addrtype --src-type/--dst-type LOCAL`` / ``fib saddr/daddr type local``."""

    dir: Dir
    tag: str = "addrtype"


class CtState(NamedTuple):
    """``-m conntrack --ctstate RELATED,ESTABLISHED`` / ``ct state related,established``."""

    states: tuple[str, ...] = ("RELATED", "ESTABLISHED")
    tag: str = "ctstate"


Match = Union[Addr, Iface, L4Proto, Port, AddrTypeLocal, CtState]


class Verdict(NamedTuple):
    """``-j ACCEPT|DROP|RETURN``."""

    kind: Literal["ACCEPT", "DROP", "RETURN"]
    tag: str = "verdict"


class Jump(NamedTuple):
    """``-j CHAIN``: a chain of the same iptables table."""

    chain: str
    tag: str = "jump"


class Dnat(NamedTuple):
    """``-j DNAT --to-destination ADDR:PORT``."""

    addr: IPv4Address | IPv6Address
    port: int | None = None
    tag: str = "dnat"


class Snat(NamedTuple):
    """``-j SNAT --to-source ADDR``."""

    addr: IPv4Address | IPv6Address
    tag: str = "snat"


class Masquerade(NamedTuple):
    """``-j MASQUERADE``."""

    tag: str = "masquerade"


Action = Union[Verdict, Jump, Dnat, Snat, Masquerade]


_RANK: dict[type, int] = {Addr: 0, Iface: 2, L4Proto: 4, Port: 5, AddrTypeLocal: 7, CtState: 8}
_DIRECTED = (0, 2, 5)  # Addr, Iface, Port: source/in before destination/out


def _order(m: Match) -> int:
    """iptables' canonical argument order: -s -d -i -o -p --sport --dport -m addrtype -m conntrack."""
    r = _RANK[m.__class__]
    if r in _DIRECTED and m.dir in ("d", "o"):  # type: ignore[union-attr]
        return r + 1
    return r


class Rule:
    """One rule: matches in canonical order, one action, and where it came from.

    Equal (and hashed) by matches and action, not origin. Immutable by convention: a plain class
    with slots, since generation builds tens of thousands and checks each against its chain.
    """

    __slots__ = ("matches", "action", "origin", "_hash")

    def __init__(self, matches: tuple[Match, ...], action: Action, origin: str = "") -> None:
        self.matches: tuple[Match, ...] = tuple(sorted(matches, key=_order)) if len(matches) > 1 else tuple(matches)
        self.action = action
        self.origin = origin
        self._hash = hash((self.matches, action))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Rule:
            return NotImplemented
        return self._hash == other._hash and self.matches == other.matches and self.action == other.action  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Rule(matches={self.matches!r}, action={self.action!r}, origin={self.origin!r})"


def rule(*matches: Match | None, action: Action, origin: str = "") -> Rule:
    """Build a rule, dropping ``None`` matches (for optional terms; a match is never falsy: it has a tag)."""
    return Rule(tuple(filter(None, matches)), action, origin)


@lru_cache(maxsize=65536)
def host(addr: IPv4Address | IPv6Address) -> IPv4Network | IPv6Network:
    """The /32 or /128 prefix of one address (built from integers: parsing text is slow)."""
    if addr.version == 4:
        return IPv4Network((int(addr), 32))
    return IPv6Network((int(addr), 128))


ANY4 = ip_network("0.0.0.0/0")
ANY6 = ip_network("::/0")

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
TABLE_ORDER = ("raw", "mangle", "filter", "nat")

# nft base chain settings for the iptables built-in chains nftdocker writes to.
BASE_CHAINS: dict[tuple[str, str], tuple[str, str, int]] = {
    ("raw", "PREROUTING"): ("filter", "prerouting", -300),
    ("raw", "OUTPUT"): ("filter", "output", -300),
    ("mangle", "PREROUTING"): ("filter", "prerouting", -150),
    ("mangle", "INPUT"): ("filter", "input", -150),
    ("mangle", "FORWARD"): ("filter", "forward", -150),
    ("mangle", "OUTPUT"): ("route", "output", -150),
    ("mangle", "POSTROUTING"): ("filter", "postrouting", -150),
    ("filter", "INPUT"): ("filter", "input", 0),
    ("filter", "FORWARD"): ("filter", "forward", 0),
    ("filter", "OUTPUT"): ("filter", "output", 0),
    ("nat", "PREROUTING"): ("nat", "prerouting", -100),
    ("nat", "INPUT"): ("nat", "input", 100),
    ("nat", "OUTPUT"): ("nat", "output", -100),
    ("nat", "POSTROUTING"): ("nat", "postrouting", 100),
}


@dataclass
class Chain:
    """A chain: its iptables table and name, policy for built-ins, and rules in order."""

    table: str
    name: str
    rules: list[Rule] = field(default_factory=list)
    policy: Literal["ACCEPT", "DROP"] | None = None

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_CHAINS[self.table]

    @property
    def nft_name(self) -> str:
        return f"{self.table}-{self.name}"


@dataclass
class Ruleset:
    """What one address family's iptables would hold: tables of chains, in creation order."""

    family: Literal["ip", "ip6"]
    chains: dict[tuple[str, str], Chain] = field(default_factory=dict)

    def tables(self) -> list[str]:
        present = {t for (t, _) in self.chains}
        return [t for t in TABLE_ORDER if t in present]

    def ordered_chains(self, table: str) -> list[Chain]:
        """Built-ins in hook order (those present), then user chains sorted, as iptables-save lists them."""
        builtins = [self.chains[(table, n)] for n in BUILTIN_CHAINS[table] if (table, n) in self.chains]
        users = sorted((c for (t, n), c in self.chains.items() if t == table and not c.builtin), key=lambda c: c.name)
        return builtins + users

    def is_empty(self) -> bool:
        return not self.chains
