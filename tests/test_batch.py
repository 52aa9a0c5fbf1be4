"""nftdocker.live.batch: the watcher's queue of events and kernel notices, gathered into batches (no daemon)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from nftdocker.errors import DockerError
from nftdocker.live.batch import EventFeed, Item


def _ev(action: str, name: str) -> dict:
    return {"type": "container", "action": action, "id": name * 12, "attributes": {"name": name}}


def test_events_within_the_debounce_are_one_batch_and_kernel_notices_come_beside_it():
    feed = EventFeed(None, lambda: False)
    now = time.monotonic()
    notice = SimpleNamespace(at=now)
    feed._queue.put(Item(0, "event", event=_ev("start", "b"), at=now))
    feed.tamper(notice)
    feed._queue.put(Item(0, "event", event=_ev("start", "c"), at=now))
    batch, tampers, lost = feed.gather(Item(0, "event", event=_ev("start", "a"), at=now), 0.05, 1.0)
    assert [e["attributes"]["name"] for e in batch] == ["a", "b", "c"]
    assert tampers == [notice] and lost is None


def test_a_lost_stream_ends_the_batch_and_a_closed_connection_is_stale():
    feed = EventFeed(None, lambda: False)
    now = time.monotonic()
    feed._queue.put(Item(0, "lost", error=DockerError("gone"), at=now))
    batch, _, lost = feed.gather(Item(0, "event", event=_ev("die", "a"), at=now), 1.0, 1.0)
    assert len(batch) == 1 and lost is not None and lost.message == "gone"
    feed.close()
    feed._queue.put(Item(0, "event", event=_ev("start", "late"), at=now))
    assert feed.next(0.01) is None  # the old connection's event: dropped
    feed.tamper(SimpleNamespace(at=now))
    item = feed.next(0.01)
    assert item is not None and item.kind == "kernel"  # the kernel's notices, whatever the connection


def test_wait_hands_kernel_notices_over_and_ends_when_stopping():
    stopping = [False]
    feed = EventFeed(None, lambda: stopping[0])
    seen: list = []
    feed.tamper(SimpleNamespace(at=time.monotonic()))
    assert feed.wait(0.05, seen.append) is False and len(seen) == 1
    stopping[0] = True
    assert feed.wait(5, seen.append) is True
