"""The rule IR: one small typed tree per rule, rendered to nft text, libnftables JSON and iptables-save.

A :class:`Rule` holds matches and one action. Matches are kept in iptables' canonical
argument order (``-s -d -i -o -p --sport/--dport -m addrtype -m conntrack``), so two rules
that iptables would consider the same (``iptables -C``) compare equal here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import gc
from contextlib import contextmanager
from functools import lru_cache
from operator import itemgetter
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Iterator, Literal, NamedTuple, Union

#: an nftdocker table's address family
Family = Literal["ip", "ip6"]

Dir = Literal["s", "d"]


# Matches and actions are tuples: C-speed hashing and equality (generation checks every rule
# against its chain, as Docker's ``-C`` does). A match's first field is its rank in iptables'
# canonical argument order (``-s -d -i -o -p --sport --dport -m addrtype -m conntrack``), set by
# the constructor, so sorting a rule's matches needs no Python key function and two kinds never
# compare equal. Actions end in a ``tag`` field (never passed) for the same reason.


class _Addr(NamedTuple):
    rank: int
    dir: Dir
    net: IPv4Network | IPv6Network
    negate: bool


class Addr(_Addr):
    """``[!] -s/-d PREFIX`` / ``ip saddr/daddr [!=] PREFIX``."""

    __slots__ = ()

    def __new__(cls, dir: Dir, net: IPv4Network | IPv6Network, negate: bool = False) -> Addr:
        return tuple.__new__(cls, (0 if dir == "s" else 1, dir, net, negate))

    def __getnewargs__(self) -> tuple:
        return self[1:]


class _Iface(NamedTuple):
    rank: int
    dir: Literal["i", "o"]
    name: str
    negate: bool
    wildcard: bool


class Iface(_Iface):
    """``[!] -i/-o NAME`` / ``iifname/oifname [!=] NAME``: exactly the interface NAME, whatever
    characters it holds. With ``wildcard``, NAME is a prefix: every interface whose name starts with
    it (iptables ``NAME+``, nft ``"NAME*"``). The renderers write either form so that nft and
    iptables read it back the same; Docker's rules only ever name one interface."""

    __slots__ = ()

    def __new__(cls, dir: Literal["i", "o"], name: str, negate: bool = False, wildcard: bool = False) -> Iface:
        return tuple.__new__(cls, (2 if dir == "i" else 3, dir, name, negate, wildcard))

    def __getnewargs__(self) -> tuple:
        return self[1:]


class _L4Proto(NamedTuple):
    rank: int
    proto: str  # tcp udp sctp icmp ipv6-icmp


class L4Proto(_L4Proto):
    """``-p PROTO`` with no port / ``meta l4proto PROTO``."""

    __slots__ = ()

    def __new__(cls, proto: str) -> L4Proto:
        return tuple.__new__(cls, (4, proto))

    def __getnewargs__(self) -> tuple:
        return self[1:]


class _Port(NamedTuple):
    rank: int
    proto: str
    dir: Dir
    port: int


class Port(_Port):
    """``-p PROTO -m PROTO --sport/--dport N`` / ``PROTO sport/dport N``."""

    __slots__ = ()

    def __new__(cls, proto: str, dir: Dir, port: int) -> Port:
        return tuple.__new__(cls, (5 if dir == "s" else 6, proto, dir, port))

    def __getnewargs__(self) -> tuple:
        return self[1:]


class _AddrTypeLocal(NamedTuple):
    rank: int
    dir: Dir


class AddrTypeLocal(_AddrTypeLocal):
    """``-m addrtype --src-type/--dst-type LOCAL`` / ``fib saddr/daddr type local``."""

    __slots__ = ()

    def __new__(cls, dir: Dir) -> AddrTypeLocal:
        return tuple.__new__(cls, (7, dir))

    def __getnewargs__(self) -> tuple:
        return self[1:]


class _CtState(NamedTuple):
    rank: int
    states: tuple[str, ...]


