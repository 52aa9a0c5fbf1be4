"""A small evaluator of one iptables table's chains for one packet (what ``diff --semantic``
uses to keep only witnesses the two sides really treat differently).

It follows jumps, gotos and RETURN within the table; a rule the boxes cannot decide (opaque) or a
target it does not know (other than LOG) is passed and named in the outcome as uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nftdocker.compat.semantic import TERMINAL, Packet, Rule, matches


@dataclass(frozen=True)
class Outcome:
    """Where a packet's walk through one table's chains ended."""

    effect: str  # "ACCEPT", "DROP", "DNAT --to-destination ...": what happens to the packet
    chain: str
    rule: int | None  # 1-based; None: the built-in chain's policy
    uncertain: str = ""  # an opaque rule or unknown target the walk passed

    def where(self, table: str) -> str:
        return f"{table} {self.chain} " + (f"rule {self.rule}" if self.rule else "policy")


def evaluate(chains: dict[str, list[Rule]], policies: dict[str, str], start: str, p: Packet) -> Outcome:
    """Walk ``p`` through ``start`` (a built-in chain), following jumps within the table."""
    unsure: list[str] = []
    res = _walk(chains, start, p, unsure, 0)
    if res is None or res.effect == "RETURN":
        res = Outcome(policies.get(start, "ACCEPT"), start, None)
    return replace(res, uncertain="; ".join(dict.fromkeys(unsure)))


def _walk(chains: dict[str, list[Rule]], name: str, p: Packet, unsure: list[str], depth: int) -> Outcome | None:
    if depth > 32:
        unsure.append("jumps nested deeper than 32")
        return None
    for i, r in enumerate(chains.get(name, ()), 1):
        m = matches(r.box, p)
        if m is None:
            unsure.append(f"{name} rule {i} ({', '.join(r.box.opaque)})")
            continue
        if not m:
            continue
        t = r.target_name
        if t == "RETURN":
            return Outcome("RETURN", name, i)
        if t in TERMINAL:
            return Outcome(r.target, name, i)
        if t in chains:
            sub = _walk(chains, t, p, unsure, depth + 1)
            if sub is not None and sub.effect != "RETURN":
                return sub
            if r.goto:
                return Outcome("RETURN", name, i)
            continue
        if t != "LOG":
            unsure.append(f"{name} rule {i} (target {t})")
    return None
