"""The kernel's libnftables JSON listing of nftdocker's table -> rule IR (one Ruleset per family).

:func:`rulesets_from_json` reads ``nft -j list table`` objects (the kernel's own listing, the only
JSON nftdocker reads), :func:`parse_expr` one rule's expressions: ``view`` keys the kernel's rules by
it, compat translates what it reads. Only what nftdocker writes is read; anything else is a
:class:`CompatError` naming the rule (``ip nftdocker filter-DOCKER rule 3 (handle 12)``).
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any, Iterable

from nftdocker.errors import CompatError, GenerationError
from nftdocker.nft.ir import (
    FAMILIES,
    BUILTIN_CHAINS,
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
    Match,
    Port,
    Rule,
    Ruleset,
    Snat,
    Verdict,
)
from nftdocker.nft.render import DEFAULT_TABLE, MARK_BITS, nft_ifname

_STATE_ORDER = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")
#: IP protocol numbers as the kernel lists them -> their iptables names
PROTO_NUMBERS = {"6": "tcp", "17": "udp", "132": "sctp", "1": "icmp", "58": "ipv6-icmp"}


def _fail(where: str, what: str) -> CompatError:
    return CompatError(f"{where}: {what}")


def _right_str(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    raise _fail(where, f"unsupported right-hand side {v!r}")


def _iface(key: str, right: Any, neg: bool, where: str) -> Iface:
    """``iifname``/``oifname`` as nft lists it: ``"n\\*"`` is the interface ``n*``, ``"n*"`` every name starting with ``n``."""
    text = _right_str(right, where)
    if text.endswith("\\*"):
        name, wildcard = text[:-2] + "*", False
    elif text.endswith("*"):
        name, wildcard = text[:-1], True
    else:
        name, wildcard = text, False
    try:
        exact = nft_ifname(name, wildcard) == text  # what nftdocker would write for it, or nothing it reads
    except GenerationError:
        exact = False
    if not exact:
        raise _fail(where, f"unsupported interface name {text!r}")
    return Iface("i" if key == "iifname" else "o", name, neg, wildcard)


def _prefix(v: Any, where: str):
    if isinstance(v, str):
        return ip_network(v)
    if isinstance(v, dict) and "prefix" in v:
        p = v["prefix"]
        return ip_network(f"{p['addr']}/{p['len']}")
    raise _fail(where, f"unsupported address {v!r}")


def parse_expr(exprs: list[dict[str, Any]], table_name: str, where: str) -> tuple[list[Match], Action]:
    """One rule's expression list -> IR matches and action."""
    matches: list[Match] = []
    action: Action | None = None
    l4: str | None = None
    mark: tuple[int, int] | None = None
    for e in exprs:
        if not isinstance(e, dict) or len(e) != 1:
            raise _fail(where, f"unsupported expression {e!r}")
        (kind, body), = e.items()
        if action is not None and kind != "counter":
            raise _fail(where, f"expression after the verdict: {kind}")
        if mark is not None and kind != "accept":
            raise _fail(where, f"a packet mark set before {kind!r}: nftdocker sets one only right before an accept")
        if kind == "mangle":
            mark = _mark_set(body, where)
        elif kind == "match":
            m = _parse_match(body, where)
            if m is None:
                continue
            if isinstance(m, L4Proto):
                l4 = m.proto
            matches.append(m)
        elif kind == "counter":
            continue
        elif kind in ("accept", "drop", "return"):
            action = Verdict(kind.upper(), mark)  # type: ignore[arg-type]
        elif kind in ("jump", "goto"):
            if kind == "goto":
                raise _fail(where, "goto has no iptables equivalent nftdocker writes")
            target = body["target"]
            tbl, _, chain = target.partition("-")
            if not chain or tbl not in BUILTIN_CHAINS:
                raise _fail(where, f"jump target {target!r} is not named <table>-<CHAIN>")
            if tbl != table_name:
                raise _fail(where, f"jump from table {table_name!r} to a chain of table {tbl!r}")
            action = Jump(chain)
        elif kind == "dnat":
            addr = ip_address(body["addr"]) if "addr" in body else None
            if addr is None:
                raise _fail(where, "dnat without an address")
            action = Dnat(addr, body.get("port"))
        elif kind == "snat":
            action = Snat(ip_address(body["addr"]))
        elif kind == "masquerade":
            if body:
                raise _fail(where, f"masquerade with options {body!r}")
            action = Masquerade()
        elif kind == "xt":
            raise _fail(where, "xt (x_tables compat) expression: not native nftables")
        else:
            raise _fail(where, f"unsupported statement {kind!r}")
    if action is None:
        raise _fail(where, "rule without a verdict or NAT statement")
    # `meta l4proto tcp` is implied by `tcp dport`: keep the explicit match only without a port.
    if any(isinstance(m, Port) for m in matches):
        matches = [m for m in matches if not isinstance(m, L4Proto)]
    return matches, action


