"""watch restores its table when someone else removes or changes it (a real dockerd, tests/dockerd.py).

One daemon (--userland-proxy=false, iptables off) with one network and one container publishing a
port, one watcher. Each test changes the table with the `nft` command inside the daemon's
namespace, as a user or `systemctl restart nftables` would, and measures how long until the
table lists exactly as before again: after a rule is deleted from filter-DOCKER, after
`nft delete table ip nftdocker`, after `nft flush ruleset`. The user's own rules in
filter-DOCKER-USER (and, for the whole-table cases, a user chain they jump to) must come back
as they were, and the user's own changes must not be undone.
"""

from __future__ import annotations

import json
import re
import sys
import subprocess
import threading
import time

import pytest

pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")

try:
    from tests.dockerd import IMAGE, TestDaemon
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from dockerd import IMAGE, TestDaemon  # type: ignore[no-redef]

from conftest import RULESETS, needs_netns
from nftdocker.apply import engine
from nftdocker.docker.generate import generate
from nftdocker.live.heal import KernelWatch, read_user_state, restore
from nftdocker.scenario.load import load
from nftdocker.live.watch import Watcher

TABLE = "nftdocker"
LIMIT = 1.0  # seconds: the table must be back within this
TIMES: dict[str, float] = {}

docker = pytest.mark.docker


