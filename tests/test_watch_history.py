"""watch follows a real dockerd through a history, event by event (tests/dockerd.py).

After each docker command the kernel's table must be what a fresh generation of the same history
gives: the host as the watcher's first sync read it, exported (addresses and ports pinned), with
the commands since as ``[[events]]`` (the history generator is checked against real Docker
28.0.1 captures in test_reference.py). Docker's order after stop/start, restart, disconnect of the
gateway network, removals and network create/rm is the point: a snapshot per event gets it wrong.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")

try:
    from tests.dockerd import IMAGE, TestDaemon
except ImportError:  # tests/ is not a package
    from dockerd import IMAGE, TestDaemon  # type: ignore[no-redef]

from nftdocker.nft import listing
from nftdocker.compat.translate import compat_of, compat_text
from nftdocker.scenario.write import export_scenario
from nftdocker.docker.generate import generate
from nftdocker.scenario.load import loads
from nftdocker.live.watch import Watcher

TABLE = "nftdocker"


def _loaded(d: TestDaemon) -> dict[str, str]:
    objs = listing.list_objects(d.netns, TABLE)
    return {fam: compat_text(objs, fam, TABLE) for fam in ("ip", "ip6")}


def _poll(cond, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def _event(do: str, **keys: str) -> str:
    return f'\n[[events]]\ndo = "{do}"\n' + "".join(f"{k} = {v if v.startswith('[') else json.dumps(v)}\n" for k, v in keys.items())


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    reason = TestDaemon.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with TestDaemon("--userland-proxy=false") as d:
        cfg = tmp_path_factory.mktemp("cfg") / "daemon.json"
        cfg.write_text(json.dumps({"userland-proxy": False, "iptables": False, "ip6tables": False}))
        for name, subnet in (("netA", "192.0.2.0/24"), ("netB", "198.51.100.0/24")):
            d.docker("network", "create", "-o", f"com.docker.network.bridge.name={name}", "--subnet", subnet, name)
        for name, publish in (("c1", "8080:80"), ("c2", "9090:90")):
            d.docker("run", "-d", "--init", "--name", name, "--network", "netA", "-p", publish, IMAGE, "sleep", "3600")
        lines: list[str] = []
        w = Watcher(d.host, d.netns, TABLE, str(cfg), log=lines.append)
        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: _run(w, errors), name="watcher", daemon=True)
        t.start()
        assert _poll(lambda: w.syncs or errors, 20), "no first sync"
        assert not errors, errors
        base = export_scenario(w.current.scenario, header="")
        yield d, w, base, lines
        w.stop()
        t.join(5)


def _run(w: Watcher, errors: list) -> None:
    try:
        w.run()
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


@pytest.mark.docker
def test_watch_follows_a_history_in_dockers_order(host):
    d, w, base, lines = host
    history = ""
    syncs = w.syncs
    steps = [
        (["stop", "c1"], _event("stop", container="c1")),
        (["start", "c1"], _event("start", container="c1")),
        (["restart", "c2"], _event("restart", container="c2")),
        (["network", "connect", "netB", "c1"], _event("connect", container="c1", network="netB")),
        (["network", "disconnect", "netA", "c1"], _event("disconnect", container="c1", network="netA")),
        (["network", "create", "-o", "com.docker.network.bridge.name=netC", "--subnet", "203.0.113.0/24", "netC"],
         _event("network create", name="netC", subnets='["203.0.113.0/24"]',
                options='[]').replace("options = []", 'options = { "com.docker.network.bridge.name" = "netC" }')),
        (["run", "-d", "--init", "--name", "c3", "--network", "netC", "-p", "7070:70", IMAGE, "sleep", "3600"],
         _event("run", name="c3", networks='["netC"]', publish='["7070:70"]')),
        (["rm", "-f", "c3"], _event("rm", container="c3")),
        (["network", "rm", "netC"], _event("network rm", network="netC")),
        (["rm", "-f", "c2"], _event("rm", container="c2")),
    ]
    timings = []
    for cmd, ev in steps:
        history += ev
        want_gen = generate(loads(base + history, "<history>"))
        want = {fam: compat_of(want_gen, fam, TABLE) for fam in ("ip", "ip6")}
        d.docker(*cmd)
        t0 = time.monotonic()
        got = _poll(lambda: _loaded(d) == want, 3.0, 0.02)
        timings.append(time.monotonic() - t0)
        assert got, f"after docker {' '.join(cmd)}:\n" + "\n".join(lines[-6:]) + "\n" + _loaded(d)["ip"] + "\nwant:\n" + want["ip"]
    assert w.syncs == syncs, "\n".join(lines)  # every event was replayed: no re-sync was needed
    changes = [l for l in lines if "rules (" in l and "sync" not in l]
    assert any(l.split("Z ", 1)[1].startswith("container die c1: +0 -4 rules") for l in changes), changes
    assert any(l.split("Z ", 1)[1].startswith("container start c1: +") for l in changes), changes
    print(f"\nwatch history: table as the history leaves it after {1000 * max(timings):.0f} ms at most "
          f"(median {1000 * sorted(timings)[len(timings) // 2]:.0f} ms)")
