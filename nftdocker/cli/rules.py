"""``render``, ``compat`` and ``diff``: a scenario's rules as text (nft, libnftables JSON,
iptables-save) and compared with iptables rules; no kernel needed (``compat --netns`` reads one).

    nftdocker render SCENARIO [--format nft|json] [--explain] [--accept-mark V/M] [-o FILE]
    nftdocker compat SCENARIO [--ipv6] [-o FILE]     nftdocker compat --netns NAME [--ipv6]
    nftdocker diff SCENARIO REFERENCE [--ipv6] [--semantic] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nftdocker.cli.args import accept_mark_of, add_accept_mark_arg, add_scenario_args, load_scenario, read_reference
from nftdocker.cli.output import write_output


def register(sub: Any) -> None:
    """Add ``render``, ``compat`` and ``diff`` to the CLI's subparsers."""
    r = sub.add_parser("render", help="print the nft table(s) for a scenario")
    add_scenario_args(r)
    r.add_argument("--format", choices=("nft", "json"), default="nft")
    r.add_argument("--explain", action="store_true", help="add each rule's origin (the moby function) as an nft comment")
    add_accept_mark_arg(r)
    r.add_argument("-o", "--output", metavar="FILE")
    r.set_defaults(func=cmd_render)

    c = sub.add_parser("compat", help="print the iptables-save form of the nft table")
    add_scenario_args(c)
    c.add_argument("--ipv6", action="store_true", help="ip6tables-save form")
    c.add_argument("--netns", metavar="NAME", help="without SCENARIO: translate the table loaded in this namespace")
    c.add_argument("-o", "--output", metavar="FILE")
    c.set_defaults(func=cmd_compat)

    d = sub.add_parser("diff", help="diff the compat form against iptables rules in REFERENCE")
    add_scenario_args(d)
    d.add_argument("reference", metavar="REFERENCE", help="iptables-save, iptables -S or an iptablesdoc page")
    d.add_argument("--ipv6", action="store_true")
    d.add_argument("--json", action="store_true")
    d.add_argument("--semantic", action="store_true",
                   help="compare what the rules do: exit 0 when only harmless reorderings differ, else a witness packet per difference")
    d.set_defaults(func=cmd_diff)


def cmd_render(args: argparse.Namespace) -> int:
    from nftdocker.host.accept_mark import apply as accept_marks
    from nftdocker.docker.generate import generate
    from nftdocker.nft.kernel import check_table_name
    from nftdocker.nft.render import render_json, render_nft

    check_table_name(args.table)
    mark = accept_mark_of(args)
    gen = accept_marks(generate(load_scenario(args)), mark)
    rss = gen.rulesets
    if args.format == "json":
        write_output(args, render_json(rss, args.table))
    else:
        write_output(args, render_nft(rss, args.table, comments=args.explain))
    return 0


def cmd_compat(args: argparse.Namespace) -> int:
    from nftdocker.compat.translate import compat_text

    family = "ip6" if args.ipv6 else "ip"
    if args.scenario or args.docker_host:
        from nftdocker.compat.translate import compat_of
        from nftdocker.docker.generate import generate

        write_output(args, compat_of(generate(load_scenario(args)), family, args.table))
    else:
        from nftdocker.nft.kernel import list_objects

        write_output(args, compat_text(list_objects(args.netns, args.table), family, args.table))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from nftdocker.compat.translate import compat_of
    from nftdocker.docker.generate import generate
    from nftdocker.compat.reference import diff

    ref_text = read_reference(args.reference)
    ours = compat_of(generate(load_scenario(args)), "ip6" if args.ipv6 else "ip", args.table)
    if args.semantic:
        from nftdocker.compat.semantic_diff import compare

        res = compare(ours, ref_text, args.reference, version=6 if args.ipv6 else 4)
        print(json.dumps(res.to_json(), indent=2) if args.json else res.text(), end="\n" if args.json else "")
        return 0 if res.equivalent else 1
    lines, tables = diff(ours, ref_text, args.reference, f"nftdocker compat {args.scenario or args.docker_host}")
    if args.json:
        print(json.dumps({"identical": not lines, "tables": tables, "diff": lines,
                          "warnings": getattr(args, "warnings", [])}, indent=2))
    else:
        for l in lines:
            print(l)
        if not lines:
            print(f"identical: {', '.join(tables)} ({args.reference})", file=sys.stderr)
    return 1 if lines else 0