def nft(d: TestDaemon, *args: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", d.netns, "nft", *args], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout


def listing(d: TestDaemon) -> str:
    r = subprocess.run(["ip", "netns", "exec", d.netns, "nft", "list", "table", "ip", TABLE],
                       capture_output=True, text=True, timeout=10)
    return r.stdout if r.returncode == 0 else ""


def poll(cond, timeout: float, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    reason = TestDaemon.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with TestDaemon("--userland-proxy=false") as d:
        cfg = tmp_path_factory.mktemp("cfg") / "daemon.json"
        cfg.write_text(json.dumps({"userland-proxy": False, "iptables": False, "ip6tables": False}))
        d.nftdocker_config = str(cfg)  # type: ignore[attr-defined]
        d.docker("network", "create", "-o", "com.docker.network.bridge.name=netA", "--subnet", "192.0.2.0/24", "netA")
        d.docker("run", "-d", "--init", "--name", "c1", "--network", "netA", "-p", "8080:80", IMAGE, "sleep", "3600")
        yield d


@pytest.fixture(scope="module")
def watcher(daemon):
    log = Log()
    w = Watcher(daemon.host, daemon.netns, TABLE, daemon.nftdocker_config, log=log)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            w.run()
        except BaseException as e:  # noqa: BLE001 - reported by the tests
            errors.append(e)

    t = threading.Thread(target=run, name="watcher", daemon=True)
    t.start()
    assert poll(lambda: (w.syncs and w._kernel_watch is not None) or errors, 20, 0.05), "no first sync"
    assert not errors, errors
    w.log, w.errors = log, errors  # type: ignore[attr-defined]
    yield w
    w.stop()
    t.join(5)
    assert not t.is_alive()
    if TIMES:
        print("\nheal: table back after " + ", ".join(f"{k}: {v * 1000:.0f} ms" for k, v in TIMES.items()))


def remembered(w: Watcher, d: TestDaemon, rule: str) -> bool:
    """The watcher keeps filter-DOCKER-USER's rules exactly as the kernel lists them now (its JSON,
    handles dropped), and they include ``rule`` (nft's text of it)."""
    if rule not in nft(d, "list", "chain", "ip", TABLE, "filter-DOCKER-USER"):
        return False
    listed = json.loads(nft(d, "-j", "list", "chain", "ip", TABLE, "filter-DOCKER-USER"))["nftables"]
    rules = [{k: v for k, v in o["rule"].items() if k != "handle"} for o in listed if "rule" in o]
    st = w._kept.get("ip")
    return st is not None and st.user_rules == rules


def restored_within(d: TestDaemon, w: Watcher, change: tuple[str, ...], want: str, name: str) -> str:
    """Make the change with `nft`; the table must list as ``want`` again within LIMIT of the
    command's return, with one log line saying so (returned)."""
    n = len(w.log.lines)
    nft(d, *change)
    t0 = time.monotonic()
    back = poll(lambda: listing(d) == want, 3 * LIMIT)
    took = time.monotonic() - t0
    TIMES[name] = took
    assert back, f"table not restored within {3 * LIMIT:g} s:\n{listing(d)}\nlog: {w.log.lines[-5:]}"
    assert took < LIMIT, f"{name}: restored after {took:.3f} s"
    assert poll(lambda: len(w.log.lines) > n, 1.0), "nothing logged"
    time.sleep(0.2)  # nothing more happens: one line, and the table stays
    assert listing(d) == want
    lines = w.log.lines[n:]
    assert len(lines) == 1 and "restored" in lines[0], lines
    print(f"\n{name}: back {took * 1000:.0f} ms after the command returned; {lines[0]}")
    assert not w.errors
    return lines[0]


@docker
def test_a_rule_deleted_from_filter_docker_is_put_back(daemon, watcher):
    nft(daemon, "insert", "rule", "ip", TABLE, "filter-DOCKER-USER", "ip", "saddr", "203.0.113.0/24", "drop")
    assert poll(lambda: remembered(watcher, daemon, "ip saddr 203.0.113.0/24 drop"), 1.0)  # the user's change is kept, not undone
    want = listing(daemon)
    assert "ip saddr 203.0.113.0/24 drop" in want and "dnat to 192.0.2.2:80" in want
    out = nft(daemon, "-a", "list", "chain", "ip", TABLE, "filter-DOCKER")
    handle = re.search(r"\baccept # handle (\d+)", out)
    assert handle, out
    line = restored_within(daemon, watcher, ("delete", "rule", "ip", TABLE, "filter-DOCKER", "handle", handle.group(1)),
                           want, "rule deleted from filter-DOCKER")
    assert " rule deleted from filter-DOCKER by nft[" in line or " rule deleted from filter-DOCKER by pid " in line


@docker
def test_a_rule_added_to_nat_docker_is_taken_out(daemon, watcher):
    want = listing(daemon)
    line = restored_within(daemon, watcher, ("insert", "rule", "ip", TABLE, "nat-DOCKER", "tcp", "dport", "2222",
                                             "dnat", "to", "192.0.2.99:22"), want, "rule added to nat-DOCKER")
    assert " rule added to nat-DOCKER by " in line and ": +0 -1 rules (" in line


@docker
def test_a_deleted_table_comes_back_with_the_users_rules_and_chain(daemon, watcher):
    nft(daemon, "add", "chain", "ip", TABLE, "mine")
    nft(daemon, "add", "rule", "ip", TABLE, "mine", "tcp", "dport", "22", "drop")
    nft(daemon, "insert", "rule", "ip", TABLE, "filter-DOCKER-USER", "jump", "mine")
    assert poll(lambda: remembered(watcher, daemon, "jump mine"), 1.0)
    want = listing(daemon)
    assert "chain mine {" in want and "jump mine" in want
    line = restored_within(daemon, watcher, ("delete", "table", "ip", TABLE), want, "nft delete table ip nftdocker")
    assert "table ip nftdocker deleted by " in line
    assert "restored with 2 DOCKER-USER rules, 1 user chain: +" in line


@docker
def test_flush_ruleset_is_undone_for_nftdockers_table(daemon, watcher):
    nft(daemon, "add", "table", "inet", "filter")  # the host's own table, as /etc/nftables.conf makes it
    want = listing(daemon)
    assert "chain mine {" in want
    line = restored_within(daemon, watcher, ("flush", "ruleset"), want, "nft flush ruleset")
    assert "ruleset flushed by " in line
    # only nftdocker's table is restored; the host's own stays as the flush left it
    assert "table inet filter" not in nft(daemon, "list", "ruleset")


# --------------------------------------------------------------------------- without a daemon


def _ns_nft(ns: str, *args: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.netns
@needs_netns
def test_the_users_part_is_put_back_in_order_with_a_recreated_table(netns):
    gen = generate(load(RULESETS / "usernet-portmap-noproxy" / "scenario.toml"))
    engine.apply(gen, netns, replace=True, store=False)
    _ns_nft(netns, "add", "chain", "ip", TABLE, "mine", "{ type filter hook forward priority 10; policy accept; }")
    _ns_nft(netns, "add", "chain", "ip", TABLE, "other")
    _ns_nft(netns, "add", "rule", "ip", TABLE, "other", "udp", "dport", "53", "accept")
    _ns_nft(netns, "add", "rule", "ip", TABLE, "mine", "ip", "daddr", "198.51.100.7", "jump", "other")
    _ns_nft(netns, "insert", "rule", "ip", TABLE, "filter-DOCKER-USER", "ip", "saddr", "203.0.113.0/24", "drop")
    _ns_nft(netns, "insert", "rule", "ip", TABLE, "filter-DOCKER-USER", "jump", "other")
    _ns_nft(netns, "add", "rule", "ip", TABLE, "filter-DOCKER-USER", "counter")  # after the return
    before = _ns_nft(netns, "list", "table", "ip", TABLE)
    st = read_user_state(netns, TABLE, gen)
    assert st["ip"].count() == (3, 2) and [c["name"] for c in st["ip"].chains] == ["mine", "other"]
    assert "ip6" in st and st["ip6"].count() == (0, 0)
    _ns_nft(netns, "delete", "table", "ip", TABLE)
    done = restore(gen, netns, TABLE, None, st)
    assert (done.mode, done.families, done.user_rules, done.user_chains) == ("full", ["ip"], 3, 2)
    assert _ns_nft(netns, "list", "table", "ip", TABLE) == before


@pytest.mark.netns
@needs_netns
def test_a_user_comment_goes_back_as_it_was_never_as_text(netns):
    gen = generate(load(RULESETS / "usernet-portmap-noproxy" / "scenario.toml"))
    engine.apply(gen, netns, replace=True, store=False)
    nasty = 'x"\n};}\nadd table ip pwned\ntable ip nftdocker{chain filter-DOCKER-USER{\ncounter comment "y'
    code = ("import json, sys, nftables; n = nftables.Nftables(); rc, _, e = n.json_cmd(json.loads(sys.argv[1])); sys.exit(e if rc else 0)")
    cmd = {"nftables": [{"insert": {"rule": {"family": "ip", "table": TABLE, "chain": "filter-DOCKER-USER",
                                             "expr": [{"accept": None}], "comment": nasty}}}]}
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, json.dumps(cmd)], check=True)
    st = read_user_state(netns, TABLE, gen)
    _ns_nft(netns, "flush", "ruleset")
    restore(gen, netns, TABLE, None, st)
    assert "pwned" not in _ns_nft(netns, "list", "tables")
    listed = json.loads(_ns_nft(netns, "-j", "list", "chain", "ip", TABLE, "filter-DOCKER-USER"))["nftables"]
    assert [o["rule"].get("comment") for o in listed if "rule" in o] == [nasty, None]


@pytest.mark.netns
@needs_netns
def test_kernel_watch_reports_other_processes_commits_only(netns):
    gen = generate(load(RULESETS / "usernet-portmap-noproxy" / "scenario.toml"))
    seen: list = []
    kw = KernelWatch(netns, TABLE, seen.append)
    try:
        engine.apply(gen, netns, replace=True, store=False)  # this process's own commit
        _ns_nft(netns, "add", "table", "inet", "filter")  # another table
        time.sleep(0.3)
        assert seen == []
        _ns_nft(netns, "delete", "rule", "ip", TABLE, "filter-DOCKER-USER", "handle",
                re.search(r"return # handle (\d+)", _ns_nft(netns, "-a", "list", "chain", "ip", TABLE,
                                                               "filter-DOCKER-USER")).group(1))
        assert poll(lambda: seen, 1.0)
        (t,) = seen
        assert t.describe(TABLE).startswith("rule deleted from filter-DOCKER-USER by ")
        _ns_nft(netns, "flush", "ruleset")
        assert poll(lambda: len(seen) == 2, 1.0)
        assert seen[1].describe(TABLE).startswith("ruleset flushed by ")
    finally:
        kw.close()
