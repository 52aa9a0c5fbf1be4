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

from .errors import UsageError


def register(sub: Any) -> None:
    """Add the ``verify`` subcommand to an argparse subparsers object."""
    from .cli import add_scenario_args

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
    v.set_defaults(func=cmd_verify)


def _read_reference(path: str | None) -> tuple[str | None, str | None]:
    if path is None:
        return None, None
    from .cli import read_reference

    text = read_reference(path)
    if re.search(r"^\*\w+\s*$", text, re.M) and re.search(r"^COMMIT\s*$", text, re.M):
        return text, path  # iptables-save text: restore it as it is
    from .reference import canonical, parse

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
    from . import verify as vf
    from .cli import load_scenario
    from .generate import generate

    timeout = vf.DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    jobs = vf.DEFAULT_JOBS if args.jobs is None else args.jobs
    if not 0 < timeout <= 30:
        raise UsageError("--timeout must be between 0 and 30 seconds")
    if not 0 < jobs <= 256:
        raise UsageError("--jobs must be between 1 and 256")
    if args.coverage and (args.reference or args.reference6 or args.keep):
        raise UsageError("--coverage compares against nftdocker's own compat output; it takes no --reference or --keep")
    ref4, name4 = _read_reference(args.reference)
    ref6, name6 = _read_reference(args.reference6)
    gen = generate(load_scenario(args))

    # SIGTERM and SIGHUP clean up like Ctrl-C does.
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if args.coverage:
            return _coverage(args, gen, timeout, jobs)
        report = vf.verify(gen, reference4=ref4, reference6=ref6, reference_names=(name4, name6),
                           table=args.table, timeout=timeout, jobs=jobs, keep=args.keep)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        sys.stdout.write(report.text())
    if report.kept and args.json:
        print(f"namespaces kept; remove them with: {vf.removal_command(report.namespaces)}", file=sys.stderr)
    return 0 if report.ok else 1


def _coverage(args: argparse.Namespace, gen: Any, timeout: float, jobs: int) -> int:
    from . import verify as vf

    progress = None if args.json else (lambda line: print(line, flush=True))
    probes, rules = vf.coverage(gen, table=args.table, timeout=timeout, jobs=jobs, progress=progress)
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
              f"({vf.KERNEL_ONLY_NOTE})")
    return 0
