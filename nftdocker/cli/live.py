"""The ``export`` and ``watch`` subcommands (a live Docker Engine); ``register(sub)`` adds them.

    nftdocker export [--docker-host URL] [--daemon-config FILE] [--ipv4-forwarding B] [-o FILE]
    nftdocker watch  [--docker-host URL] [--daemon-config FILE] [--netns NAME] [--table NAME] [--sysctls]
                     [--user-rules FILE] [--json]
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from nftdocker.cli.args import accept_mark_of, add_accept_mark_arg, add_live_args, live_scenario
from nftdocker.cli.output import write_output
from nftdocker.nft.render import DEFAULT_TABLE


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    add_live_args(p, "the Docker Engine", "the daemon's address (default: $DOCKER_HOST, else unix:///var/run/docker.sock)")


def register(sub: Any) -> None:
    """Add ``export`` and ``watch`` to the CLI's subparsers."""
    e = sub.add_parser("export", help="write the live Docker host as a scenario file",
                       description="Read the networks and containers of a running Docker Engine and write them, "
                                   "with [daemon] from its daemon.json and [host] from the flags, as a scenario "
                                   "file (TOML) that reproduces its firewall exactly.")
    _add_engine_args(e)
    e.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    e.set_defaults(func=cmd_export)

    w = sub.add_parser("watch", help="keep the table in step with a running Docker Engine",
                       description="Apply the whole table once, then follow the Engine's events and apply each "
                                   "change (within a second); reconnect with backoff and re-sync when the daemon "
                                   "restarts. One log line per change on standard output. SIGTERM/SIGINT stop it "
                                   "and leave the table in place.")
    _add_engine_args(w)
    w.add_argument("--netns", metavar="NAME", help="network namespace (ip netns name); default: the current one")
    w.add_argument("--table", default=DEFAULT_TABLE, metavar="NAME", help=f"nft table name (default: {DEFAULT_TABLE})")
    w.add_argument("--sysctls", action="store_true",
                   help="after each change also set what Docker sets beside its rules (ip_forward, route_localnet, "
                        "bridge-nf-call, hairpin on bridge ports), as apply --sysctls does")
    add_accept_mark_arg(w)
    w.add_argument("--user-rules", metavar="FILE",
                   help="nft rule statements for filter-DOCKER-USER, one a line, loaded with every apply and restore")
    w.add_argument("--json", action="store_true", help="log JSON objects, one a line")
    w.set_defaults(func=cmd_watch)


def cmd_export(args: argparse.Namespace) -> int:
    from nftdocker.scenario.write import export_scenario

    write_output(args, export_scenario(live_scenario(args)))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from nftdocker.host.user_rules import load
    from nftdocker.live.watch import Watcher

    mark = accept_mark_of(args)
    w = Watcher(args.docker_host, args.netns, args.table, args.daemon_config,
                args.ipv4_forwarding, args.ipv6_forwarding, json_logs=args.json, sysctls=args.sysctls,
                accept_mark=mark, user_rules=load(args.user_rules) if args.user_rules else None,
                log=lambda line: print(line, flush=True), warn=lambda line: print(line, file=sys.stderr, flush=True))

    def on_signal(signum: int, frame: Any) -> None:
        w.stop()

    saved = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        w.run()
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
    return 0

