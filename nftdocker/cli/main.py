"""The command line: the only place that prints errors or picks exit statuses.

Exit statuses: 0 success; 1 differences found (diff, verify); 2 bad input or usage;
3 the kernel, the host or the Docker Engine refused or is missing.

This module builds the parser from the subcommand groups (rules: render, compat, diff; kernel:
apply, remove, show; verify; live: export, watch), dispatches, and turns errors into statuses.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import Callable, Sequence

from nftdocker import DOCKER_ENGINE_VERSION, __version__
from nftdocker.cli import kernel, live, rules, verify
from nftdocker.errors import NftdockerError

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on usage errors, as we want
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nftdocker", description=f"Docker {DOCKER_ENGINE_VERSION}'s bridge firewall as native nftables.")
    p.add_argument("--version", action="version",
                   version=f"nftdocker {__version__} (the bridge-network firewall of Docker Engine {DOCKER_ENGINE_VERSION})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    rules.register(sub)
    kernel.register(sub)
    verify.register(sub)
    live.register(sub)
    return p


ONE_SHOT: set[Handler] = {rules.cmd_render, rules.cmd_compat, rules.cmd_diff, kernel.cmd_apply, kernel.cmd_remove, kernel.cmd_show}


class _Stderr(logging.Handler):
    """The library's warnings (the ``nftdocker`` logger) as ``nftdocker: MESSAGE`` lines on the stderr of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"nftdocker: {record.getMessage()}", file=sys.stderr)


def _warnings_to_stderr() -> None:
    log = logging.getLogger("nftdocker")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        log.addHandler(_Stderr(logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    _warnings_to_stderr()
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
