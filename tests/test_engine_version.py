"""Which Docker is this? A live Engine that is not 28.x gets one warning line (and a JSON field);
``nftdocker --version`` names the Engine whose firewall nftdocker writes. Against a fake Engine API
(tests/fake_engine.py) on a unix socket: no dockerd is started."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")

from conftest import SHARED_REFERENCE, needs_netns
from conftest import run_cli as run
from fake_engine import FakeEngine
from nftdocker import DOCKER_ENGINE_VERSION, __version__
from nftdocker.live.engine import engine_warning, scenario_from_live

CASE = "multi"
DUMP = json.loads((SHARED_REFERENCE / CASE / "docker-inspect.json").read_text())
DEBIAN = "20.10.24+dfsg1"


@pytest.fixture
def engines(tmp_path):
    """Two fake Engines serving the same host: Debian's 20.10 and 28.0.1."""
    with FakeEngine(tmp_path / "old.sock", DUMP, version=DEBIAN, api_version="1.41") as old, \
            FakeEngine(tmp_path / "new.sock", DUMP, version="28.0.1") as new:
        yield old, new


def _warning_for(engine) -> str:
    return (f"nftdocker: warning: the Docker Engine at {engine.host} is version {engine.version!r}, not 28.x: "
            f"nftdocker writes the firewall of Docker Engine 28.0.1, which may differ from the rules this Engine would write\n")


def test_version_names_the_engine_it_reproduces():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout == f"nftdocker {__version__} (the bridge-network firewall of Docker Engine 28.0.1)\n"
    assert DOCKER_ENGINE_VERSION == "28.0.1"


@pytest.mark.parametrize("command", [["compat"], ["compat", "--ipv6"], ["render"], ["export"]])
def test_an_older_engine_gets_one_warning_line_and_the_same_output(engines, command):
    old, new = engines
    want = run(*command, "--docker-host", new.host, timeout=60)
    assert want.returncode == 0 and want.stderr == "", want.stderr
    got = run(*command, "--docker-host", old.host, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stderr == _warning_for(old)
    assert got.stdout.replace(old.host, new.host) == want.stdout  # export's header names the Engine
    assert "/version" in old.requests


def test_diff_json_lists_the_warning(engines):
    old, new = engines
    ref = SHARED_REFERENCE / CASE / "iptables-save.txt"
    r = run("diff", "--docker-host", old.host, ref, "--json", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["identical"] is True  # the fake Engine serves the real capture's dump
    assert out["warnings"] == [_warning_for(old)[len("nftdocker: warning: "):-1]]
    assert r.stderr == _warning_for(old)
    r = run("diff", "--docker-host", new.host, ref, "--json", timeout=60)
    assert json.loads(r.stdout)["warnings"] == [] and r.stderr == ""


def test_diff_json_of_a_file_has_no_warnings():
    r = run("diff", SHARED_REFERENCE / CASE / "from-inspect.toml", SHARED_REFERENCE / CASE / "iptables-save.txt", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["warnings"] == []


@pytest.mark.parametrize("version, want", [
    ("28.0.1", None),
    ("28.3.2", None),
    ("28.0.0-rc.1", None),
    ("20.10.24+dfsg1", "is version '20.10.24+dfsg1', not 28.x"),
    ("27.5.1", "is version '27.5.1', not 28.x"),
    ("280.1", "is version '280.1', not 28.x"),
    (None, "did not say which version it is"),
    ("29.0\n\x1b[2Jrm -rf", "is version '29.0 ?[2Jrm -rf', not 28.x"),
    ("x" * 1000, "is version '" + "x" * 40 + "', not 28.x"),
])
def test_engine_warning(version, want):
    line = engine_warning("unix:///s", version)
    if want is None:
        assert line is None
    else:
        assert line.startswith(f"the Docker Engine at unix:///s {want}: nftdocker writes the firewall of Docker Engine 28.0.1")
        assert "\n" not in line and line.isprintable()


def test_an_engine_without_a_version_is_warned_about(tmp_path):
    with FakeEngine(tmp_path / "d.sock", DUMP, version=None) as e:
        warnings: list[str] = []
        s = scenario_from_live(e.host, warnings=warnings)
    assert [c.name for c in s.containers] == ["c1", "c2", "c3"]
    assert warnings == [engine_warning(e.host, None)]


@needs_netns
def test_apply_json_lists_the_warning(engines, netns):
    old, _ = engines
    r = run("apply", "--docker-host", old.host, "--netns", netns, "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["warnings"] == [_warning_for(old)[len("nftdocker: warning: "):-1]]
    assert r.stderr == _warning_for(old)


@needs_netns
def test_watch_warns_once_per_engine_version(engines, netns):
    from nftdocker.live.watch import Watcher

    old, _ = engines
    logs: list[str] = []
    warned: list[str] = []
    w = Watcher(old.host, netns, "nftdocker", log=logs.append, json_logs=True, warn=warned.append)
    w.sync("start")
    w._generate()  # an event batch reads the daemon again: no second warning
    assert warned == [_warning_for(old)[:-1]]
    kinds = [json.loads(l)["kind"] for l in logs]
    assert kinds == ["warning", "sync"]
    assert json.loads(logs[0])["warning"] == _warning_for(old)[len("nftdocker: warning: "):-1]
    old.version = "28.0.1"  # the daemon restarted upgraded: nothing to say
    w.sync("reconnected")
    old.version = "27.5.1"  # and downgraded: say it again
    w.sync("reconnected")
    assert len(warned) == 2 and "'27.5.1', not 28.x" in warned[1]
    assert [json.loads(l)["kind"] for l in logs] == ["warning", "sync", "sync", "warning", "sync"]


def test_a_live_engine_answering_a_wrong_type_is_one_located_line(tmp_path):
    """What a live Engine answers goes through the dump loader: a wrong type is one located line, exit 2."""
    dump = json.loads(json.dumps(DUMP))
    i = next(i for i, n in enumerate(sorted(dump["networks"], key=lambda n: n["Name"])) if n["Name"] == "bridge1")
    next(n for n in dump["networks"] if n["Name"] == "bridge1")["Internal"] = "yes"
    with FakeEngine(tmp_path / "d.sock", dump) as e:
        r = run("compat", "--docker-host", e.host, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"nftdocker: Docker daemon at {e.host}: networks[{i}].Internal: "
                        "expected a boolean, got string 'yes'\n")
