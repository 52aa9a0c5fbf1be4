"""export and watch against a real dockerd (tests/dockerd.py) started with --userland-proxy=false.

In that mode dockerd holds a published host port but never accepts on it, so a reply from the
container through the port proves that nftdocker's DNAT rules are loaded. All traffic stays in the
daemon's own network namespace (192.0.2.0/24, 198.51.100.0/24, 172.17.0.0/16).

The tests of an absent daemon need neither root nor dockerd.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")

try:
    from tests.dockerd import IMAGE, TestDaemon
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from dockerd import IMAGE, TestDaemon  # type: ignore[no-redef]

from nftdocker.apply import engine
from nftdocker.host import sysctl
from nftdocker.nft import listing
from nftdocker.compat.translate import compat_of, compat_text
from nftdocker.docker.generate import generate
from nftdocker.live.engine import engine_warning, scenario_from_live
from nftdocker.live.batch import describe as _describe, rule_diff as _rule_diff
from nftdocker.live.watch import Watcher

ROOT = Path(__file__).resolve().parent.parent
TABLE = "nftdocker"
NETWORKS = {"netA": "192.0.2.0/24", "netB": "198.51.100.0/24"}
CONTAINERS = {  # name -> (network, -p arguments)
    "c1": ("netA", ["-p", "8080:80"]),
    "c2": ("netB", ["-p", "127.0.0.1:9090:90", "-p", "5353:53/udp"]),
    "c3": ("bridge", ["-p", "6000:60"]),
}
HTTPD = "echo hello-from-{name} > /var/www/index.html && exec httpd -f -p 80 -h /var/www"


def _cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    """The nftdocker CLI (python -m nftdocker)."""
    kw.setdefault("timeout", 60)
    return subprocess.run([sys.executable, "-m", "nftdocker", *args], capture_output=True, text=True,
                          cwd=ROOT, **kw)


def _compat(s) -> dict[str, str]:
    gen = generate(s)
    return {fam: compat_of(gen, fam, TABLE) for fam in ("ip", "ip6")}


def _loaded(d: TestDaemon, table: str = TABLE) -> str:
    return compat_text(listing.list_objects(d.netns, table), "ip", table)


def _poll(cond, timeout: float, step: float = 0.05):
    """cond() until truthy (returned) or timeout (returns the last falsy value); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def _get(d: TestDaemon, addr: str, port: int, attempts: int = 10) -> str:
    """An HTTP GET from inside the daemon's namespace: the reply's body, or '' (bounded retries)."""
    code = ("import socket,sys\n"
            f"s = socket.create_connection(({addr!r}, {port}), timeout=2)\n"
            "s.settimeout(2); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); data = b''\n"
            "while True:\n    b = s.recv(4096)\n    if not b: break\n    data += b\n"
            "sys.stdout.write(data.decode(errors='replace'))\n")
    for _ in range(attempts):
        r = d.in_netns("python3", "-c", code, timeout=10)
        if r.returncode == 0 and "200" in r.stdout:
            return r.stdout
        time.sleep(0.2)
    return ""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    reason = TestDaemon.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with TestDaemon("--userland-proxy=false") as d:
        cfg = tmp_path_factory.mktemp("cfg") / "daemon.json"
        cfg.write_text(json.dumps({"userland-proxy": False, "iptables": False, "ip6tables": False}))
        d.nftdocker_config = str(cfg)  # type: ignore[attr-defined]
        for name, subnet in NETWORKS.items():
            d.docker("network", "create", "-o", f"com.docker.network.bridge.name={name}", "--subnet", subnet, name)
        for name, (net, publish) in CONTAINERS.items():
            d.docker("run", "-d", "--init", "--name", name, "--network", net, *publish, IMAGE, "sleep", "3600")
        yield d


# --------------------------------------------------------------------------- live == dump


