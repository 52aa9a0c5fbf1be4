"""What an attacker or a careless operator tried (issue 11): user content is kept and never parsed
again, the lock is the namespace's, foreign tables are refused, the stored state is checked.

Each test runs in namespaces it makes (conftest's ``netns``); nothing touches the root namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, RULESETS, is_root, needs_netns, run_cli
from nftdocker.apply import engine
from nftdocker.apply.applier import IncrementalApplier
from nftdocker.nft import netns as namespaces
from nftdocker.nft import state, table
from nftdocker.errors import EnvironmentProblem, UsageError
from nftdocker.docker.generate import generate
from nftdocker.scenario.load import load

SEED = RULESETS / "usernet-portmap-noproxy" / "scenario.toml"
MULTI = RULESETS / "multi" / "scenario.toml"
INJECT = 'x"\n};}\nadd table ip pwned\ntable ip nftdocker{chain filter-DOCKER-USER{\ncounter comment "y'

kernel_test = [pytest.mark.netns, needs_netns]


def nft(ns: str, *args: str, check: bool = True) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r.stdout


def nft_json(ns: str, commands: list[dict]) -> None:
    """Send libnftables JSON commands inside ``ns`` (the only way to write a comment holding quotes)."""
    code = ("import json, sys, nftables; n = nftables.Nftables(); rc, _, err = n.json_cmd(json.loads(sys.stdin.read()));"
            " sys.exit(err if rc else 0)")
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], input=json.dumps({"nftables": commands}),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def user_rule(chain: str, expr: list, comment: str | None = None) -> dict:
    body = {"family": "ip", "table": "nftdocker", "chain": chain, "expr": expr}
    if comment is not None:
        body["comment"] = comment
    return {"insert": {"rule": body}}


def listed(ns: str) -> list[dict]:
    return json.loads(nft(ns, "-j", "list", "table", "ip", "nftdocker"))["nftables"]


def rules_of(objs: list[dict], chain: str) -> list[tuple]:
    """A chain's rules as (expr, comment), counters zeroed."""
    out = []
    for o in objs:
        r = o.get("rule")
        if r and r["chain"] == chain:
            out.append((json.dumps(r["expr"], sort_keys=True), r.get("comment")))
    return out


def own_rules(objs: list[dict]) -> dict[str, list]:
    """Our chains (not DOCKER-USER) as the kernel lists them: what a fresh apply must equal."""
    chains = [o["chain"]["name"] for o in objs if "chain" in o]
    return {c: rules_of(objs, c) for c in chains if table.is_own_chain(c) and c != table.USER_CHAIN}


# ---------------------------------------------------------------------- user rules, chains, sets


