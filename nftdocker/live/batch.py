"""The Engine's events as the watcher takes them: read, gathered into batches, described.

:class:`EventFeed` reads the event stream (``engine.events``) in a thread per connection and
queues each event with its arrival time; the kernel watch (:mod:`heal`) queues what it notices on
the same queue. Events arriving within ``debounce`` seconds of each other (10 ms) are one batch,
never held longer than ``max_batch`` (:meth:`EventFeed.gather`); the kernel's notices that arrive
meanwhile are handed back beside it, to be dealt with after it. When the stream ends or the daemon
stops answering, the feed queues a "lost" item; a new connection (:meth:`EventFeed.subscribe`)
makes whatever the old one still delivers stale.

:func:`describe` names a batch for the log (``network create n1, container start c1``),
:func:`rule_diff` counts the rules a change added and removed, :func:`log_line` writes the log's
lines (text or JSON); :class:`Change` is the record of one sync, batch or restore.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from nftdocker.errors import DockerError
from nftdocker.nft.backend import Backend
from nftdocker.nft.ir import Rule, Ruleset
from nftdocker.nft.table import USER_CHAIN

#: Seconds of quiet after an event before the batch is applied; a batch is never held longer than MAX_BATCH.
DEBOUNCE = 0.01
MAX_BATCH = 0.25
#: Seconds of quiet after a batch whose starts were replayed out of StartedAt order before watch syncs again.
REORDER_QUIET = 0.2
#: How often the watcher (and heal's reader, on its socket) looks at its stop flag while waiting.
POLL = 0.1


@dataclass
class Change:
    """What one sync or event batch did."""

    what: str
    added: int
    removed: int
    ms: float
    applied: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    #: how the applier sent it (IncrementalApplier: diff, full, noop, ...) and in how many commands
    apply_mode: str = ""
    commands: int = 0


@dataclass
class Item:
    """One thing queued for the watcher: an event, the stream lost, or the kernel's notice."""

    conn: int
    kind: str  # "event" | "lost" | "kernel"
    event: dict[str, Any] | None = None
    error: DockerError | None = None
    at: float = 0.0
    tamper: Any = None  # heal.Tamper, for "kernel"


