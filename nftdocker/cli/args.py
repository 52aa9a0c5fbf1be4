"""The options several subcommands share, and what they read: the scenario (a file or a live
Docker Engine), a reference file of iptables rules, ``--accept-mark``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from nftdocker.errors import UsageError
from nftdocker.nft.render import DEFAULT_TABLE

if TYPE_CHECKING:
    from nftdocker.model import Scenario


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
    """SCENARIO, ``--table`` and the live Engine's options (:func:`load_scenario` reads them)."""
    p.add_argument("scenario", nargs="?", metavar="SCENARIO", help="scenario file (TOML); or --docker-host")
    p.add_argument("--table", default=DEFAULT_TABLE, metavar="NAME", help=f"nft table name (default: {DEFAULT_TABLE})")
    add_live_args(p, "live Docker Engine instead of a scenario file", "read networks and containers from this Docker Engine")


def live_scenario(args: argparse.Namespace) -> Scenario:
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


def load_scenario(args: argparse.Namespace) -> Scenario:
    """The Scenario of SCENARIO or of the Engine at ``--docker-host`` (exactly one of them)."""
    from nftdocker.scenario import load as sc

    if getattr(args, "docker_host", None):
        if args.scenario:
            raise UsageError("give either SCENARIO or --docker-host, not both")
        return live_scenario(args)
    if not args.scenario:
        raise UsageError("give a SCENARIO file or --docker-host URL")
    return sc.load(args.scenario)