@pytest.mark.parametrize("comment", [INJECT, "line one\nline two", 'say "hi"; flush ruleset'])
@pytest.mark.netns
@needs_netns
def test_a_user_rule_comment_is_never_parsed_again(netns, comment):
    assert run_cli("apply", SEED, "--netns", netns).returncode == 0
    nft_json(netns, [user_rule("filter-DOCKER-USER", [{"counter": None}, {"accept": None}], comment)])
    before = rules_of(listed(netns), "filter-DOCKER-USER")
    for args in (["--replace"], [], ["--replace"]):
        r = run_cli("apply", MULTI, "--netns", netns, *args)
        assert r.returncode == 0, r.stderr
        tables = nft(netns, "list", "tables")
        assert "pwned" not in tables and tables.count("nftdocker") == 2, tables
        assert rules_of(listed(netns), "filter-DOCKER-USER") == before
    r = run_cli("apply", SEED, "--netns", netns, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["kept_user_rules"]["ip"] == 1


@pytest.mark.netns
@needs_netns
def test_user_chains_and_sets_are_kept_and_nothing_freezes(netns, tmp_path):
    other = f"{netns}-b"
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        assert run_cli("apply", SEED, "--netns", netns).returncode == 0
        nft(netns, "add", "chain", "ip", "nftdocker", "my-chain")
        nft(netns, "add", "rule", "ip", "nftdocker", "my-chain", "tcp", "dport", "22", "drop")
        nft(netns, "add", "set", "ip", "nftdocker", "blocked", "{ type ipv4_addr; elements = { 203.0.113.66 } ; }")
        nft(netns, "insert", "rule", "ip", "nftdocker", "filter-DOCKER-USER", "jump", "my-chain")
        nft(netns, "insert", "rule", "ip", "nftdocker", "filter-DOCKER-USER", "ip", "saddr", "@blocked", "drop")
        objs = listed(netns)
        mine = (rules_of(objs, "filter-DOCKER-USER"), rules_of(objs, "my-chain"),
                [o["set"]["elem"] for o in objs if "set" in o])
        for scenario, args in ((MULTI, []), (SEED, ["--replace"]), (MULTI, []), (MULTI, ["--replace"])):
            r = run_cli("apply", scenario, "--netns", netns, *args)
            assert r.returncode == 0, r.stderr  # today: "Device or resource busy"
            objs = listed(netns)
            assert (rules_of(objs, "filter-DOCKER-USER"), rules_of(objs, "my-chain"),
                    [o["set"]["elem"] for o in objs if "set" in o]) == mine
            assert run_cli("apply", scenario, "--netns", other, "--replace").returncode == 0
            assert own_rules(objs) == own_rules(listed(other))  # our chains as a fresh apply has them
        again = run_cli("apply", MULTI, "--netns", netns, "--json")
        assert json.loads(again.stdout)["mode"] == "noop"  # the in-place replace converged
    finally:
        subprocess.run(["ip", "netns", "del", other], check=False)


@pytest.mark.netns
@needs_netns
def test_watch_style_applier_keeps_user_chains(netns):
    gen = generate(load(SEED))
    engine.apply(gen, netns, replace=True, store=False)
    nft(netns, "add", "chain", "ip", "nftdocker", "my-chain")
    nft(netns, "insert", "rule", "ip", "nftdocker", "filter-DOCKER-USER", "jump", "my-chain")
    with IncrementalApplier(netns) as ap:
        ap.apply(generate(load(MULTI)))
        ap.apply(gen)
    engine.apply(gen, netns, replace=True, store=False)  # watch's full syncs
    assert "jump my-chain" in nft(netns, "list", "chain", "ip", "nftdocker", "filter-DOCKER-USER")


# ---------------------------------------------------------------------- foreign tables, names


@pytest.mark.netns
@needs_netns
def test_a_table_nftdocker_did_not_create_is_neither_replaced_nor_removed(netns):
    nft(netns, "add", "table", "ip", "kube-proxy")
    nft(netns, "add", "chain", "ip", "kube-proxy", "services")
    nft(netns, "add", "rule", "ip", "kube-proxy", "services", "ip", "daddr", "198.51.100.1", "accept")
    before = nft(netns, "list", "table", "ip", "kube-proxy")
    for args in (["apply", SEED, "--table", "kube-proxy"], ["apply", SEED, "--table", "kube-proxy", "--replace"],
                 ["remove", "--table", "kube-proxy"]):
        r = run_cli(*args, "--netns", netns)
        assert r.returncode == 2 and "was not created by nftdocker" in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert nft(netns, "list", "table", "ip", "kube-proxy") == before
    assert run_cli("apply", SEED, "--table", "mine", "--netns", netns).returncode == 0
    assert 'comment "managed by nftdocker"' in nft(netns, "list", "table", "ip", "mine")
    assert run_cli("remove", "--table", "mine", "--netns", netns).returncode == 0


@pytest.mark.parametrize("name", ["inet", "ip", "ip6"])
def test_a_family_is_not_a_table_name(name):
    for args in (["apply", SEED], ["remove"], ["render", SEED]):
        r = run_cli(*args, "--table", name)
        assert r.returncode == 2 and "family" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["../../tmp/nftdocker-x", ".", "..", "a/b", ""])
def test_netns_takes_names_not_paths(name, tmp_path):
    planted = Path("/tmp/nftdocker-x.lock")
    planted.unlink(missing_ok=True)
    r = run_cli("remove", "--netns", name)
    assert r.returncode == 2 and "not a network namespace name" in r.stderr, r.stderr
    assert not planted.exists()


# ---------------------------------------------------------------------- the lock


@pytest.mark.netns
@needs_netns
def test_the_lock_is_the_namespace_not_its_name(netns):
    code = ("import sys; from nftdocker import errors; from nftdocker.nft import netns as namespaces\n"
            "try:\n    with namespaces.lock(None, timeout=0.3): print('got it')\n"
            "except errors.EnvironmentProblem as e: print(e)")
    with namespaces.lock(netns):
        r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert "held the lock" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "got it" in r.stdout, r.stdout + r.stderr
    dev, ino = namespaces.netns_identity(netns)
    assert not (namespaces.LOCK_DIR / f"netns-{dev}-{ino}.lock").exists()  # no lock file piles up


