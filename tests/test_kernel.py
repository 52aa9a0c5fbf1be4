"""apply / remove / show against the real kernel, each test in a fresh network namespace.

The guarantees of issue 3: one transaction (all or nothing), only our own tables, DOCKER-USER
survives, idempotent, round trip through the kernel's own listing, safe together, clear failures.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import CASES, COMPAT, ROOT, RULESETS, needs_netns, run_cli, sent_after
from nftdocker.cli import main as cli
from nftdocker.apply import engine
from nftdocker.nft import listing, table
from nftdocker.nft.backend import Nft
from nftdocker.nft.transaction import Transaction, rule
from nftdocker.compat.translate import compat_text
from nftdocker.errors import ApplyError, EnvironmentProblem, UsageError
from nftdocker.docker.generate import generate
from nftdocker.scenario.load import load

pytestmark = [pytest.mark.netns, needs_netns]


def gen_of(case):
    return generate(load(RULESETS / case / "scenario.toml"))


def nft(ns, *args, check=True):
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("case", CASES)
def test_round_trip_through_the_kernel(case, netns):
    engine.apply(gen_of(case), netns, replace=True, store=False)
    objs = listing.list_objects(netns)
    assert compat_text(objs, "ip") == (COMPAT / case / "iptables-save.txt").read_text()
    assert compat_text(objs, "ip6") == (COMPAT / case / "ip6tables-save.txt").read_text()
    ruleset = nft(netns, "-j", "list", "ruleset")
    assert '"xt"' not in ruleset and "xt " not in nft(netns, "list", "ruleset")


def test_show_iptables_equals_compat_of_scenario(netns):
    r = run_cli("apply", RULESETS / "multi" / "scenario.toml", "--netns", netns)
    assert r.returncode == 0, r.stderr
    shown = run_cli("show", "--netns", netns, "--format", "iptables")
    assert shown.stdout == (COMPAT / "multi" / "iptables-save.txt").read_text()
    live = run_cli("compat", "--netns", netns, "--ipv6")
    assert live.stdout == (COMPAT / "multi" / "ip6tables-save.txt").read_text()


def test_idempotent(netns):
    g = gen_of("multi")
    engine.apply(g, netns, replace=True, store=False)
    first = nft(netns, "list", "ruleset")
    engine.apply(g, netns, replace=True, store=False)
    assert nft(netns, "list", "ruleset") == first


def test_check_changes_nothing(netns):
    engine.apply(gen_of("usernet-portmap"), netns, replace=True, store=False)
    before = nft(netns, "list", "ruleset")
    res = engine.apply(gen_of("multi"), netns, check=True, replace=True, store=False)
    assert res.checked
    assert nft(netns, "list", "ruleset") == before


def test_refused_transaction_leaves_previous_table_byte_identical(netns, monkeypatch):
    engine.apply(gen_of("usernet-portmap"), netns, replace=True, store=False)
    before = nft(netns, "list", "ruleset")
    # A loop (DOCKER-CT -> DOCKER-FORWARD -> DOCKER-CT) passes nft's parser; only the kernel refuses it.
    loop = Transaction([rule("add", "ip", "nftdocker", "filter-DOCKER-CT", "jump filter-DOCKER-FORWARD", "test: injected loop")])
    sent_after(monkeypatch, loop)
    with pytest.raises(ApplyError) as e:
        engine.apply(gen_of("multi"), netns, replace=True, store=False)
    assert "test: injected loop" in str(e.value)
    assert "nothing changed" in str(e.value)
    assert e.value.exit_status == 3
    assert nft(netns, "list", "ruleset") == before


def test_refusal_exits_3_from_the_cli(netns, monkeypatch, capsys):
    loop = Transaction([rule("add", "ip", "nftdocker", "filter-DOCKER-CT", "jump filter-DOCKER-FORWARD", "test: injected loop")])
    sent_after(monkeypatch, loop)
    rc = cli.main(["apply", str(RULESETS / "multi" / "scenario.toml"), "--netns", netns])
    err = capsys.readouterr().err
    assert rc == 3
    assert err.count("\n") == 1 and "refused" in err and "injected loop" in err
    assert nft(netns, "list", "ruleset") == ""


def test_only_our_tables_are_touched(netns):
    nft(netns, "add", "table", "inet", "filter")
    nft(netns, "add", "chain", "inet", "filter", "input", "{ type filter hook input priority 0; policy accept; }")
    nft(netns, "add", "rule", "inet", "filter", "input", "tcp", "dport", "22", "accept")
    for args in (["-A", "FORWARD", "-s", "203.0.113.7", "-j", "DROP"], ["-t", "nat", "-A", "POSTROUTING", "-o", "eth9", "-j", "MASQUERADE"]):
        subprocess.run(["ip", "netns", "exec", netns, "iptables-nft", *args], check=True)
    others = {t: nft(netns, "list", "table", *t.split()) for t in ("inet filter", "ip filter", "ip nat")}
    engine.apply(gen_of("multi"), netns, replace=True, store=False)
    engine.apply(gen_of("usernet-portmap-noproxy"), netns, replace=True, store=False)
    assert {t: nft(netns, "list", "table", *t.split()) for t in others} == others
    assert engine.remove(netns) == ["ip", "ip6"]
    assert {t: nft(netns, "list", "table", *t.split()) for t in others} == others
    assert "nftdocker" not in nft(netns, "list", "tables")


def test_docker_user_rules_survive_in_order(netns):
    engine.apply(gen_of("multi"), netns, replace=True, store=False)
    nft(netns, "insert", "rule", "ip", "nftdocker", "filter-DOCKER-USER", "ip", "saddr", "198.51.100.9", "drop")
    nft(netns, "insert", "rule", "ip", "nftdocker", "filter-DOCKER-USER", "iifname", "eth0", "tcp", "dport", "22", "drop")
    before = nft(netns, "list", "chain", "ip", "nftdocker", "filter-DOCKER-USER")
    res = engine.apply(gen_of("usernet-portmap"), netns, replace=True, store=False)
    assert res.kept_user_rules["ip"] == 2
    assert nft(netns, "list", "chain", "ip", "nftdocker", "filter-DOCKER-USER") == before
    engine.apply(gen_of("usernet-portmap"), netns, replace=True, store=False)
    assert nft(netns, "list", "chain", "ip", "nftdocker", "filter-DOCKER-USER") == before
    save = compat_text(listing.list_objects(netns), "ip")
    assert "-A DOCKER-USER -i eth0 -p tcp -m tcp --dport 22 -j DROP\n-A DOCKER-USER -s 198.51.100.9/32 -j DROP\n-A DOCKER-USER -j RETURN" in save


def test_two_applies_at_once_do_not_interleave(netns):
    a = RULESETS / "multi" / "scenario.toml"
    b = RULESETS / "usernet-portmap-noproxy" / "scenario.toml"
    procs = [subprocess.Popen([sys.executable, "-m", "nftdocker", "apply", str(p), "--netns", netns], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for p in (a, b, a, b)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    got = compat_text(listing.list_objects(netns), "ip")
    assert got in ((COMPAT / "multi" / "iptables-save.txt").read_text(), (COMPAT / "usernet-portmap-noproxy" / "iptables-save.txt").read_text())


def test_family_without_rules_is_removed(netns, tmp_path):
    engine.apply(gen_of("usernet-portmap"), netns, replace=True, store=False)
    sc = tmp_path / "no6.toml"
    sc.write_text((RULESETS / "usernet-portmap" / "scenario.toml").read_text().replace("[[networks]]", "[daemon]\nip6tables = false\n\n[[networks]]", 1))
    res = engine.apply(generate(load(sc)), netns, replace=True, store=False)
    assert res.removed == ["ip6"]
    assert "ip6" not in nft(netns, "list", "tables")


def test_no_such_namespace_exits_3():
    r = run_cli("apply", RULESETS / "multi" / "scenario.toml", "--netns", "nftdocker-does-not-exist")
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "no network namespace" in r.stderr


def test_not_root_exits_3(netns):
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "nftdocker",
                        "apply", str(RULESETS / "multi" / "scenario.toml")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 3, r.stderr
    assert r.stderr.count("\n") == 1 and "root" in r.stderr and "Traceback" not in r.stderr


def test_missing_libnftables_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "nftables", None)
    with pytest.raises(EnvironmentProblem, match="python3-nftables"):
        Nft()


def test_bad_scenario_applies_nothing(netns, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[networks]]\nname = "n"\nsubnets = ["10.0.0.0/33"]\n')
    r = run_cli("apply", bad, "--netns", netns)
    assert r.returncode == 2
    assert nft(netns, "list", "ruleset") == ""


def test_refuses_tables_it_does_not_own():
    with pytest.raises(UsageError):
        table.check_table_name("filter")


def test_sysctls_are_set_and_reported(netns):
    subprocess.run(["ip", "-n", netns, "link", "add", "bridge1", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "add", "vethA", "type", "veth", "peer", "name", "vethB"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "vethA", "master", "bridge1"], check=True)
    r = run_cli("apply", RULESETS / "usernet-portmap-noproxy" / "scenario.toml", "--netns", netns, "--sysctls", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["sysctls"]
    assert any(l.startswith("net.ipv4.conf.bridge1.route_localnet = 1") for l in report)
    assert "hairpin on bridge1 port vethA" in report
    val = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/sys/net/ipv4/conf/bridge1/route_localnet"], capture_output=True, text=True)
    assert val.stdout.strip() == "1"


def test_apply_resumes_when_containers_are_appended(netns, tmp_path):
    subprocess.run(["ip", "-n", netns, "link", "add", "bridge1", "type", "bridge"], check=True)
    host = tmp_path / "host.toml"
    text = (RULESETS / "usernet-portmap-noproxy" / "scenario.toml").read_text()
    host.write_text(text)
    first = json.loads(run_cli("apply", host, "--netns", netns, "--json").stdout)
    assert (first["mode"], first["generation"], first["replayed_containers"]) == ("full", "full", 0)
    host.write_text(text + '\n[[containers]]\nname = "late"\nnetworks = ["bridge1"]\npublish = ["8081:81"]\n')
    r = run_cli("apply", host, "--netns", netns, "--sysctls", "--json")
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    assert (second["mode"], second["generation"], second["replayed_containers"]) == ("incremental", "resumed", 1)
    assert second["commands"] == 4  # raw DROP, DNAT, hairpin MASQUERADE, filter ACCEPT
    assert any(l.startswith("net.ipv4.conf.bridge1.route_localnet = 1") for l in second["sysctls"])
    r = run_cli("compat", "--netns", netns)
    assert r.stdout == run_cli("compat", host).stdout
    r = run_cli("apply", host, "--netns", netns)
    assert "already up to date" in r.stdout and "1 new container" not in r.stdout