@pytest.mark.docker
def test_compat_from_live_daemon_equals_compat_from_inspect_dump(daemon, tmp_path):
    cfg = daemon.nftdocker_config
    net_ids = daemon.docker("network", "ls", "-q").stdout.split()
    ctr_ids = daemon.docker("ps", "-q").stdout.split()
    assert len(ctr_ids) == 3
    (tmp_path / "dump.json").write_text(daemon.docker("inspect", *net_ids, *ctr_ids).stdout)
    (tmp_path / "scenario.toml").write_text('docker-inspect = "dump.json"\n\n[daemon]\nuserland-proxy = false\n')

    from nftdocker.scenario import load as sc

    live = _compat(scenario_from_live(daemon.host, cfg))
    dumped = _compat(sc.load(tmp_path / "scenario.toml"))
    assert live == dumped
    assert "-j DNAT --to-destination 192.0.2.2:80" in live["ip"]
    assert "-j DNAT --to-destination 198.51.100.2:90" in live["ip"]
    assert "-j DNAT --to-destination 172.17.0.2:60" in live["ip"]

    # the same through the command line
    for fam_args in ([], ["--ipv6"]):
        r1 = _cli("compat", "--docker-host", daemon.host, "--daemon-config", cfg, *fam_args)
        r2 = _cli("compat", str(tmp_path / "scenario.toml"), *fam_args)
        assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
        assert r1.stdout == r2.stdout == live["ip6" if fam_args else "ip"]