@pytest.mark.netns
@needs_netns
def test_applies_by_name_and_from_inside_do_not_interleave(netns):
    a, b = MULTI, SEED
    procs = []
    for i in range(6):
        p = a if i % 2 else b
        cmd = [sys.executable, "-m", "nftdocker", "apply", str(p)]
        cmd = cmd + ["--netns", netns] if i % 2 else ["ip", "netns", "exec", netns, *cmd]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert run_cli("apply", a, "--netns", netns).returncode == 0
    shown = run_cli("show", "--netns", netns, "--format", "iptables").stdout
    assert shown == run_cli("compat", a).stdout  # one scenario's table, not a mix
    again = run_cli("apply", a, "--netns", netns, "--json")
    assert json.loads(again.stdout)["mode"] == "noop", again.stdout


def test_lock_gives_one_line_when_run_dir_is_unusable(tmp_path, monkeypatch):
    if not is_root():
        pytest.skip("the lock names the namespace's nsfs file, which needs /proc")
    f = tmp_path / "afile"
    f.write_text("")
    monkeypatch.setattr(namespaces, "LOCK_DIR", f)
    with pytest.raises(EnvironmentProblem, match="is not a directory"):
        with namespaces.lock(None):
            pass
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], check=True)
    try:
        monkeypatch.setattr(namespaces, "LOCK_DIR", ro / "nftdocker")
        with pytest.raises(EnvironmentProblem, match="Read-only file system"):
            with namespaces.lock(None):
                pass
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_cli_says_one_line_when_run_dir_is_a_file(tmp_path):
    if not is_root():
        pytest.skip("needs root")
    f = tmp_path / "afile"
    f.write_text("")
    code = (f"import sys; from nftdocker.nft import netns as namespaces; from nftdocker.cli import main as cli; namespaces.LOCK_DIR = __import__('pathlib').Path({str(f)!r});"
            f" sys.exit(cli.main(['remove', '--netns', 'nftd-none-such']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------------- the stored state


def _state_file(ns: str) -> Path:
    dev, ino = namespaces.netns_identity(ns)
    return state.STATE_DIR / f"{dev}-{ino}-nftdocker.json"


@pytest.mark.parametrize("damage", ["truncated", "types", "checkpoint", "chains", "not-json"])
@pytest.mark.netns
@needs_netns
def test_a_damaged_state_is_ignored_with_one_line(netns, damage, tmp_path):
    sc = tmp_path / "host.toml"
    sc.write_text(SEED.read_text())
    assert run_cli("apply", sc, "--netns", netns).returncode == 0
    path = _state_file(netns)
    d = json.loads(path.read_text())
    if damage == "truncated":
        path.write_text(path.read_text()[: len(path.read_text()) // 2])
    elif damage == "types":
        d["tables"]["ip"]["chains"] = {"a": 1}
        path.write_text(json.dumps(d))
    elif damage == "checkpoint":
        d["checkpoint"] = {"fingerprint": d["checkpoint"]["fingerprint"], "ipam": "garbage", "ports": 7}
        path.write_text(json.dumps(d))
    elif damage == "chains":
        d["tables"]["ip"]["chains"][0][4] = ["x"] * len(d["tables"]["ip"]["chains"][0][3])
        path.write_text(json.dumps(d))
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    # one container more: the resume path reads the checkpoint
    sc.write_text(SEED.read_text() + '\n[[containers]]\nname = "c9"\nnetworks = ["bridge1"]\npublish = ["9090:90"]\n')
    r = run_cli("apply", sc, "--netns", netns, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("ignoring the stored state") == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert run_cli("show", "--netns", netns, "--format", "iptables").stdout == run_cli("compat", sc).stdout


@pytest.mark.netns
@needs_netns
def test_a_forged_state_is_not_trusted(netns, tmp_path):
    assert run_cli("apply", SEED, "--netns", netns).returncode == 0
    path = _state_file(netns)
    seed_state = json.loads(path.read_text())
    assert run_cli("apply", MULTI, "--netns", netns).returncode == 0
    now = json.loads(path.read_text())
    forged = dict(seed_state, genid=now["genid"])  # the seed's view, dressed up as the current one
    for fam in ("ip", "ip6"):
        if forged["tables"].get(fam) and now["tables"].get(fam):
            forged["tables"][fam]["handle"] = now["tables"][fam]["handle"]
    path.write_text(json.dumps(forged))
    r = run_cli("apply", SEED, "--netns", netns, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["mode"] != "noop", out  # the kernel holds multi: the seed is not "already loaded"
    assert run_cli("show", "--netns", netns, "--format", "iptables").stdout == run_cli("compat", SEED).stdout
