"""``diff --semantic``: is a reordering harmless, and if not, which packet does it change?

Both sides are iptables rules (nftdocker's through compat, the reference as read by
:mod:`nftdocker.compat.reference`), compared per table and chain. Equivalent when every chain holds the
same rules (as a multiset) and every pair of rules whose relative order differs either cannot
match a common packet or has the same effect (the same target text, and targets without side
effects). Each other difference gets a witness: a concrete packet, computed from the rules and
evaluated through both sides' chains, that the two treat differently.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from nftdocker.nft.ir import BUILTIN_CHAINS, TABLE_ORDER
from nftdocker.compat.reference import Table, parse
from nftdocker.compat.chain_eval import Outcome, evaluate
from nftdocker.compat.semantic import SIDE_EFFECT_FREE, Hints, Packet, Rule, candidates, overlap, parse_rule

SIDES = ("reference", "nftdocker")
MAX_WITNESS_SEARCHES = 50
MAX_PAIRS = 1000  # per chain: listing reordered overlapping pairs stops there
_NO_IIF = ("OUTPUT", "POSTROUTING")
_NO_OIF = ("PREROUTING", "INPUT")


@dataclass
class Witness:
    packet: Packet
    table: str
    hook: str  # the built-in chain the packet was walked from
    outcomes: tuple[Outcome, Outcome]  # reference, nftdocker

    def text(self) -> str:
        r, n = self.outcomes
        s = (f"{self.packet.text()}: {SIDES[0]} {r.effect} ({r.where(self.table)}), "
             f"{SIDES[1]} {n.effect} ({n.where(self.table)})")
        unsure = "; ".join(u for u in (r.uncertain, n.uncertain) if u)
        return s + (f" [uncertain: passes {unsure}]" if unsure else "")

    def to_json(self) -> dict[str, Any]:
        return {"packet": self.packet.to_json(), "text": self.text(), "at": f"{self.table} {self.hook}",
                **{side: {"effect": o.effect, "where": o.where(self.table), **({"uncertain": o.uncertain} if o.uncertain else {})}
                   for side, o in zip(SIDES, self.outcomes)}}


@dataclass
class Difference:
    kind: str  # only-reference, only-nftdocker, order, policy, chain
    table: str
    chain: str
    rules: list[tuple[str, int, str]]  # (side, 1-based index, rule text)
    note: str = ""
    witness: Witness | None = None
    searched: bool = False

    def text(self) -> str:
        head = f"{self.table} {self.chain}: {self.note}"
        lines = [head] + [f"  {side} rule {i}: {t}" for side, i, t in self.rules]
        if self.witness:
            lines.append(f"  witness: {self.witness.text()}")
        elif self.searched:
            lines.append("  no witness: no candidate packet built from these rules is treated differently")
        elif self.kind in ("only-reference", "only-nftdocker", "order"):
            lines.append(f"  no witness searched (only the first {MAX_WITNESS_SEARCHES} differences are)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "table": self.table, "chain": self.chain, "note": self.note,
                "rules": [{"side": s, "index": i, "rule": t} for s, i, t in self.rules],
                "witness": self.witness.to_json() if self.witness else None}


@dataclass
class Result:
    tables: list[str]
    identical: bool
    moved: dict[str, int] = field(default_factory=dict)  # "filter DOCKER" -> rules moved
    differences: list[Difference] = field(default_factory=list)

    @property
    def equivalent(self) -> bool:
        return not self.differences

    @property
    def witnesses(self) -> list[Witness]:
        return [d.witness for d in self.differences if d.witness]

    def summary(self) -> str:
        n = sum(self.moved.values())
        where = ", ".join(f"{k} {v}" for k, v in self.moved.items())
        moved = f"{n} rule(s) moved" + (f" ({where})" if where else "")
        if self.equivalent:
            what = "identical" if self.identical else f"{moved}; no packet is treated differently"
            return f"equivalent: {', '.join(self.tables)}: {what}"
        w = len(self.witnesses)
        return f"different: {len(self.differences)} difference(s), {w} with a witness packet; {moved}"

    def text(self) -> str:
        return "".join(d.text() + "\n" for d in self.differences) + self.summary() + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"equivalent": self.equivalent, "identical": self.identical, "tables": self.tables,
                "moved": self.moved, "moved_total": sum(self.moved.values()),
                "differences": [d.to_json() for d in self.differences], "summary": self.summary()}


# ---------------------------------------------------------------------- one side's table


class _Side:
    def __init__(self, table: Table | None, cache: dict[str, Rule]) -> None:
        self.policies = dict(table.policies) if table else {}
        self.declared = set(table.chains) if table else set()
        self.texts: dict[str, list[str]] = {}
        for t in (table.rules if table else []):
            self.texts.setdefault(t.split(" ", 2)[1], []).append(t)
        self.cache = cache
        self._rules: dict[str, list[Rule]] | None = None
        self._pure: dict[str, bool] = {}

    def rule(self, text: str) -> Rule:
        r = self.cache.get(text)
        if r is None:
            r = self.cache[text] = parse_rule(text)
        return r

    @property
    def rules(self) -> dict[str, list[Rule]]:
        if self._rules is None:
            self._rules = {c: [self.rule(t) for t in ts] for c, ts in self.texts.items()}
        return self._rules

    def pure(self, target: str, seen: frozenset = frozenset()) -> bool:
        """Whether a target only decides (no side effect), following user chains."""
        name = target.split(" ", 1)[0]
        if name in SIDE_EFFECT_FREE:
            return True
        if name not in self.texts and name not in self.declared:
            return False
        if name in seen:
            return False
        if name not in self._pure:
            self._pure[name] = all(self.pure(self.rule(t).target, seen | {name}) for t in self.texts.get(name, []))
        return self._pure[name]

    def reaches(self, start: str) -> set[str]:
        out, todo = {start}, deque([start])
        while todo:
            for t in self.texts.get(todo.popleft(), []):
                tgt = self.rule(t).target_name
                if (tgt in self.texts or tgt in self.declared) and tgt not in out:
                    out.add(tgt)
                    todo.append(tgt)
        return out


# ---------------------------------------------------------------------- reordered pairs that matter


@dataclass
class _Item:
    rule: Rule
    pa: int  # 0-based position on the reference side
    pb: int  # on nftdocker's side
    keys: tuple = ()
    pure: bool = True


def _lis(seq: list[int]) -> int:
    tails: list[int] = []
    for x in seq:
        k = bisect_right(tails, x)
        if k == len(tails):
            tails.append(x)
        else:
            tails[k] = x
    return len(tails)


def _within(items: list[_Item], level: int, out: list) -> None:
    if len(items) < 2 or len(out) >= MAX_PAIRS:
        return
    if level == 5 or len(items) <= 8:
        _leaf(items, [], out)
        return
    buckets: dict[Any, list[_Item]] = {}
    loose: list[_Item] = []
    for it in items:
        k = it.keys[level]
        (loose if k is None else buckets.setdefault(k, [])).append(it)
    if not buckets:
        _within(loose, level + 1, out)
        return
    for b in buckets.values():
        _within(b, level + 1, out)
    _within(loose, level + 1, out)
    if loose:
        _cross(loose, [it for b in buckets.values() for it in b], level + 1, out)


def _cross(a: list[_Item], b: list[_Item], level: int, out: list) -> None:
    if not a or not b or len(out) >= MAX_PAIRS:
        return
    if level == 5 or len(a) * len(b) <= 64:
        _leaf(a, b, out)
        return
    ab: dict[Any, list[_Item]] = {}
    bb: dict[Any, list[_Item]] = {}
    al: list[_Item] = []
    bl: list[_Item] = []
    for items, buckets, loose in ((a, ab, al), (b, bb, bl)):
        for it in items:
            k = it.keys[level]
            (loose if k is None else buckets.setdefault(k, [])).append(it)
    for k, items in ab.items():
        if k in bb:
            _cross(items, bb[k], level + 1, out)
    _cross(al, b, level + 1, out)
    _cross([it for items in ab.values() for it in items], bl, level + 1, out)


def _leaf(a: list[_Item], b: list[_Item], out: list) -> None:
    """Pairs whose order differs (within ``a`` when ``b`` is empty, else across) and that conflict."""
    if b:
        tagged = sorted([(x.pa, 0, x) for x in a] + [(x.pa, 1, x) for x in b], key=lambda t: t[0])
        if len({x.rule.target for x in a} | {x.rule.target for x in b}) == 1:
            return
    else:
        tagged = sorted(((x.pa, 0, x) for x in a), key=lambda t: t[0])
        if len({x.rule.target for x in a}) == 1:
            return
    seen: list[list[tuple[int, int]]] = [[], []]
    order = [t[2] for t in tagged]
    for k, (_, side, x) in enumerate(tagged):
        other = seen[1 - side] if b else seen[0]
        j = bisect_right(other, (x.pb, len(order)))
        if len(out) >= MAX_PAIRS:
            return
        for _, idx in other[j:]:
            y = order[idx]
            if y.rule.target != x.rule.target and (not (x.pure and y.pure) or overlap(x.rule, y.rule)):
                out.append((y, x))
        insort(seen[side], (x.pb, k))


# ---------------------------------------------------------------------- the comparison


def compare(ours_text: str, reference_text: str, reference_name: str = "<reference>", ours_name: str = "nftdocker",
            version: int = 4) -> Result:
    """The semantic comparison of nftdocker's iptables text against the reference's."""
    ref = parse(reference_text, reference_name)
    ours = parse(ours_text, ours_name) if ours_text.strip() else {}
    names = [n for n in TABLE_ORDER if n in ref]
    res = Result(names, identical=all(_same(ref.get(n), ours.get(n)) for n in names))
    if res.identical:
        return res
    cache: dict[str, Rule] = {}
    searches = 0
    for name in names:
        sides = (_Side(ref.get(name), cache), _Side(ours.get(name), cache))
        diffs = _compare_table(name, sides, res)
        hints: Hints | None = None
        for d in diffs:
            if searches < MAX_WITNESS_SEARCHES and d.kind in ("only-reference", "only-nftdocker", "order"):
                searches += 1
                if hints is None:
                    hints = Hints.of(list(cache.values()))
                d.witness = _witness(name, sides, d, hints, version)
                d.searched = True
        res.differences.extend(diffs)
    return res


def _same(a: Table | None, b: Table | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.canonical() == b.canonical()


def _compare_table(name: str, sides: tuple[_Side, _Side], res: Result) -> list[Difference]:
    ref, ours = sides
    diffs: list[Difference] = []
    for c in BUILTIN_CHAINS[name]:
        pa, pb = ref.policies.get(c, "ACCEPT"), ours.policies.get(c, "ACCEPT")
        if pa != pb:
            diffs.append(Difference("policy", name, c, [], f"policy {pa} in {SIDES[0]}, {pb} in {SIDES[1]}"))
    user = (ref.declared | set(ref.texts)) ^ (ours.declared | set(ours.texts))
    for c in sorted(user - set(BUILTIN_CHAINS[name])):
        side = SIDES[0] if c in ref.declared or c in ref.texts else SIDES[1]
        diffs.append(Difference("chain", name, c, [], f"chain only in {side}"))
    chains = list(dict.fromkeys([*BUILTIN_CHAINS[name], *sorted(set(ref.texts) | set(ours.texts))]))
    for c in chains:
        a, b = ref.texts.get(c, []), ours.texts.get(c, [])
        if a != b:
            diffs.extend(_compare_chain(name, c, a, b, sides, res))
    return diffs


def _occurrences(texts: list[str]) -> dict[tuple[str, int], int]:
    seen: Counter[str] = Counter()
    out = {}
    for i, t in enumerate(texts):
        out[(t, seen[t])] = i
        seen[t] += 1
    return out


def _compare_chain(table: str, chain: str, a: list[str], b: list[str], sides: tuple[_Side, _Side],
                   res: Result) -> list[Difference]:
    ref, ours = sides
    oa, ob = _occurrences(a), _occurrences(b)
    diffs = []
    for key, i in oa.items():
        if key not in ob:
            diffs.append(Difference("only-reference", table, chain, [(SIDES[0], i + 1, key[0])], f"rule only in {SIDES[0]}"))
    for key, i in ob.items():
        if key not in oa:
            diffs.append(Difference("only-nftdocker", table, chain, [(SIDES[1], i + 1, key[0])], f"rule only in {SIDES[1]}"))
    items = []
    for key, i in oa.items():
        j = ob.get(key)
        if j is not None:
            r = ref.rule(key[0])
            items.append(_Item(r, i, j))
    items.sort(key=lambda it: it.pa)
    moved = len(items) - _lis([it.pb for it in items])
    if not moved:
        return diffs
    res.moved[f"{table} {chain}"] = moved
    for it in items:
        it.pure = ref.pure(it.rule.target) and ours.pure(it.rule.target)
        it.keys = it.rule.keys() if it.pure else (None,) * 5
    pairs: list[tuple[_Item, _Item]] = []
    _within(items, 0, pairs)
    for x, y in sorted(pairs, key=lambda p: (min(p[0].pa, p[1].pa), max(p[0].pa, p[1].pa))):
        first, second = (x, y) if x.pa < y.pa else (y, x)
        note = (f"order differs between rules that overlap: {first.rule.target} is first in {SIDES[0]}, "
                f"{second.rule.target} in {SIDES[1]}")
        diffs.append(Difference("order", table, chain,
                                [(SIDES[0], first.pa + 1, first.rule.text), (SIDES[0], second.pa + 1, second.rule.text),
                                 (SIDES[1], second.pb + 1, second.rule.text), (SIDES[1], first.pb + 1, first.rule.text)],
                                note))
    if len(pairs) >= MAX_PAIRS:
        diffs.append(Difference("order-more", table, chain, [],
                                f"more overlapping pairs in another order: the listing stops at {MAX_PAIRS}"))
    return diffs


def _witness(table: str, sides: tuple[_Side, _Side], d: Difference, hints: Hints, version: int) -> Witness | None:
    rules = [sides[0].rule(t) for _, _, t in d.rules]
    box = rules[0].box
    for r in rules[1:]:
        box = box & r.box
    hooks = [h for h in BUILTIN_CHAINS[table] if any(d.chain in s.reaches(h) for s in sides)]
    pos_iif = any(not neg for _, neg in box.iif)
    pos_oif = any(not neg for _, neg in box.oif)
    tried: set[Packet] = set()
    for p in candidates(box, hints, version):
        for hook in hooks:
            if (hook in _NO_IIF and pos_iif) or (hook in _NO_OIF and pos_oif):
                continue
            q = replace(p, iif=None if hook in _NO_IIF else p.iif, oif=None if hook in _NO_OIF else p.oif)
            if (q, hook) in tried:  # type: ignore[comparison-overlap]
                continue
            tried.add((q, hook))  # type: ignore[arg-type]
            outs = tuple(evaluate(s.rules, s.policies, hook, q) for s in sides)
            if outs[0].effect != outs[1].effect:
                return Witness(q, table, hook, outs)  # type: ignore[arg-type]
    return None
