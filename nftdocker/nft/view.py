"""The kernel's view of a table, and the generated table in the same terms.

A :class:`KTable` is one family's table as the kernel holds it: its handle, its chains in
creation order (header, policy) and, per rule, its *key* (the canonical nft text of the rule as
:func:`render.rule_text` writes it: the kernel's JSON goes through the rule IR) and its handle.
:func:`wanted` gives the generated rulesets' chains with the keys of their rules, so the two are
compared as strings. A rule the IR cannot express (the user's, a counter, a comment) gets a key no
generated rule has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nftdocker.nft.parse import parse_expr
from nftdocker.errors import CompatError
from nftdocker.nft.ir import BUILTIN_CHAINS, Chain, Rule, Ruleset
from nftdocker.nft.render import chain_header, nft_chains, policy_word, rule_text
from nftdocker.nft.table import USER_CHAIN, key_of_comment


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class KChain:
    """One chain as the kernel holds it: header, and per rule its key (canonical nft text) and handle."""

    name: str
    base: tuple[str, str, int] | None = None  # type, hook, priority
    policy: str | None = None  # accept / drop (base chains)
    keys: list[str] = field(default_factory=list)
    handles: list[int | None] = field(default_factory=list)


@dataclass
class KTable:
    family: str
    handle: int | None
    chains: dict[str, KChain] = field(default_factory=dict)  # in the kernel's (creation) order
    #: sets, maps and stateful objects in the table (all the user's: nftdocker makes none)
    user_objects: int = 0

    def rule_count(self) -> int:
        return sum(len(c.keys) for c in self.chains.values())

    def to_json(self) -> dict[str, Any]:
        return {"handle": self.handle, "user_objects": self.user_objects,
                "chains": [[c.name, list(c.base) if c.base else None, c.policy, c.keys, c.handles] for c in self.chains.values()]}

    @classmethod
    def from_json(cls, family: str, d: dict[str, Any]) -> KTable:
        t = cls(family, d.get("handle"), user_objects=d.get("user_objects", 0) if is_int(d.get("user_objects", 0)) else 0)
        for name, base, policy, keys, handles in d["chains"]:
            t.chains[name] = KChain(name, tuple(base) if base else None, policy, list(keys), list(handles))  # type: ignore[arg-type]
        return t


# (a ``mangle`` is parsed: nftdocker's own accepts set the packet mark with --accept-mark)
_FOREIGN_STMTS = ("counter", "comment", "log", "limit", "meta", "quota", "xt", "notrack", "queue")


def _key_of(body: dict[str, Any], family: str, stub: Ruleset) -> str:
    """The canonical text of a listed rule, or a key no generated rule has (for anything else)."""
    handle = body.get("handle")
    foreign = f"\0foreign rule {handle}"
    chain = str(body.get("chain", ""))
    if chain == USER_CHAIN and isinstance(body.get("comment"), str):
        tagged = key_of_comment(body["comment"])  # one of the --user-rules file's rules
        if tagged is not None:
            return tagged
    ipt_table, _, name = chain.partition("-")
    if ipt_table not in BUILTIN_CHAINS or not name or "comment" in body:
        return foreign
    exprs = body.get("expr", [])
    for e in exprs:
        if isinstance(e, dict) and (set(e) & set(_FOREIGN_STMTS) - {"meta"} or
                                    ("match" in e and "nfproto" in json.dumps(e["match"].get("left", "")))):
            return foreign
    try:
        matches, action = parse_expr(exprs, ipt_table, chain)
        return rule_text(Rule(tuple(matches), action), stub, ipt_table)
    except (CompatError, KeyError, ValueError, TypeError, AttributeError):
        return foreign


def table_of_listing(family: str, objs: list[dict[str, Any]]) -> KTable:
    """``nft -j -a list table`` objects (with handles) as a :class:`KTable`."""
    kt = KTable(family, None)
    stub = Ruleset(family)  # type: ignore[arg-type]
    for o in objs:
        if "table" in o:
            kt.handle = o["table"].get("handle")
        elif not {"chain", "rule", "metainfo"} & set(o):
            kt.user_objects += 1
        elif "chain" in o:
            c = o["chain"]
            base = (c["type"], c["hook"], int(c["prio"])) if "hook" in c else None
            kt.chains[c["name"]] = KChain(c["name"], base, c.get("policy") if base else None)
        elif "rule" in o:
            r = o["rule"]
            kc = kt.chains.get(r.get("chain"))
            if kc is None:
                continue
            kc.keys.append(_key_of(r, family, stub))
            kc.handles.append(r.get("handle"))
    return kt


# ---------------------------------------------------------------------- the generated table, as keys


@dataclass
class WChain:
    name: str
    chain: Chain
    header: str | None
    base: tuple[str, str, int] | None
    policy: str | None
    keys: list[str]


def wanted(rs: Ruleset) -> dict[str, WChain]:
    """The generated chains in ``nft_chains`` order, with their rules' keys."""
    out: dict[str, WChain] = {}
    for c in nft_chains(rs):
        base = policy = None
        if c.builtin:
            base = c.base
            policy = policy_word(c.policy)
        out[c.nft_name] = WChain(c.nft_name, c, chain_header(c), base, policy, [rule_text(r, rs, c.table) for r in c.rules])
    return out
