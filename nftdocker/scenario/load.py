"""Read a scenario (TOML, optionally with a ``docker inspect`` dump) into the typed model.

The contract is ../shared/scenario-format.md (bundled as docs in README). Every problem
raises :class:`ScenarioError` naming the file, the key path and what is wrong.

The entry points are here; the parts are :mod:`.daemon` (``[daemon]``, ``[host]``),
:mod:`.network` and :mod:`.document` (``[[networks]]``, ``[[containers]]``), :mod:`.publish`
(``-p`` syntax), :mod:`.dump` (the dump), :mod:`.events` (``[[events]]``) and :mod:`.context`
(the located errors and value checks they all use).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from nftdocker.model import Scenario
from nftdocker.nft.ir import gc_paused
from nftdocker.scenario.context import Context, expect, unknown_keys
from nftdocker.scenario.daemon import parse_daemon, parse_host
from nftdocker.scenario.document import from_tables
from nftdocker.scenario.events import parse_events
from nftdocker.scenario.dump import from_inspect, read_inspect

TOP_KEYS = {"daemon", "host", "networks", "containers", "docker-inspect", "events"}


def load(path: str | Path) -> Scenario:
    """Load a scenario file (``-``: standard input); raise ScenarioError on anything wrong."""
    from nftdocker.inputs import STDIN, STDIN_NAME, read_bytes

    data = read_bytes(path, stdin=True)
    if str(path) == STDIN:
        return loads(data, source=STDIN_NAME, base=Path("."))
    return loads(data, source=str(path), base=Path(path).parent)


def loads(data: bytes | str, source: str = "<scenario>", base: Path | None = None) -> Scenario:
    """A scenario from its text; ``source`` names it in errors, ``base`` is where ``docker-inspect`` is found."""
    ctx = Context(source)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ctx.fail("", f"not UTF-8 text (byte {e.start})") from None
    else:
        text = data
    with gc_paused():
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ctx.fail("", f"TOML syntax: {e}") from None
        return from_document(ctx, doc, base or Path("."))


def from_document(ctx: Context, doc: dict[str, Any], base: Path, inspect: Any = None) -> Scenario:
    """A scenario from a parsed document; ``inspect``: a dump given directly (the Engine API's), in
    place of the networks and containers the document would list or name."""
    unknown_keys(ctx, "", doc, TOP_KEYS)
    daemon = parse_daemon(ctx, doc.get("daemon", {}))
    host = parse_host(ctx, doc.get("host", {}))
    if "docker-inspect" in doc or inspect is not None:
        if "networks" in doc or "containers" in doc:
            key = "networks" if "networks" in doc else "containers"
            raise ctx.fail(key, "cannot be combined with docker-inspect (the dump lists them)")
        if inspect is None:
            rel = expect(ctx, "docker-inspect", doc["docker-inspect"], str)
            dump_path = base / rel
            inspect = read_inspect(ctx, dump_path)
            ictx = Context(str(dump_path))
        else:
            ictx = ctx
        networks, containers = from_inspect(ictx, inspect, daemon)
    else:
        networks, containers = from_tables(ctx, doc, daemon)
    events = parse_events(ctx, doc.get("events", []), networks, containers)
    return Scenario(daemon, host, tuple(networks), tuple(containers), ctx.source, events)
