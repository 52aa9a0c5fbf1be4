"""The compat layer: nftdocker's table, as rule IR, -> iptables-save text.

:func:`save_text` translates one family's :class:`ir.Ruleset`: a generated one directly
(:func:`compat_of`), and one listed from a live kernel once its libnftables JSON is read into
the IR (:func:`nftdocker.nft.parse.rulesets_from_json`, :func:`compat_text`): JSON is read only where the kernel
gives it. Chains named ``<table>-<CHAIN>`` become iptables chains of that table; every iptables
table present gets all its built-in chains, as iptables-save shows them; rules print in
iptables' canonical argument order.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv6Address
from typing import Any, Iterable, assert_never

from nftdocker.errors import CompatError
from nftdocker.nft.ir import (
    BUILTIN_CHAINS,
    Action,
    Addr,
    AddrTypeLocal,
    CtState,
    Dnat,
    Iface,
    Jump,
    L4Proto,
    Masquerade,
    Match,
    Port,
    Rule,
    Ruleset,
    Snat,
    Verdict,
)
from nftdocker.nft.parse import rulesets_from_json
from nftdocker.nft.render import DEFAULT_TABLE, nft_ifname

# ---------------------------------------------------------------------- iptables-save text


def _net(net) -> str:
    return f"{net.network_address}/{net.prefixlen}"


def iptables_ifname(name: str, wildcard: bool = False) -> str:
    """The ``-i``/``-o`` argument: iptables reads a trailing ``+`` as a wildcard (``e+``: every name
    starting with ``e``) and everything else, ``*`` included, literally. It has no escape, so no
    iptables rule matches only an interface whose name ends in ``+``: refused."""
    if wildcard:
        return name + "+"
    if name.endswith("+"):
        raise CompatError(
            f"interface name {name!r} ends in '+', which iptables reads as a wildcard (every name starting "
            f"with {name[:-1]!r}): no iptables rule matches only that interface"
        )
    return name


@lru_cache(maxsize=200_000)  # a host's rules share most of their matches
def match_args(m: Match) -> str:
    match m:
        case Addr(dir=d, net=net, negate=neg):
            return f"{'! ' if neg else ''}-{d} {_net(net)}"
        case Iface(dir=d, name=name, negate=neg, wildcard=w):
            nft_ifname(name, w)  # a name nft cannot hold is in no nft table to translate: refused as writing it is
            return f"{'! ' if neg else ''}-{d} {iptables_ifname(name, w)}"
        case L4Proto(proto=p):
            return f"-p {p}"
        case Port(proto=p, dir=d, port=port):
            return f"-p {p} -m {p} --{'s' if d == 's' else 'd'}port {port}"
        case AddrTypeLocal(dir=d):
            return f"-m addrtype --{'src' if d == 's' else 'dst'}-type LOCAL"
        case CtState(states=states):
            return "-m conntrack --ctstate " + ",".join(states)
        case _:
            assert_never(m)


@lru_cache(maxsize=65_536)
def action_args(a: Action) -> str:
    match a:
        case Verdict(kind=k):
            return f"-j {k}"  # an accept's packet mark (--accept-mark) is left out: Docker sets none
        case Jump(chain=c):
            return f"-j {c}"
        case Dnat(addr=addr, port=port):
            if port is None:
                return f"-j DNAT --to-destination {addr}"
            host = f"[{addr}]" if isinstance(addr, IPv6Address) else str(addr)
            return f"-j DNAT --to-destination {host}:{port}"
        case Snat(addr=addr):
            return f"-j SNAT --to-source {addr}"
        case Masquerade():
            return "-j MASQUERADE"
        case _:
            assert_never(a)


def rule_args(r: Rule) -> str:
    return " ".join([match_args(m) for m in r.matches] + [action_args(r.action)])


def save_text(rs: Ruleset) -> str:
    """iptables-save text for one family's ruleset."""
    out: list[str] = []
    for t in rs.tables():
        out.append(f"*{t}")
        for name in BUILTIN_CHAINS[t]:
            c = rs.chains.get((t, name))
            policy = c.policy if c is not None and c.policy else "ACCEPT"
            out.append(f":{name} {policy} [0:0]")
        chains = rs.ordered_chains(t)
        for c in chains:
            if not c.builtin:
                out.append(f":{c.name} - [0:0]")
        for c in chains:
            for i, r in enumerate(c.rules, 1):
                try:
                    out.append(f"-A {c.name} {rule_args(r)}")
                except CompatError as e:
                    raise CompatError(f"{rs.family} {t} {c.name} rule {i}: {e.message}") from None
        out.append("COMMIT")
    return "\n".join(out) + ("\n" if out else "")


def compat_text(objs: Iterable[dict[str, Any]], family: str, table: str = DEFAULT_TABLE) -> str:
    """The iptables-save text (``ip``) or ip6tables-save text (``ip6``) of an nft table in JSON form
    (``nft -j list``: the kernel's listing)."""
    rs = rulesets_from_json(objs, table).get(family)
    return save_text(rs) if rs is not None else ""


def compat_of(gen: Any, family: str, table: str = DEFAULT_TABLE) -> str:
    """The iptables-save text (``ip``) or ip6tables-save text (``ip6``) of a generated host
    (``nftdocker.docker.generate.Generated``): its rulesets translated as they are. (``table``, the nft table's name,
    does not show in the iptables form.)"""
    rs = gen.rulesets.get(family)
    return save_text(rs) if rs is not None else ""
