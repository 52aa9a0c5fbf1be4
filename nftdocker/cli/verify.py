"""``nftdocker verify``: the same probes through the iptables rules and the nft table, in namespaces.

Exit statuses: 0 every probe agrees; 1 some probe differs (named in the output); 2 bad input;
3 the namespaces cannot be built (not root, a tool missing, the kernel refused).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from typing import Any

from nftdocker.cli.args import add_scenario_args, load_scenario, read_reference
from nftdocker.errors import UsageError


def register(sub: Any) -> None:
    """Add the ``verify`` subcommand to an argparse subparsers object."""
    v = sub.add_parser(
        "verify",
        help="prove with packets that the nft table behaves like the iptables rules",
        description="Build two identical Docker hosts in network namespaces, load iptables rules (iptables-legacy) "
        "into one and the generated nft table into the other, and run the same probes through both. "
        "Probes exercise the kernel rules only; docker-proxy is not run. Needs root.",
    )
    add_scenario_args(v)
    v.add_argument("--reference", metavar="FILE",
                   help="IPv4 rules for the legacy side: iptables-save text (or iptables -S / an iptablesdoc page); "
                   "default: nftdocker's own compat output")
    v.add_argument("--reference6", metavar="FILE", help="IPv6 rules for the legacy side (ip6tables-save text); default: compat output")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--keep", action="store_true", help="leave the namespaces in place and print how to remove them")
    v.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="per-probe timeout (default 1.0)")
    v.add_argument("--jobs", type=int, default=None, metavar="N", help="probes run at once per namespace (default 32)")
    v.add_argument("--coverage", action="store_true",
                   help="drop each rule of the nft table in turn and list the probes that notice (slow)")
    v.add_argument("--witness", action="store_true",
                   help="also run diff --semantic against the reference and send each witness packet through both sides")
    v.set_defaults(func=cmd_verify)


def _read_reference(path: str | None) -> tuple[str | None, str | None]:
    if path is None:
        return None, None
    text = read_reference(path)
    if re.search(r"^\*\w+\s*$", text, re.M) and re.search(r"^COMMIT\s*$", text, re.M):
        return text, path  # iptables-save text: restore it as it is
    from nftdocker.compat.reference import canonical, parse

    return "\n".join(canonical(parse(text, path))) + "\n", path


_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP as Ctrl-C, so the namespaces are removed; helpers that pyroute2 forks die as usual."""
    if os.getpid() != _MAIN_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


def cmd_verify(args: argparse.Namespace) -> int:
    from nftdocker.docker.generate import generate
    from nftdocker.verify.agent import DEFAULT_JOBS, DEFAULT_TIMEOUT
    from nftdocker.verify.report import removal_command
    from nftdocker.verify.run import verify

    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    jobs = DEFAULT_JOBS if args.jobs is None else args.jobs
    if not 0 < timeout <= 30:
        raise UsageError("--timeout must be between 0 and 30 seconds")
    if not 0 < jobs <= 256:
        raise UsageError("--jobs must be between 1 and 256")
    if args.coverage and (args.reference or args.reference6 or args.keep):
        raise UsageError("--coverage compares against nftdocker's own compat output; it takes no --reference or --keep")
    if args.coverage and args.witness:
        raise UsageError("--coverage and --witness do not go together")
    ref4, name4 = _read_reference(args.reference)
    ref6, name6 = _read_reference(args.reference6)
    gen = generate(load_scenario(args))
    semantic: dict[str, Any] = {}
    sent: list[Any] = []
    add_probes = None
    if args.witness:
        from nftdocker.compat.translate import compat_of
        from nftdocker.compat.semantic_diff import compare
        from nftdocker.verify.witness import plan_witnesses

        for fam, text, name in (("ip", ref4, name4), ("ip6", ref6, name6)):
            if text is not None:
                semantic[fam] = compare(compat_of(gen, fam, args.table), text, name or "reference", version=6 if fam == "ip6" else 4)
        found = [(fam, w) for fam, res in semantic.items() for w in res.witnesses]
        add_probes = lambda plan: sent.extend(plan_witnesses(found, plan, gen))  # noqa: E731

    # SIGTERM and SIGHUP clean up like Ctrl-C does.
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if args.coverage:
            return _coverage(args, gen, timeout, jobs)
        report = verify(gen, reference4=ref4, reference6=ref6, reference_names=(name4, name6),
                        table=args.table, timeout=timeout, jobs=jobs, keep=args.keep, add_probes=add_probes)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    checked = _witness_report(report, semantic, sent) if args.witness else None
    if args.json:
        print(json.dumps({**report.to_json(), **({"witness": checked[0]} if checked else {})}, indent=2))
    else:
        sys.stdout.write(report.text())
        if checked:
            sys.stdout.write("".join(l + "\n" for l in checked[1]))
    if report.kept and args.json:
        print(f"namespaces kept; remove them with: {removal_command(report.namespaces)}", file=sys.stderr)
    return 0 if report.ok and all(r.equivalent for r in semantic.values()) else 1


