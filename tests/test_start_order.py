"""Starts whose events come out of the daemon's StartedAt order (parallel ``docker run``s): the
replay notices, and once the burst is quiet watch loads the kept model in StartedAt order, the
order a full sync reads. No daemon and no kernel: a real capture's inspect dump stands for the daemon."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nftdocker.docker.generate import Firewall, generate
from nftdocker.live.batch import REORDER_QUIET, Item
from nftdocker.live.replay import EventReplay
from nftdocker.live.watch import Watcher
from nftdocker.scenario.context import Context
from nftdocker.scenario.load import from_document

DUMP = json.loads((Path(__file__).resolve().parents[2] / "shared/reference/multi/docker-inspect.json").read_text())
BY_ID = {c["Id"]: c for c in DUMP["containers"]}


def _scenario(dump: dict) -> object:
    return from_document(Context("docker-inspect.json"), {}, Path("."), inspect=dump)


def _replay_start(name: str) -> tuple[EventReplay, Firewall, str | None]:
    """The daemon synced without ``name``, whose start event then arrives (its StartedAt is the dump's)."""
    obj = next(c for c in DUMP["containers"] if c["Name"] == "/" + name)
    seen = {"networks": DUMP["networks"], "containers": [c for c in DUMP["containers"] if c is not obj]}
    sc = _scenario(seen)
    fw = Firewall(sc)
    fw.run()
    replay = EventReplay(sc, seen, lambda kind, ident: BY_ID.get(ident))
    assert replay.out_of_order is None
    what = replay.step(fw, {"type": "container", "action": "start", "id": obj["Id"], "attributes": {"name": name}})
    return replay, fw, what


def test_a_start_event_after_a_later_started_container_is_out_of_order():
    replay, fw, what = _replay_start("c1")  # c1 started first (08:34:38.70), its event is replayed last
    assert what == "container start c1"
    assert replay.out_of_order is not None and replay.out_of_order.startswith("c1 started before c")
    # the replayed order is not the one a full sync of the same daemon loads, and the kept model
    # in StartedAt order is, without asking the daemon again
    assert fw.generated().rulesets != generate(_scenario(DUMP)).rulesets
    assert generate(replay.in_start_order(fw)).rulesets == generate(_scenario(DUMP)).rulesets
    assert replay.out_of_order is None


def test_a_start_event_in_startedat_order_is_not():
    replay, fw, what = _replay_start("c3")  # the last to start
    assert what == "container start c3" and replay.out_of_order is None
    assert fw.generated().rulesets == generate(_scenario(DUMP)).rulesets


def test_watch_reorders_once_an_out_of_order_burst_is_quiet(monkeypatch):
    lines: list[str] = []
    loaded: list[tuple[object, float]] = []
    applier = SimpleNamespace(fw="the kept model", gen=SimpleNamespace(rulesets={}),
                              load=lambda sc: loaded.append((sc, time.monotonic())) or w.stop())
    w = Watcher(docker_host="unix:///nonexistent/docker.sock", applier=applier, heal=False, log=lines.append)
    w.current = SimpleNamespace(rulesets={})
    batch_at: list[float] = []
    queue = [Item(1, "event", event={"type": "container", "action": "start", "id": "x", "attributes": {"name": "c1"}},
                  at=time.monotonic())]
    deadline = time.monotonic() + 5

    def next_item(timeout: float) -> Item | None:
        if time.monotonic() > deadline:
            w.stop()  # bounded: the test fails below rather than hang
        if queue:
            return queue.pop(0)
        time.sleep(min(timeout, 0.01))
        return None

    def apply_batch(batch: list, first: float) -> None:
        batch_at.append(time.monotonic())
        w._replay = SimpleNamespace(out_of_order="c1 started before c2 but its start event came after",
                                    in_start_order=lambda fw: f"{fw} in StartedAt order")

    monkeypatch.setattr(w._feed, "next", next_item)
    monkeypatch.setattr(w._feed, "gather", lambda item, debounce, max_batch: ([item.event], [], None))
    monkeypatch.setattr(w, "_apply_batch", apply_batch)
    monkeypatch.setattr(w, "sync", lambda reason: pytest.fail(f"a full sync ({reason}) where the kept model reorders"))
    assert w._follow() is None
    assert [sc for sc, _ in loaded] == ["the kept model in StartedAt order"]
    assert loaded[0][1] - batch_at[0] >= REORDER_QUIET  # not before the burst is quiet
    assert any("reorder (c1 started before c2 but its start event came after): +0 -0 rules" in l for l in lines), lines