class CtState(_CtState):
    """``-m conntrack --ctstate RELATED,ESTABLISHED`` / ``ct state related,established``."""

    __slots__ = ()

    def __new__(cls, states: tuple[str, ...] = ("RELATED", "ESTABLISHED")) -> CtState:
        return tuple.__new__(cls, (8, states))

    def __getnewargs__(self) -> tuple:
        return self[1:]


Match = Union[Addr, Iface, L4Proto, Port, AddrTypeLocal, CtState]


class Verdict(NamedTuple):
    """``-j ACCEPT|DROP|RETURN``.

    ``mark`` (ACCEPT only): ``(VALUE, MASK)``, the packet mark set before the accept
    (``meta mark set mark and ~MASK or VALUE``, see the accept mark, nftdocker.host.accept_mark). It exists only in nft: the
    iptables form of the rule is ``-j ACCEPT``, as Docker's."""

    kind: Literal["ACCEPT", "DROP", "RETURN"]
    mark: tuple[int, int] | None = None
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


_by_rank = itemgetter(0)


class Rule:
    """One rule: matches in canonical order, one action, and where it came from.

    Equal (and hashed) by matches and action, not origin. Immutable by convention: a plain class
    with slots, since generation builds tens of thousands and checks each against its chain.
    """

    __slots__ = ("matches", "action", "origin", "_hash")

    def __init__(self, matches: tuple[Match, ...], action: Action, origin: str = "") -> None:
        self.matches: tuple[Match, ...] = tuple(sorted(matches, key=_by_rank)) if len(matches) > 1 else tuple(matches)
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
    """Build a rule, dropping ``None`` matches (for optional terms; a match, a non-empty tuple, is never falsy)."""
    return Rule(tuple(filter(None, matches)), action, origin)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building a host's model or rules creates hundreds of
    thousands of objects and no cycles, and the collector would walk the growing heap again and
    again (15-20% of a large generation). Collection resumes, as it was, on the way out."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@lru_cache(maxsize=65536)
def host(addr: IPv4Address | IPv6Address) -> IPv4Network | IPv6Network:
    """The /32 or /128 prefix of one address (built from integers: parsing text is slow)."""
    if addr.version == 4:
        return IPv4Network((int(addr), 32))
    return IPv6Network((int(addr), 128))


#: the address families nftdocker writes a table for, in this order
FAMILIES: tuple[Family, Family] = ("ip", "ip6")

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
    """A chain: its iptables table and name, policy for built-ins, and rules in order.

    Equal when every field is: table, name, policy, priority and the rules in order (each
    :class:`Rule` equal by matches and action, its origin left out). This is how two hosts'
    tables are compared (``watch``, ``export``), without rendering either.
    """

    table: str
    name: str
    rules: list[Rule] = field(default_factory=list)
    policy: Literal["ACCEPT", "DROP"] | None = None
    #: a built-in's nft priority when it is not BASE_CHAINS' (see the accept mark, nftdocker.host.accept_mark)
    prio: int | None = None

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_CHAINS[self.table]

    @property
    def base(self) -> tuple[str, str, int]:
        """A built-in's nft base chain settings: type, hook, priority."""
        typ, hook, prio = BASE_CHAINS[(self.table, self.name)]
        return (typ, hook, prio if self.prio is None else self.prio)

    @property
    def nft_name(self) -> str:
        return f"{self.table}-{self.name}"


@dataclass
class Ruleset:
    """What one address family's iptables would hold: tables of chains, in creation order.

    Equal by family and chains, each :class:`Chain` by its key: the order in which chains were
    created does not count, as the renderers write them in an order of their own
    (:meth:`ordered_chains`).
    """

    family: Family
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


#: one call on a chain's rules, as a replay records it (and :func:`nftdocker.nft.diff.calls_edit` sends it):
#: (op: add | insert | delete, iptables table, chain, rule key, the rule's origin)
Call = tuple[str, str, str, str, str]