def _witness_report(report: Any, semantic: dict[str, Any], sent: list[Any]) -> tuple[dict[str, Any], list[str]]:
    """Each witness with the probes that sent it; whether packets confirm it; any contradiction."""
    rows = {r.probe.id: r for r in report.rows}
    lines: list[str] = []
    items = []
    for fam, res in semantic.items():
        lines.append(f"diff --semantic ({fam}): {res.summary()}")
    for k, wp in enumerate(sent, 1):
        differ = [rows[p.id] for p in wp.probes if p.id in rows and not rows[p.id].agree]
        status = "confirmed" if differ else ("cannot be sent" if not wp.probes else "NOT confirmed")
        lines.append(f"witness {k} ({wp.family} {wp.witness.table} {wp.witness.hook}): {wp.witness.text()}: {status}"
                     + (f" ({wp.reason})" if wp.reason else ""))
        for p in wp.probes:
            r = rows.get(p.id)
            if r is not None:
                lines.append(f"  {p.describe()}: legacy {r.legacy.text()}, nft {r.nft.text()}{'' if r.agree else ' (differ)'}")
        items.append({"family": wp.family, "witness": wp.witness.to_json(), "status": status, "reason": wp.reason,
                      "probes": [p.id for p in wp.probes], "differ": [r.probe.id for r in differ]})
    contradicted = [r for r in report.differences for fam, res in semantic.items()
                    if res.equivalent and (":" in r.probe.addr) == (fam == "ip6")]
    for r in contradicted:
        lines.append(f"CONTRADICTION: diff --semantic found the {'ip6' if ':' in r.probe.addr else 'ip'} rules equivalent, "
                     f"but probe {r.probe.describe()} differs")
    return ({"semantic": {fam: res.to_json() for fam, res in semantic.items()}, "witnesses": items,
             "contradictions": [r.probe.describe() for r in contradicted]}, lines)


def _coverage(args: argparse.Namespace, gen: Any, timeout: float, jobs: int) -> int:
    from nftdocker.verify.report import KERNEL_ONLY_NOTE
    from nftdocker.verify.run import coverage

    progress = None if args.json else (lambda line: print(line, flush=True))
    probes, rules = coverage(gen, table=args.table, timeout=timeout, jobs=jobs, progress=progress)
    missed = [r for r in rules if not r.caught_by]
    if args.json:
        print(json.dumps({
            "scenario": gen.scenario.source,
            "probes": [{"id": p.id, "kind": p.kind, "from": p.src, "to": p.target} for p in probes],
            "rules": [{"family": r.family, "chain": r.chain, "index": r.index, "rule": r.text, "origin": r.origin,
                       "caught_by": [p.id for p in r.caught_by]} for r in rules],
            "not_caught": len(missed),
        }, indent=2))
    else:
        print(f"{len(rules)} rules, {len(rules) - len(missed)} caught by some probe, {len(missed)} not caught "
              f"({KERNEL_ONLY_NOTE})")
    return 0