def _mark_set(body: Any, where: str) -> tuple[int, int]:
    """``meta mark set`` as nft lists what :func:`render.mark_set_text` wrote: ``(VALUE, MASK)``.

    nft lists ``mark and ~MASK or VALUE`` as ``mark & (~MASK | VALUE) | VALUE`` and a full mask as
    ``VALUE``; VALUE lies within MASK, so MASK is ``~AND | VALUE``."""
    mark = {"meta": {"key": "mark"}}
    value = body.get("value") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("key") != mark:
        raise _fail(where, f"unsupported mangle statement {body!r}")
    if isinstance(value, int) and 0 < value <= MARK_BITS:
        return value, MARK_BITS
    try:
        (and_expr, v), = [value["|"]]
        (left, keep), = [and_expr["&"]]
    except (TypeError, KeyError, ValueError):
        raise _fail(where, f"unsupported meta mark value {value!r}") from None
    if left != mark or not all(isinstance(x, int) and 0 <= x <= MARK_BITS for x in (v, keep)) or not v or keep & v != v:
        raise _fail(where, f"unsupported meta mark value {value!r}")
    return v, (~keep & MARK_BITS) | v


def _parse_match(body: dict[str, Any], where: str) -> Match | None:
    op = body.get("op", "==")
    left = body.get("left")
    right = body.get("right")
    neg = op == "!="
    if op not in ("==", "!=", "in"):
        raise _fail(where, f"unsupported operator {op!r}")
    if not isinstance(left, dict) or len(left) != 1:
        raise _fail(where, f"unsupported match {body!r}")
    (lk, lv), = left.items()
    if lk == "meta":
        key = lv.get("key")
        if key in ("iifname", "oifname"):
            return _iface(key, right, neg, where)
        if key == "l4proto":
            if neg:
                raise _fail(where, "negated protocol match")
            p = str(right)
            return L4Proto(PROTO_NUMBERS.get(p, "ipv6-icmp" if p in ("icmpv6", "ipv6-icmp") else p))
        if key == "nfproto":
            return None
        raise _fail(where, f"unsupported meta key {key!r}")
    if lk == "payload":
        proto = lv.get("protocol")
        field = lv.get("field")
        if proto in ("ip", "ip6") and field in ("saddr", "daddr"):
            return Addr("s" if field == "saddr" else "d", _prefix(right, where), neg)
        if proto in ("tcp", "udp", "sctp") and field in ("sport", "dport"):
            if neg or not isinstance(right, int):
                raise _fail(where, f"unsupported port match {body!r}")
            return Port(proto, "s" if field == "sport" else "d", right)
        if proto in ("ip", "ip6") and field in ("protocol", "nexthdr"):
            return L4Proto(PROTO_NUMBERS.get(str(right), str(right)))
        raise _fail(where, f"unsupported payload match {proto} {field}")
    if lk == "fib":
        flags = lv.get("flags", [])
        if lv.get("result") == "type" and right == "local" and not neg and flags in (["daddr"], ["saddr"]):
            return AddrTypeLocal("d" if flags == ["daddr"] else "s")
        raise _fail(where, f"unsupported fib match {body!r}")
    if lk == "ct":
        if lv.get("key") != "state" or neg:
            raise _fail(where, f"unsupported ct match {body!r}")
        states = right if isinstance(right, list) else (right.get("set") if isinstance(right, dict) else [right])
        names = {str(s).upper() for s in states}
        return CtState(tuple(s for s in _STATE_ORDER if s in names))
    raise _fail(where, f"unsupported match on {lk!r}")


def rulesets_from_json(objs: Iterable[dict[str, Any]], table: str = DEFAULT_TABLE) -> dict[str, Ruleset]:
    """``nft -j list`` objects -> one Ruleset per family, for the named table only."""
    rulesets: dict[str, Ruleset] = {}
    for o in objs:
        if not isinstance(o, dict) or len(o) != 1:
            continue
        (kind, body), = o.items()
        if kind not in ("table", "chain", "rule"):
            continue
        fam = body.get("family")
        tname = body.get("name") if kind == "table" else body.get("table")
        if tname != table:
            continue
        if fam not in FAMILIES:
            raise CompatError(f"table {fam} {table}: nftdocker tables are 'ip' or 'ip6'")
        rs = rulesets.setdefault(fam, Ruleset(fam))
        if kind == "chain":
            name = body["name"]
            ipt_table, _, chain = name.partition("-")
            if ipt_table not in BUILTIN_CHAINS or not chain:
                raise CompatError(f"table {fam} {table}: chain {name!r} is not named <table>-<CHAIN>")
            c = Chain(ipt_table, chain)
            if c.builtin:
                if "hook" not in body:
                    raise CompatError(f"table {fam} {table}: chain {name!r} must be a base chain")
                c.policy = "DROP" if body.get("policy") == "drop" else "ACCEPT"
                if isinstance(body.get("prio"), int) and body["prio"] != c.base[2]:
                    c.prio = body["prio"]
            rs.chains[(ipt_table, chain)] = c
        elif kind == "rule":
            name = body["chain"]
            ipt_table, _, chain = name.partition("-")
            c2 = rs.chains.get((ipt_table, chain))
            if c2 is None:
                raise CompatError(f"table {fam} {table}: rule in unknown chain {name!r}")
            where = f"{fam} {table} {name} rule {len(c2.rules) + 1}"
            if "handle" in body:
                where += f" (handle {body['handle']})"
            matches, action = parse_expr(body.get("expr", []), ipt_table, where)
            c2.rules.append(Rule(tuple(matches), action))
    return rulesets