class EventFeed:
    """The events of ``docker_host`` and the kernel's notices, on one queue (see the module docstring).

    ``stopping`` is asked after each event: a reader thread ends once it says True."""

    def __init__(self, docker_host: str | None, stopping: Callable[[], bool]) -> None:
        self.docker_host = docker_host
        self._stopping = stopping
        self._queue: queue.Queue[Item] = queue.Queue()
        self._conn = 0

    def subscribe(self, since: float) -> None:
        """Start a reader thread for a new connection; events since ``since`` (seconds since the
        epoch) are replayed."""
        self._conn += 1
        conn = self._conn
        t = threading.Thread(target=self._reader, args=(conn, f"{since:.6f}"), name=f"nftdocker-events-{conn}", daemon=True)
        t.start()

    def close(self) -> None:
        """Whatever the reader thread still delivers is stale from now on."""
        self._conn += 1

    def tamper(self, tamper: Any) -> None:
        """Queue the kernel watch's notice (a ``heal.Tamper``): delivered whatever the connection."""
        self._queue.put(Item(-1, "kernel", tamper=tamper, at=tamper.at))

    def _reader(self, conn: int, since: str) -> None:
        from nftdocker.live.engine import events

        q = self._queue
        try:
            for ev in events(self.docker_host, since=since):
                q.put(Item(conn, "event", event=ev, at=time.monotonic()))
                if self._stopping() or conn != self._conn:
                    return
        except DockerError as e:
            q.put(Item(conn, "lost", error=e, at=time.monotonic()))
        except Exception as e:  # noqa: BLE001 - any failure of the stream is a lost daemon
            q.put(Item(conn, "lost", error=DockerError(f"the event stream failed: {type(e).__name__}: {e}"),
                       at=time.monotonic()))

    def next(self, timeout: float) -> Item | None:
        """The next item of the current connection (or the kernel's), waiting up to ``timeout``."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return item if item.conn == self._conn or item.kind == "kernel" else None

    def wait(self, seconds: float, on_tamper: Callable[[Any], None]) -> bool:
        """Wait up to ``seconds``, waking every POLL to ask ``stopping`` and handing the kernel's
        notices to ``on_tamper`` (events are dropped: a re-sync follows); True if stopped."""
        deadline = time.monotonic() + seconds
        while not self._stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            item = self.next(min(POLL, left))
            if item is not None and item.kind == "kernel":
                on_tamper(item.tamper)
        return True

    def gather(self, item: Item, debounce: float, max_batch: float) -> tuple[list[dict[str, Any] | None], list[Any], DockerError | None]:
        """The batch that the event ``item`` starts: the events that follow it within ``debounce``
        of each other (for at most ``max_batch`` from ``item``'s arrival), the kernel's notices that
        came meanwhile, and the error if the stream was lost."""
        batch = [item.event]
        tampers = []
        first = item.at
        lost: DockerError | None = None
        quiet_until = time.monotonic() + debounce
        while True:
            wait = min(quiet_until, first + max_batch) - time.monotonic()
            if wait <= 0:
                break
            nxt = self.next(wait)
            if nxt is None:
                if time.monotonic() >= quiet_until:
                    break
                continue
            if nxt.kind == "lost":
                lost = nxt.error
                break
            if nxt.kind == "kernel":
                tampers.append(nxt.tamper)  # restored after the batch
                continue
            batch.append(nxt.event)
            quiet_until = time.monotonic() + debounce
        return batch, tampers, lost


def _rule_counter(rulesets: dict[str, Ruleset]) -> Counter[tuple[str, str, str, Rule]]:
    c: Counter[tuple[str, str, str, Rule]] = Counter()
    for fam, rs in rulesets.items():
        for (t, n), ch in rs.chains.items():
            if ch.nft_name == USER_CHAIN:
                continue  # its user rules are kept on every change
            for r in ch.rules:
                c[(fam, t, n, r)] += 1
    return c


def rule_diff(old: dict[str, Ruleset], new: dict[str, Ruleset]) -> tuple[int, int]:
    """(rules added, rules removed) from old to new, as multisets per chain (DOCKER-USER left out)."""
    a, b = _rule_counter(old), _rule_counter(new)
    return sum((b - a).values()), sum((a - b).values())


def loaded_rulesets(netns: str | None, table: str, backend: Backend | None = None) -> dict[str, Ruleset]:
    """The rules in the kernel now (for the first sync's +/- counts); empty if unreadable.
    ``backend``: read it instead of the namespace's libnftables."""
    try:
        from nftdocker.nft.parse import rulesets_from_json
        from nftdocker.nft.listing import list_objects

        return rulesets_from_json(list_objects(netns, table, backend), table)
    except Exception:  # noqa: BLE001 - only the log line's counts depend on it
        return {}


def log_line(kind: str, text: str, json_logs: bool, **fields: Any) -> str:
    """One line of the watcher's log: ``STAMP TEXT``, or with ``json_logs`` a JSON object (time,
    kind, message and ``fields``)."""
    now = datetime.now(timezone.utc)
    if json_logs:
        return json.dumps({"time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                           "kind": kind, "message": text, **fields})
    return f"{now.strftime('%Y-%m-%dT%H:%M:%SZ')} {text}"


def event_fields(ev: dict[str, Any]) -> dict[str, Any]:
    """An event as a JSON log line lists it: type, action, id and name."""
    return {k: ev.get(k) for k in ("type", "action", "id")} | {"name": (ev.get("attributes") or {}).get("name")}


def describe(batch: list[dict[str, Any] | None]) -> str:
    """``container start c1`` / ``network create n1, container start c1``; a network connect or
    disconnect of a container that has its own event in the batch is left out."""
    evs = [e for e in batch if e]
    ctr_ids = {e.get("id") for e in evs if e.get("type") == "container"}
    parts: list[str] = []
    for e in evs:
        attrs = e.get("attributes") or {}
        if e.get("type") == "network" and e.get("action") in ("connect", "disconnect") and attrs.get("container") in ctr_ids:
            continue
        name = attrs.get("name") or str(e.get("id", ""))[:12]
        text = f"{e.get('type')} {e.get('action')} {name}"
        if text not in parts:
            parts.append(text)
    return ", ".join(parts) or "events"