@pytest.mark.docker
def test_export_from_live_daemon_round_trips(daemon, tmp_path):
    out = tmp_path / "host.toml"
    r = _cli("export", "--docker-host", daemon.host, "--daemon-config", daemon.nftdocker_config,
             "--ipv4-forwarding", "false", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    from nftdocker.scenario import load as sc

    s = sc.load(out)
    assert s.host.ipv4_forwarding is False and s.daemon.userland_proxy is False
    assert [n.name for n in s.networks] == ["bridge", "netA", "netB"]
    assert sorted(c.name for c in s.containers) == sorted(CONTAINERS)
    live = scenario_from_live(daemon.host, daemon.nftdocker_config, "false")
    assert _compat(s) == _compat(live)
    text = out.read_text()
    assert 'publish = ["5353:53/udp", "127.0.0.1:9090:90/tcp"]' in text
    assert 'addresses = { netA = "192.0.2.2" }' in text
    # to standard output without -o: the same file
    r = _cli("export", "--docker-host", daemon.host, "--daemon-config", daemon.nftdocker_config,
             "--ipv4-forwarding", "false")
    assert r.returncode == 0 and r.stdout == text


# --------------------------------------------------------------------------- watch


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.on_lost = None

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if "lost the Docker daemon" in line and self.on_lost:
            self.on_lost()  # in the watcher's thread, before it reconnects

    def has(self, text: str) -> bool:
        return any(text in l for l in self.lines)


@pytest.fixture(scope="module")
def watcher(daemon):
    log = _Log()
    w = Watcher(daemon.host, daemon.netns, TABLE, daemon.nftdocker_config, log=log, sysctls=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            w.run()
        except BaseException as e:  # noqa: BLE001 - reported by the tests
            errors.append(e)

    t = threading.Thread(target=run, name="watcher", daemon=True)
    t.start()
    assert _poll(lambda: w.syncs or errors, 20), "no first sync"
    assert not errors, errors
    w.log = log  # type: ignore[attr-defined]
    w.errors = errors  # type: ignore[attr-defined]
    yield w
    w.stop()
    t.join(5)
    assert not t.is_alive()


@pytest.mark.docker
def test_watch_applies_run_and_rm_within_a_second(daemon, watcher):
    log = watcher.log
    assert log.lines[0].endswith(" ms)") and "sync (start): 3 networks, 3 containers: +" in log.lines[0]
    assert "--to-destination 192.0.2.2:80" in _loaded(daemon)
    # --sysctls: what Docker sets beside its rules without the proxy (route_localnet on each bridge)
    r = daemon.in_netns("cat", "/proc/sys/net/ipv4/conf/netA/route_localnet", "/proc/sys/net/ipv4/ip_forward")
    assert r.stdout.split() == ["1", "1"], r.stderr

    n_changes = len(watcher.changes)
    daemon.docker("run", "-d", "--init", "--name", "web", "--network", "netA", "-p", "8081:80", IMAGE,
                  "sh", "-c", HTTPD.format(name="web"))
    t0 = time.monotonic()
    assert _poll(lambda: "--dport 8081 -j DNAT" in _loaded(daemon), 1.0, 0.05), f"no DNAT for web within 1 s:\n{log.lines}"
    latency = time.monotonic() - t0
    ip = daemon.docker("inspect", "-f", "{{.NetworkSettings.Networks.netA.IPAddress}}", "web").stdout.strip()
    dnat = f"--dport 8081 -j DNAT --to-destination {ip}:80"
    assert dnat in _loaded(daemon)
    applied = lambda: [c for c in watcher.changes[n_changes:] if c.applied]  # noqa: E731
    assert _poll(applied, 1.0, 0.01)  # the record follows the kernel's commit
    change = applied()[0]
    print(f"\nwatch: docker run -> rule in the kernel {latency * 1000:.0f} ms after `docker run` returned; "
          f"the watcher took {change.ms:.0f} ms from the start event")
    assert latency < 1.0
    assert change.apply_mode == "fast" and 0 < change.commands < 10, change  # only its Docker calls were replayed and sent
    assert _poll(lambda: log.has(f"container start web: +4 -0 rules ({change.ms:.0f} ms)"), 1.0, 0.01), log.lines

    # a packet to the published port (on the network's gateway address, a local one) reaches the container
    assert "hello-from-web" in _get(daemon, "192.0.2.1", 8081)

    daemon.docker("rm", "-f", "web")
    t0 = time.monotonic()
    assert _poll(lambda: dnat not in _loaded(daemon), 1.0, 0.05), f"DNAT for web still there after 1 s:\n{log.lines}"
    print(f"watch: docker rm -f -> rule gone {(time.monotonic() - t0) * 1000:.0f} ms after `docker rm` returned")
    assert "--to-destination 192.0.2.2:80" in _loaded(daemon)  # c1 untouched
    assert not watcher.errors


@pytest.mark.docker
def test_watch_resyncs_after_daemon_restart(daemon, watcher):
    log = watcher.log
    daemon.docker("run", "-d", "--init", "--restart", "always", "--name", "keeper", "--network", "netB",
                  "-p", "8082:80", IMAGE, "sh", "-c", HTTPD.format(name="keeper"))
    assert _poll(lambda: "--dport 8082 " in _loaded(daemon), 2.0)
    syncs = watcher.syncs

    # Drift while the daemon is away: the table vanishes. The re-sync after reconnecting brings it back
    # (an incremental applier, sending only differences, would not).
    log.on_lost = lambda: engine.remove(daemon.netns, TABLE)
    try:
        daemon.restart()
        want = lambda: _compat(scenario_from_live(daemon.host, daemon.nftdocker_config))["ip"]  # noqa: E731

        def in_step() -> bool:
            try:
                return watcher.syncs > syncs and _loaded(daemon) == want()
            except Exception:  # noqa: BLE001 - the daemon may still be coming up
                return False

        if not _poll(in_step, 30, 0.1):
            import faulthandler

            faulthandler.dump_traceback(all_threads=True)  # where the watcher is, for the record
            pytest.fail("table not re-synced:\n" + "\n".join(log.lines[-10:])
                        + f"\nchanges: {watcher.changes[-3:]}\nwatcher errors: {watcher.errors!r}")
    finally:
        log.on_lost = None
    assert log.has("lost the Docker daemon") and log.has("sync (reconnected after ")
    assert watcher.reconnects >= 1
    loaded = _loaded(daemon)
    assert "--dport 8082 " in loaded  # keeper came back (restart policy)
    assert "--dport 8080 " not in loaded  # c1 was stopped with the daemon
    assert "hello-from-keeper" in _get(daemon, "198.51.100.1", 8082)
    assert not watcher.errors


@pytest.mark.docker
@pytest.mark.parametrize("logs", ["json", "text"])
def test_watch_command_stops_cleanly_on_sigterm(daemon, logs):
    """The log starts with the start sync; with --json an Engine that is not 28.x (Debian's
    docker.io is 20.10) is first one "warning" line, which in text mode goes to stderr only."""
    table = "nftdtsig"
    version = daemon.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    warning = engine_warning(daemon.host, version)
    p = subprocess.Popen(
        [sys.executable, "-m", "nftdocker", "watch", "--docker-host", daemon.host, "--netns", daemon.netns,
         "--table", table, "--daemon-config", daemon.nftdocker_config] + (["--json"] if logs == "json" else []),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if logs == "json":
            first = json.loads(p.stdout.readline())
            if warning is not None:
                assert (first["kind"], first["warning"]) == ("warning", warning), first
                first = json.loads(p.stdout.readline())
            assert first["kind"] == "sync" and first["reason"] == "start" and first["time"].endswith("Z")
        else:
            first = p.stdout.readline()
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ sync \(start\): ", first), first
        p.send_signal(signal.SIGTERM)
        rc = p.wait(5)
        rest = p.stdout.read().splitlines()
        err = p.stderr.read()
        assert rc == 0, err
        if logs == "json":
            assert json.loads(rest[-1])["kind"] == "stop"
        else:
            assert rest[-1].endswith("Z stopped; the table is left in place"), rest
        assert err == ("" if warning is None else f"nftdocker: warning: {warning}\n")  # once, in both modes
        assert "DNAT" in _loaded(daemon, table)  # left in place
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        p.stdout.close()
        p.stderr.close()
        engine.remove(daemon.netns, table)


# --------------------------------------------------------------------------- no daemon


@pytest.mark.parametrize("command", [["export"], ["watch", "--table", "nftdtabsent"], ["compat"], ["render"]])
def test_absent_daemon_is_one_line_and_exit_3(command, tmp_path):
    sock = f"unix://{tmp_path}/none.sock"
    t0 = time.monotonic()
    r = _cli(*command, "--docker-host", sock, timeout=30)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("nftdocker: cannot reach the Docker daemon: ") and "does not exist" in lines[0]
    assert time.monotonic() - t0 < 10


def test_unreachable_daemon_is_one_line_and_exit_3(tmp_path):
    import socket

    path = tmp_path / "refused.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # bound, never listening: connection refused
        r = _cli("watch", "--docker-host", str(path), "--table", "nftdtabsent", timeout=30)
    assert r.returncode == 3 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "nothing is listening" in r.stderr


# --------------------------------------------------------------------------- pure helpers


def test_describe_folds_a_containers_network_events():
    cid = "a" * 64
    batch = [
        {"type": "network", "action": "disconnect", "id": "n1", "attributes": {"name": "netA", "container": cid}},
        {"type": "container", "action": "die", "id": cid, "attributes": {"name": "web"}},
        {"type": "container", "action": "destroy", "id": cid, "attributes": {"name": "web"}},
        {"type": "network", "action": "create", "id": "n2", "attributes": {"name": "netC"}},
    ]
    assert _describe(batch) == "container die web, container destroy web, network create netC"


def test_rule_diff_counts_rules_per_chain():
    from nftdocker.scenario import load as sc

    a = generate(sc.load(ROOT / "rulesets" / "usernet-portmap" / "scenario.toml")).rulesets
    b = generate(sc.load(ROOT / "rulesets" / "multi" / "scenario.toml")).rulesets
    assert _rule_diff(a, a) == (0, 0)
    added, removed = _rule_diff({}, a)
    assert removed == 0 and added == sum(len(c.rules) for rs in a.values() for c in rs.chains.values()
                                         if c.nft_name != "filter-DOCKER-USER")
    plus, minus = _rule_diff(a, b)
    assert (minus, plus) == _rule_diff(b, a) and plus > 0


def test_a_sysctl_race_is_logged_not_fatal(monkeypatch):
    """A bridge port that vanishes while hairpin is set (pyroute2 raises) must not end the watcher."""
    from nftdocker.scenario import load as sc

    calls = []

    def racy(gen, netns):
        calls.append(netns)
        raise KeyError("veth0123456")

    monkeypatch.setattr(sysctl, "apply_sysctls", racy)
    lines: list[str] = []
    w = Watcher("unix:///nonexistent.sock", "nsx", TABLE, log=lines.append, sysctls=True)
    w._set_sysctls(generate(sc.load(ROOT / "rulesets" / "multi" / "scenario.toml")))
    assert calls == ["nsx", "nsx"]  # tried twice
    assert len(lines) == 1 and "sysctls: KeyError: 'veth0123456'; the rules are applied" in lines[0]
