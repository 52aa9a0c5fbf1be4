"""``apply``, ``remove`` and ``show``: nftdocker's tables in the kernel (a network namespace or the current one).

    nftdocker apply SCENARIO [--netns NAME] [--check] [--replace] [--sysctls] [--accept-mark V/M]
                    [--user-rules FILE] [--json]
    nftdocker remove [--netns NAME] [--table NAME] [--json]
    nftdocker show [--netns NAME] [--table NAME] [--format nft|json|iptables] [--ipv6] [-o FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nftdocker.cli.args import accept_mark_of, add_accept_mark_arg, add_scenario_args, load_scenario
from nftdocker.cli.output import write_output
from nftdocker.nft.render import DEFAULT_TABLE


def register(sub: Any) -> None:
    """Add ``apply``, ``remove`` and ``show`` to the CLI's subparsers."""
    a = sub.add_parser("apply", help="load the table(s) into the kernel in one transaction")
    add_scenario_args(a)
    a.add_argument("--netns", metavar="NAME", help="network namespace (ip netns name); default: the current one")
    a.add_argument("--check", action="store_true", help="have the kernel validate the transaction; change nothing")
    a.add_argument("--replace", action="store_true", help="replace the whole table even when it is loaded (default: send only the difference)")
    a.add_argument("--sysctls", action="store_true", help="also set what Docker sets beside its rules (forwarding, route_localnet, bridge-nf-call, hairpin)")
    add_accept_mark_arg(a)
    a.add_argument("--user-rules", metavar="FILE", help="nft rule statements for filter-DOCKER-USER, one a line (README: Your own rules, from a file)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_apply)

    rm = sub.add_parser("remove", help="delete nftdocker's tables and nothing else")
    rm.add_argument("--netns", metavar="NAME")
    rm.add_argument("--table", default=DEFAULT_TABLE, metavar="NAME")
    rm.add_argument("--json", action="store_true")
    rm.set_defaults(func=cmd_remove)

    sh = sub.add_parser("show", help="what is loaded now")
    sh.add_argument("--netns", metavar="NAME")
    sh.add_argument("--table", default=DEFAULT_TABLE, metavar="NAME")
    sh.add_argument("--format", choices=("nft", "json", "iptables"), default="nft")
    sh.add_argument("--ipv6", action="store_true", help="with --format iptables: the ip6tables-save form")
    sh.add_argument("-o", "--output", metavar="FILE")
    sh.set_defaults(func=cmd_show)


def cmd_apply(args: argparse.Namespace) -> int:
    from nftdocker.nft import incremental
    from nftdocker.host import user_rules

    mark = accept_mark_of(args)
    rules = user_rules.load(args.user_rules) if args.user_rules else None
    res = incremental.apply_scenario(load_scenario(args), args.netns, args.table, check=args.check, replace=args.replace,
                                     sysctls=args.sysctls, accept_mark=mark, user_rules=rules)
    report: dict[str, Any] = {
        "checked_only": res.checked,
        "netns": args.netns,
        "tables": [f"{f} {args.table}" for f in res.families],
        "removed": [f"{f} {args.table}" for f in res.removed],
        "commands": res.commands,
        "mode": res.mode,
        "kept_user_rules": res.kept_user_rules,
        "generation": res.generation,
        "replayed_containers": res.replayed,
        "warnings": getattr(args, "warnings", []),
    }
    if res.sysctls is not None:
        report["sysctls"] = res.sysctls
    if mark is not None:
        from nftdocker.host.accept_mark import host_rule

        report["accept_mark"] = {"value": mark[0], "mask": mark[1], "host_rule": host_rule(mark)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    where = f" in netns {args.netns}" if args.netns else ""
    verb = "kernel accepted (nothing changed)" if res.checked else "applied"
    how = {"incremental": "only the difference", "noop": "already up to date", "full": "full replace"}.get(report["mode"], report["mode"])
    if res.generation == "resumed" and res.replayed:
        how += f"; {res.replayed} new container(s) replayed on the last apply's state"
    print(f"{verb}: table {', table '.join(report['tables'])}{where} ({res.commands} commands, one transaction; {how})")
    for fam, n in res.kept_user_rules.items():
        if n:
            print(f"kept {n} user rule(s) in {fam} filter-DOCKER-USER")
    for fam in res.removed:
        print(f"removed: table {fam} {args.table} (Docker writes no rules for it)")
    for line in report.get("sysctls", []):
        print(f"sysctl: {line}")
    if mark is not None:
        print(f"accepted container traffic is marked; the host firewall's forward chain needs: {report['accept_mark']['host_rule']}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from nftdocker.nft import kernel

    fams = kernel.remove(args.netns, args.table)
    if args.json:
        print(json.dumps({"removed": [f"{f} {args.table}" for f in fams]}))
    elif fams:
        print("removed: " + ", ".join(f"table {f} {args.table}" for f in fams))
    else:
        print(f"nothing to remove: no table {args.table}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from nftdocker.nft import kernel
    from nftdocker.compat.translate import compat_text

    if args.format == "nft":
        write_output(args, kernel.list_text(args.netns, args.table))
    elif args.format == "json":
        write_output(args, json.dumps({"nftables": kernel.list_objects(args.netns, args.table)}, indent=2) + "\n")
    else:
        objs = kernel.list_objects(args.netns, args.table)
        write_output(args, compat_text(objs, "ip6" if args.ipv6 else "ip", args.table))
    return 0
