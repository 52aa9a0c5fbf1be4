"""The command line: the only place that prints errors or picks exit statuses.

Exit statuses: 0 success; 1 differences found (diff, verify); 2 bad input or usage;
3 the kernel, the host or the Docker Engine refused or is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import os
import stat
import sys
import tempfile
from typing import Any, Callable, Sequence

from nftdocker import DOCKER_ENGINE_VERSION, __version__
from nftdocker.errors import EnvironmentProblem, NftdockerError, UsageError

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on usage errors, as we want
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _write(args: argparse.Namespace, text: str) -> None:
    """To ``-o FILE`` (see ``write_file``) or standard output."""
    out = getattr(args, "output", None)
    if out and out != "-":
        write_file(out, text)
    else:
        sys.stdout.write(text)


#: A failure of the host while writing (exit 3); any other failure to write -o FILE is the path's (exit 2).
_HOST_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def write_file(path: str, text: str) -> None:
    """Replace ``path`` whole and atomically with ``text``.

    The text goes to a uniquely named temporary file in the same directory, created exclusively
    (so nothing planted there, a symlink above all, is followed or overwritten), then renamed onto
    ``path``; a symlink at ``path`` to a regular file (or to nothing) is itself replaced, not
    followed. On any failure the temporary file is removed and ``path`` is left as it was. A
    directory or anything else that is not a regular file (a device, FIFO, socket: ``/dev/null``
    must not become a file), a missing directory or a permission refused is the path's fault
    (UsageError, exit 2); no space or an I/O error is the host's (EnvironmentProblem, exit 3).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # nothing there (or unreachable: the temporary file's creation says why)
    if mode is not None and stat.S_ISDIR(mode):
        raise UsageError(f"{path}: is a directory; -o takes a file name")
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(f"{path}: is not a regular file; -o replaces a regular file (give - for standard output)")
    directory = os.path.dirname(path) or "."
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(f.fileno(), 0o666 & ~mask)  # the mode a plain open(path, "w") would give
            f.write(text.encode("utf-8"))
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise UsageError(f"{path}: is a directory; -o takes a file name") from None
        if e.errno in _HOST_WRITE_ERRNOS:
            raise EnvironmentProblem(f"{path}: cannot write: {e.strerror}") from None
        raise UsageError(f"{path}: cannot write: {e.strerror}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def read_reference(path: str) -> str:
    """A reference file's text (iptables rules, whatever the encoding), read by ``inputs.read_bytes``."""
    from nftdocker.inputs import read_bytes

    return read_bytes(path).decode("utf-8", errors="replace")


def add_live_args(p: argparse.ArgumentParser, title: str, docker_host_help: str) -> None:
    """``--docker-host`` and what a live daemon does not tell: ``[daemon]`` and ``[host]``."""
    g = p.add_argument_group(title)
    g.add_argument("--docker-host", metavar="URL", help=docker_host_help)
    g.add_argument("--daemon-config", metavar="FILE",
                   help="dockerd's daemon.json (default: /etc/docker/daemon.json if it exists)")
    g.add_argument("--ipv4-forwarding", choices=("true", "false"),
                   help="[host] ipv4-forwarding: net.ipv4.ip_forward was 1 when dockerd started (default true)")
    g.add_argument("--ipv6-forwarding", choices=("true", "false"),
                   help="[host] ipv6-forwarding: net.ipv6.conf.all.forwarding was 1 (default false)")


def add_accept_mark_arg(p: argparse.ArgumentParser) -> None:
    """``--accept-mark VALUE[/MASK]`` (see :mod:`accept_mark`); :func:`accept_mark_of` reads it."""
    p.add_argument("--accept-mark", metavar="VALUE[/MASK]",
                   help="set this packet mark (only MASK's bits) on the container traffic the filter rules accept, "
                        "so that a drop-policy host firewall can accept it with one rule: meta mark & MASK == VALUE accept")


def accept_mark_of(args: argparse.Namespace) -> tuple[int, int] | None:
    """``--accept-mark`` as (VALUE, MASK), or None; a bad one is a UsageError (one line, exit 2)."""
    from nftdocker.host.accept_mark import parse

    return None if args.accept_mark is None else parse(args.accept_mark)


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", metavar="SCENARIO", help="scenario file (TOML); or --docker-host")
    p.add_argument("--table", default="nftdocker", metavar="NAME", help="nft table name (default: nftdocker)")
    add_live_args(p, "live Docker Engine instead of a scenario file", "read networks and containers from this Docker Engine")


def live_scenario(args: argparse.Namespace):
    """The Scenario of the Engine at ``--docker-host`` (with ``--daemon-config`` and the forwarding flags).

    Its warnings (an Engine that is not 28.x) are printed, one line each, on standard error and kept
    in ``args.warnings`` for the command's ``--json`` output."""
    from nftdocker.live.engine import scenario_from_live

    args.warnings = []
    s = scenario_from_live(args.docker_host, args.daemon_config, args.ipv4_forwarding, args.ipv6_forwarding,
                           warnings=args.warnings)
    for line in args.warnings:
        print(f"nftdocker: warning: {line}", file=sys.stderr)
    return s


def load_scenario(args: argparse.Namespace):
    from nftdocker.scenario import load as sc

    if getattr(args, "docker_host", None):
        if args.scenario:
            raise UsageError("give either SCENARIO or --docker-host, not both")
        return live_scenario(args)
    if not args.scenario:
        raise UsageError("give a SCENARIO file or --docker-host URL")
    return sc.load(args.scenario)


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
        _write(args, render_json(rss, args.table))
    else:
        _write(args, render_nft(rss, args.table, comments=args.explain))
    return 0


def cmd_compat(args: argparse.Namespace) -> int:
    from nftdocker.compat.translate import compat_text

    family = "ip6" if args.ipv6 else "ip"
    if args.scenario or args.docker_host:
        from nftdocker.compat.translate import compat_of
        from nftdocker.docker.generate import generate

        _write(args, compat_of(generate(load_scenario(args)), family, args.table))
    else:
        from nftdocker.nft.kernel import list_objects

        _write(args, compat_text(list_objects(args.netns, args.table), family, args.table))
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
        _write(args, kernel.list_text(args.netns, args.table))
    elif args.format == "json":
        _write(args, json.dumps({"nftables": kernel.list_objects(args.netns, args.table)}, indent=2) + "\n")
    else:
        objs = kernel.list_objects(args.netns, args.table)
        _write(args, compat_text(objs, "ip6" if args.ipv6 else "ip", args.table))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nftdocker", description=f"Docker {DOCKER_ENGINE_VERSION}'s bridge firewall as native nftables.")
    p.add_argument("--version", action="version",
                   version=f"nftdocker {__version__} (the bridge-network firewall of Docker Engine {DOCKER_ENGINE_VERSION})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

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
    rm.add_argument("--table", default="nftdocker", metavar="NAME")
    rm.add_argument("--json", action="store_true")
    rm.set_defaults(func=cmd_remove)

    sh = sub.add_parser("show", help="what is loaded now")
    sh.add_argument("--netns", metavar="NAME")
    sh.add_argument("--table", default="nftdocker", metavar="NAME")
    sh.add_argument("--format", choices=("nft", "json", "iptables"), default="nft")
    sh.add_argument("--ipv6", action="store_true", help="with --format iptables: the ip6tables-save form")
    sh.add_argument("-o", "--output", metavar="FILE")
    sh.set_defaults(func=cmd_show)

    from nftdocker.cli import live as live_cli
    from nftdocker.cli import verify as verify_cli

    verify_cli.register(sub)
    live_cli.register(sub)
    return p


ONE_SHOT = {cmd_render, cmd_compat, cmd_diff, cmd_apply, cmd_remove, cmd_show}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if args.func in ONE_SHOT:
        # A one-shot command builds one host's model and rules (hundreds of thousands of objects,
        # no reference cycles) and exits: the cyclic collector would only walk that heap again and
        # again. Long-running ones (watch, verify's harness) keep it.
        gc.disable()
    try:
        return args.func(args)
    except NftdockerError as e:
        print(f"nftdocker: {e.message}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("nftdocker: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
