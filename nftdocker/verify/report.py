"""verify's results: what each probe got on each side (:class:`Outcome`, :class:`Row`), the report
as text and JSON (:class:`Report`), and what ``--coverage`` found per rule (:class:`RuleCoverage`). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from nftdocker.verify.plan import Probe

KERNEL_ONLY_NOTE = "probes exercise the kernel rules only; docker-proxy is not run"


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


@dataclass
class RuleCoverage:
    family: str
    chain: str
    index: int
    text: str
    origin: str
    caught_by: list[Probe]
