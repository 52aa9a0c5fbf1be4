"""Renderers: rule IR -> nft text and libnftables JSON.

One nft table per family (``table ip nftdocker``, ``table ip6 nftdocker``); each iptables
chain Docker uses becomes the nft chain ``<iptables table>-<chain>``. Only native
expressions: ``fib`` for addrtype, ``ct state`` for conntrack, ``iifname``/``oifname``,
payload matches, ``dnat``/``snat``/``masquerade``. No sets, maps or ``xt`` expressions.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Mapping, Sequence, assert_never

from nftdocker.errors import GenerationError
from nftdocker.nft.ir import (
    Addr,
    AddrTypeLocal,
    Chain,
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
    Action,
)

DEFAULT_TABLE = "nftdocker"
PRIO_NAMES = {-300: "raw", -150: "mangle", -100: "dstnat", 0: "filter", 100: "srcnat"}


def nft_chains(rs: Ruleset) -> list[Chain]:
    """The chains of the nft table in output order: per iptables table, built-ins then user chains."""
    out: list[Chain] = []
    for t in rs.tables():
        out.extend(rs.ordered_chains(t))
    return out


# What nft 1.0.6 takes in an iifname/oifname string: at most 15 bytes (it reports "maximum length
# of 16", counting the NUL), and nothing that ends the quoted string or escapes.
NFT_IFNAME_MAX = 15
_NFT_IFNAME_BAD = re.compile(r'["\\\x00-\x1f\x7f]')


@lru_cache(maxsize=4096)
def nft_ifname(name: str, wildcard: bool = False) -> str:
    """The nft string (unquoted) that matches exactly the interface ``name``; with ``wildcard``, every
    interface whose name starts with ``name``.

    nft reads a trailing ``*`` as that wildcard and a trailing ``\\*`` as a literal star, in text and in
    libnftables JSON alike, and lists rules back the same way (``nft -j list`` shows the interface
    ``n*`` as ``"n\\\\*"``); a star elsewhere, and ``+``, are literal. So a name ending in ``*`` is
    written escaped, which costs a byte: at 15 bytes it no longer fits, and is refused.
    """
    if not name or _NFT_IFNAME_BAD.search(name):
        raise GenerationError(f"interface name {name!r} cannot be written as an nft string")
    if wildcard:
        text = name + "*"
    elif name.endswith("*"):
        text = name[:-1] + "\\*"
    else:
        text = name
    if len(text.encode()) > NFT_IFNAME_MAX:
        if wildcard or not name.endswith("*"):
            raise GenerationError(f"interface name {name!r}: {text!r} is longer than nft's limit of {NFT_IFNAME_MAX} bytes")
        raise GenerationError(
            f"interface name {name!r} ends in '*': nft matches only that interface as \"{text}\", one byte over "
            f"nft's limit of {NFT_IFNAME_MAX}, so such a name can have at most {NFT_IFNAME_MAX - 1} bytes"
        )
    return text


def _addr_text(net: IPv4Network | IPv6Network) -> str:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def match_text(m: Match, rs: Ruleset) -> str:
    return _match_text(m, rs.family)


@lru_cache(maxsize=200_000)  # a host's rules share most of their matches
def _match_text(m: Match, family: str) -> str:
    match m:
        case Addr(dir=d, net=net, negate=neg):
            op = "!= " if neg else ""
            return f"{family} {'saddr' if d == 's' else 'daddr'} {op}{_addr_text(net)}"
        case Iface(dir=d, name=name, negate=neg, wildcard=w):
            op = "!= " if neg else ""
            return f'{"iifname" if d == "i" else "oifname"} {op}"{nft_ifname(name, w)}"'
        case L4Proto(proto=p):
            return f"meta l4proto {p}"
        case Port(proto=p, dir=d, port=port):
            return f"{p} {'sport' if d == 's' else 'dport'} {port}"
        case AddrTypeLocal(dir=d):
            return f"fib {'saddr' if d == 's' else 'daddr'} type local"
        case CtState(states=states):
            return "ct state " + ",".join(s.lower() for s in reversed(states))
        case _:
            assert_never(m)


def action_text(a: Action, table: str) -> str:
    match a:
        case Verdict(kind=k, mark=None):
            return k.lower()
        case Verdict(kind=k, mark=(value, mask)):
            return f"{mark_set_text(value, mask)} {k.lower()}"
        case Jump(chain=c):
            return f"jump {table}-{c}"
        case Dnat(addr=addr, port=port):
            if port is None:
                return f"dnat to {addr}"
            return f"dnat to [{addr}]:{port}" if addr.version == 6 else f"dnat to {addr}:{port}"
        case Snat(addr=addr):
            return f"snat to {addr}"
        case Masquerade():
            return "masquerade"
        case _:
            assert_never(a)


def rule_text(r: Rule, rs: Ruleset, table: str) -> str:
    parts = [match_text(m, rs) for m in r.matches]
    parts.append(action_text(r.action, table))
    return " ".join(parts)


MARK_BITS = 0xFFFFFFFF


def mark_set_text(value: int, mask: int) -> str:
    """``meta mark set`` that clears the bits of ``mask`` and sets ``value`` (within ``mask``), as
    nft lists it back: the and-operand keeps the value's bits (``& (~mask | value) | value``), and a
    full mask is a plain assignment."""
    if mask == MARK_BITS:
        return f"meta mark set 0x{value:08x}"
    return f"meta mark set meta mark & 0x{(~mask & MARK_BITS) | value:08x} | 0x{value:08x}"


def mark_set_json(value: int, mask: int) -> dict[str, Any]:
    """:func:`mark_set_text` as a libnftables JSON statement (the form ``nft -j list`` gives)."""
    mark = {"meta": {"key": "mark"}}
    if mask == MARK_BITS:
        return {"mangle": {"key": mark, "value": value}}
    return {"mangle": {"key": mark, "value": {"|": [{"&": [mark, (~mask & MARK_BITS) | value]}, value]}}}


def policy_word(policy: str | None) -> str:
    """A built-in chain's iptables policy (ACCEPT/DROP) as nft writes it."""
    return "drop" if policy == "DROP" else "accept"


def chain_header(c: Chain) -> str | None:
    if not c.builtin:
        return None
    typ, hook, prio = c.base
    policy = policy_word(c.policy)
    name = PRIO_NAMES.get(prio, str(prio))
    if (name == "dstnat" and hook != "prerouting") or (name == "srcnat" and hook != "postrouting"):
        name = str(prio)  # nft accepts these names only on their own hook
    return f"type {typ} hook {hook} priority {name}; policy {policy};"


# ---------------------------------------------------------------------- JSON


def match_json(m: Match, rs: Ruleset) -> dict[str, Any]:
    match m:
        case Addr(dir=d, net=net, negate=neg):
            right: Any = (
                str(net.network_address)
                if net.prefixlen == net.max_prefixlen
                else {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
            )
            left = {"payload": {"protocol": rs.family, "field": "saddr" if d == "s" else "daddr"}}
            return {"match": {"op": "!=" if neg else "==", "left": left, "right": right}}
        case Iface(dir=d, name=name, negate=neg, wildcard=w):
            return {"match": {"op": "!=" if neg else "==", "left": {"meta": {"key": "iifname" if d == "i" else "oifname"}},
                              "right": nft_ifname(name, w)}}
        case L4Proto(proto=p):
            return {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": p}}
        case Port(proto=p, dir=d, port=port):
            return {"match": {"op": "==", "left": {"payload": {"protocol": p, "field": "sport" if d == "s" else "dport"}}, "right": port}}
        case AddrTypeLocal(dir=d):
            return {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["saddr" if d == "s" else "daddr"]}}, "right": "local"}}
        case CtState(states=states):
            return {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": [s.lower() for s in reversed(states)]}}
        case _:
            assert_never(m)


def action_json(a: Action, table: str) -> dict[str, Any]:
    match a:
        case Verdict(kind=k):
            return {k.lower(): None}
        case Jump(chain=c):
            return {"jump": {"target": f"{table}-{c}"}}
        case Dnat(addr=addr, port=port):
            d: dict[str, Any] = {"addr": str(addr)}
            if port is not None:
                d["port"] = port
            return {"dnat": d}
        case Snat(addr=addr):
            return {"snat": {"addr": str(addr)}}
        case Masquerade():
            return {"masquerade": None}
        case _:
            assert_never(a)


def rule_expr(r: Rule, rs: Ruleset, table: str) -> list[dict[str, Any]]:
    out = [match_json(m, rs) for m in r.matches]
    if isinstance(r.action, Verdict) and r.action.mark is not None:
        out.append(mark_set_json(*r.action.mark))
    out.append(action_json(r.action, table))
    return out


def render_json_objects(rulesets: Mapping[str, Ruleset] | Sequence[Ruleset], table: str = DEFAULT_TABLE) -> list[dict[str, Any]]:
    """The ``nft -j list table`` objects (table, chains, rules) for the rulesets."""
    rss = list(rulesets.values()) if isinstance(rulesets, Mapping) else list(rulesets)
    objs: list[dict[str, Any]] = []
    for rs in rss:
        if rs.is_empty():
            continue
        objs.append({"table": {"family": rs.family, "name": table}})
        chains = nft_chains(rs)
        for c in chains:
            ch: dict[str, Any] = {"family": rs.family, "table": table, "name": c.nft_name}
            if c.builtin:
                typ, hook, prio = c.base
                ch.update({"type": typ, "hook": hook, "prio": prio, "policy": policy_word(c.policy)})
            objs.append({"chain": ch})
        for c in chains:
            for r in c.rules:
                objs.append({"rule": {"family": rs.family, "table": table, "chain": c.nft_name, "expr": rule_expr(r, rs, c.table)}})
    return objs


def render_json(rulesets: dict[str, Ruleset] | list[Ruleset], table: str = DEFAULT_TABLE) -> str:
    return json.dumps({"nftables": render_json_objects(rulesets, table)}, indent=2) + "\n"
