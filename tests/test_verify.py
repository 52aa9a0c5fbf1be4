"""nftdocker verify: the probe plan (pure), the report, the CLI, and with root the namespaces themselves.

The netns tests build two Docker hosts in network namespaces per case (addresses from the test
plan only: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 172.17.0.0/16, 2001:db8::/32) and
remove them again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from nftdocker.verify import agent
from nftdocker.verify.plan import ECHO_PORT, PREFIX, Probe, plan
from nftdocker.verify.report import KERNEL_ONLY_NOTE, Outcome, Report, Row
from nftdocker.verify.run import legacy_texts, verify, without_rule
from nftdocker.verify.session import Session
from nftdocker.docker.generate import generate, sysctl_path
from nftdocker.nft.ir import Dnat, Masquerade, Verdict
from nftdocker.scenario.load import load

from conftest import ROOT as REPO
from conftest import SHARED_REFERENCE as REFERENCE

SEED = "usernet-portmap-noproxy"


def _case_dirs() -> dict[str, Path]:
    """Case name -> directory holding scenario.toml: rulesets/ first, then shared/reference/."""
    out: dict[str, Path] = {}
    for base in (REPO / "rulesets", REFERENCE):
        for f in sorted(base.glob("*/scenario.toml")):
            out.setdefault(f.parent.name, f.parent)
    return out


CASES = _case_dirs()


def _gen(case_or_path: str | Path):
    p = Path(case_or_path)
    if not p.suffix:
        p = CASES[str(case_or_path)] / "scenario.toml"
    return generate(load(str(p)))


def _main(argv: list[str]) -> int:
    from nftdocker.cli import main as cli

    return cli.main(argv)


def _write(tmp_path: Path, name: str, text: str) -> str:
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return str(f)


TWO_NETS_NOPROXY = """\
    [daemon]
    userland-proxy = false

    [[networks]]
    name = "bridge1"
    subnets = ["192.0.2.0/24"]
    options = { "com.docker.network.bridge.name" = "bridge1" }

    [[networks]]
    name = "bridge2"
    subnets = ["198.51.100.0/24"]
    options = { "com.docker.network.bridge.name" = "bridge2" }

    [[containers]]
    name = "c1"
    networks = ["bridge1"]
    publish = ["8080:80"]

    [[containers]]
    name = "c2"
    networks = ["bridge2"]
"""


# ---------------------------------------------------------------------- the plan (no root needed)


def test_seed_plan_probes_each_path():
    p = plan(_gen(SEED))
    got = {(pr.kind, pr.src, pr.addr, pr.port, pr.proto) for pr in p.probes}
    assert ("published", "outside", "203.0.113.1", 8080, "tcp") in got
    assert ("published", "host", "203.0.113.1", 8080, "tcp") in got
    assert ("published", "host", "192.0.2.1", 8080, "tcp") in got
    assert ("loopback", "host", "127.0.0.1", 8080, "tcp") in got
    assert ("hairpin", "c1", "203.0.113.1", 8080, "tcp") in got
    assert ("direct", "outside", "192.0.2.2", 80, "tcp") in got
    assert ("direct", "outside", "192.0.2.2", p.unpublished, "tcp") in got
    assert ("egress", "c1", "203.0.113.2", ECHO_PORT, "tcp") in got
    assert ("egress", "c1", "203.0.113.2", ECHO_PORT, "udp") in got
    assert [pr.kind for pr in p.probes[:2]] == ["control", "control"]
    # hairpin on c1's bridge port, route_localnet on the bridges: Docker's sysctls without the proxy
    assert [l.hairpin for l in p.links] == [True]
    assert ("net.ipv4.conf.bridge1.route_localnet", "1") in p.host_sysctls
    assert p.routes["c1"] == ["192.0.2.1"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_is_consistent(case):
    gen = _gen(case)
    p = plan(gen)
    assert p == plan(gen)  # deterministic
    assert [pr.id for pr in p.probes] == list(range(1, len(p.probes) + 1))
    assert len({(pr.src, pr.addr, pr.port, pr.proto) for pr in p.probes}) == len(p.probes)
    nodes = set(p.nodes())
    listening = {(proto, addr, port) for srv in p.servers.values() for (proto, addr, port) in srv}
    for pr in p.probes:
        assert pr.src in nodes
        if pr.dst not in ("host", "outside") and pr.port != p.unpublished:
            assert (pr.proto, pr.addr, pr.port) in listening, pr  # a container port probed is served
    assert len(p.links) == len(gen.endpoints)
    assert all(len(l.host_if) <= 15 for l in p.links)


def test_multi_plan_has_isolation_and_both_protocols():
    p = plan(_gen("multi"))
    kinds = {pr.kind for pr in p.probes}
    assert {"control", "published", "loopback", "hairpin", "direct", "host-direct", "egress", "isolation"} <= kinds
    assert {pr.proto for pr in p.probes if pr.kind == "published"} == {"tcp", "udp"}
    iso = {(pr.src, pr.dst) for pr in p.probes if pr.kind == "isolation"}
    assert iso == {(a, b) for a in ("c1", "c2", "c3") for b in ("c1", "c2", "c3") if a != b}


def test_internal_only_container_gets_a_route_to_its_gateway():
    p = plan(_gen("usernet-internal"))
    assert p.routes["c1"] == ["192.0.2.1"] and p.routes["c2"] == ["198.51.100.1"]


def test_uplink_avoids_the_scenario_subnets(tmp_path):
    sc = _write(tmp_path, "s.toml", """\
        [[networks]]
        name = "a"
        subnets = ["203.0.113.0/24", "2001:db8:ffff::/64"]
        ipv6 = true
        options = { "com.docker.network.bridge.name" = "br-a" }

        [[networks]]
        name = "b"
        subnets = ["198.51.100.0/25"]
        options = { "com.docker.network.bridge.name" = "br-b" }

        [[containers]]
        name = "c1"
        networks = ["a", "b"]
        publish = ["8080:80"]
    """)
    p = plan(_gen(sc))
    assert str(p.uplink4[0]) == "192.0.2.1/24" and str(p.uplink4[1]) == "192.0.2.2/24"
    assert str(p.uplink6[0]) == "2001:db8:fffe::1/64"
    assert [(l.peer_if, l.bridge) for l in p.links] == [("eth0", "br-a"), ("eth1", "br-b")]
    assert p.routes["c1"] == ["203.0.113.1", "2001:db8:ffff::1"]  # the first network is the gateway endpoint


def test_sysctl_path_keeps_interface_names_whole():
    assert sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert sysctl_path("net.ipv4.conf.br.1.route_localnet") == "/proc/sys/net/ipv4/conf/br.1/route_localnet"
    assert sysctl_path("net.bridge.bridge-nf-call-iptables") == "/proc/sys/net/bridge/bridge-nf-call-iptables"


def test_report_names_the_probe_that_differs():
    a = Probe(1, "published", "outside", "host", "203.0.113.1", 8080, "tcp")
    b = Probe(2, "egress", "c1", "outside", "2001:db8:ffff::2", 7, "udp")
    rows = [Row(a, Outcome("open", "c1:80", "203.0.113.2"), Outcome("timeout")),
            Row(b, Outcome("open", "outside:7", "2001:db8:ffff::1"), Outcome("open", "outside:7", "2001:db8:ffff::1"))]
    r = Report("s.toml", {"ip": "x"}, rows, ["nftdv-1-L-host"], False, 1.5)
    assert not r.ok and [x.probe.id for x in r.differences] == [1]
    text = r.text()
    assert "DIFFERS #1 published outside -> host 203.0.113.1:8080/tcp: legacy open c1:80 (saw 203.0.113.2), nft timeout" in text
    assert "2 probes: 1 agree, 1 differ" in text and KERNEL_ONLY_NOTE in text
    assert "c1 -> outside" not in text and "outside [2001:db8:ffff::2]:7/udp" in text
    j = r.to_json()
    assert j["ok"] is False and j["summary"]["differ"] == ["#1 published outside -> host 203.0.113.1:8080/tcp"]
    assert j["probes"][1]["agree"] is True
    json.dumps(j)


def test_agent_probe_client_sees_open_refused_and_the_peer():
    """The agent's server and client, on this namespace's loopback only."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    threading.Thread(target=agent._serve_tcp, args=(srv, "c9"), daemon=True).start()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    uport = u.getsockname()[1]
    threading.Thread(target=agent._serve_udp, args=(u, "c9"), daemon=True).start()
    got = agent._probe_one({"proto": "tcp", "addr": "127.0.0.1", "port": port}, 2.0)
    assert got == {"result": "open", "served": f"c9:{port}", "seen": "127.0.0.1", "local": "127.0.0.1"}
    assert agent._probe_one({"proto": "udp", "addr": "127.0.0.1", "port": uport}, 2.0)["served"] == f"c9:{uport}"
    srv.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    cport = closed.getsockname()[1]
    closed.close()
    assert agent._probe_one({"proto": "tcp", "addr": "127.0.0.1", "port": cport}, 2.0)["result"] == "refused"
    assert agent._probe_one({"proto": "udp", "addr": "127.0.0.1", "port": cport}, 2.0)["result"] == "refused"


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert _main(["verify", str(tmp_path / "missing.toml")]) == 2
    sc = str(CASES[SEED] / "scenario.toml")
    assert _main(["verify", sc, "--reference", str(tmp_path / "missing.txt")]) == 2
    junk = _write(tmp_path, "junk.txt", "no rules here\n")
    assert _main(["verify", sc, "--reference", junk]) == 2
    assert _main(["verify", sc, "--timeout", "0"]) == 2
    assert "nftdocker:" in capsys.readouterr().err


def test_cli_without_root_exits_3(capsys):
    with mock.patch.object(os, "geteuid", return_value=1000):
        assert _main(["verify", str(CASES[SEED] / "scenario.toml")]) == 3
    assert "root" in capsys.readouterr().err


# ---------------------------------------------------------------------- namespaces (root)


def _missing_tools() -> list[str]:
    return [t for t in ("ip", "nft", "iptables-legacy-restore", "ip6tables-legacy-restore")
            if not (shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin"))]


@pytest.fixture
def netns_ok():
    if os.geteuid() != 0:
        pytest.skip("needs root: verify builds network namespaces")
    if _missing_tools():
        pytest.skip(f"needs {', '.join(_missing_tools())}")
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        pytest.skip("needs pyroute2")
    before = _ours()
    yield
    assert _ours() == before, "verify left namespaces behind"


def _ours(pid: int | None = None) -> set[str]:
    prefix = f"{PREFIX}-{pid or os.getpid()}"
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return set()
    return {n for n in names if n == prefix or n.startswith(prefix + "-") or n.startswith(prefix + ".")}


@pytest.mark.netns
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_case_verifies(netns_ok, case, capsys):
    assert _main(["verify", str(CASES[case] / "scenario.toml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["summary"]["differ"] == []
    assert report["probes"][0]["legacy"]["result"] == "open"  # the control probe went through


@pytest.mark.netns
@pytest.mark.parametrize("case", sorted(c for c in CASES if (REFERENCE / c / "iptables-save.txt").exists()))
def test_real_docker_rules_behave_like_the_nft_table(netns_ok, case, capsys):
    """The legacy side holds what Docker 28.0.1 itself programmed (shared/reference captures)."""
    d = REFERENCE / case
    argv = ["verify", str(CASES[case] / "scenario.toml"), "--reference", str(d / "iptables-save.txt")]
    if (d / "ip6tables-save.txt").exists():
        argv += ["--reference6", str(d / "ip6tables-save.txt")]
    assert _main(argv) == 0, capsys.readouterr().out


def _drop_lines(text: str, needle: str) -> str:
    lines = text.splitlines()
    kept = [l for l in lines if needle not in l]
    assert len(kept) == len(lines) - 1, f"{needle!r} should match exactly one rule"
    return "\n".join(kept) + "\n"


@pytest.mark.netns
def test_legacy_without_dnat_is_caught(netns_ok, tmp_path, capsys):
    gen = _gen(SEED)
    text4, _, _ = legacy_texts(gen, "nftdocker")
    ref = tmp_path / "iptables-save.txt"
    ref.write_text(_drop_lines(text4, "-j DNAT"))
    assert _main(["verify", str(CASES[SEED] / "scenario.toml"), "--reference", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS #3 published outside -> host 203.0.113.1:8080/tcp: legacy refused, nft open c1:80" in out
    assert "differ (" in out.splitlines()[-1]


@pytest.mark.netns
def test_nft_without_dnat_is_caught(netns_ok):
    gen = _gen(SEED)
    key = ("nat", "DOCKER")
    i = next(i for i, r in enumerate(gen.rulesets["ip"].chains[key].rules) if isinstance(r.action, Dnat))
    r = verify(gen, nft_gen=without_rule(gen, "ip", key, i))
    got = {row.probe.describe(): (row.legacy.result, row.nft.result) for row in r.differences}
    assert got["#3 published outside -> host 203.0.113.1:8080/tcp"] == ("open", "refused")
    assert got["#7 hairpin c1 -> host 203.0.113.1:8080/tcp"] == ("open", "refused")


@pytest.mark.netns
def test_masquerade_turned_into_nothing_is_caught(netns_ok, tmp_path, capsys):
    gen = _gen(SEED)
    text4, _, _ = legacy_texts(gen, "nftdocker")
    ref = tmp_path / "iptables-save.txt"
    ref.write_text(_drop_lines(text4, "-s 192.0.2.0/24 ! -o bridge1 -j MASQUERADE"))
    assert _main(["verify", str(CASES[SEED] / "scenario.toml"), "--reference", str(ref), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    egress = {p["id"]: p for p in report["probes"] if p["kind"] == "egress"}
    assert {p["proto"] for p in egress.values() if not p["agree"]} == {"tcp", "udp"}
    for p in egress.values():
        assert p["legacy"]["seen"] == "192.0.2.2" and p["nft"]["seen"] == "203.0.113.1"
    assert any("egress c1 -> outside 203.0.113.2:7/tcp" in d for d in report["summary"]["differ"])


@pytest.mark.netns
def test_nft_without_an_isolation_rule_is_caught(netns_ok, tmp_path):
    """Without the proxy, c2 reaching c1's published port through the host is stopped by isolation alone."""
    gen = _gen(_write(tmp_path, "two.toml", TWO_NETS_NOPROXY))
    key = ("filter", "DOCKER-ISOLATION-STAGE-2")
    rules = gen.rulesets["ip"].chains[key].rules
    i = next(i for i, r in enumerate(rules) if isinstance(r.action, Verdict) and "bridge1" in repr(r.matches))
    r = verify(gen, nft_gen=without_rule(gen, "ip", key, i))
    got = {row.probe.describe(): (row.legacy.text(), row.nft.text()) for row in r.differences}
    assert got == {"#7 published c2 -> host 203.0.113.1:8080/tcp": ("timeout", "open c1:80")}


@pytest.mark.netns
def test_nft_without_the_icc_drop_is_caught(netns_ok, tmp_path):
    gen = _gen(_write(tmp_path, "noicc.toml", """\
        [[networks]]
        name = "bridge1"
        subnets = ["192.0.2.0/24"]
        options = { "com.docker.network.bridge.name" = "bridge1", "com.docker.network.bridge.enable_icc" = "false" }

        [[containers]]
        name = "c1"
        networks = ["bridge1"]

        [[containers]]
        name = "c2"
        networks = ["bridge1"]
    """))
    key = ("filter", "DOCKER-FORWARD")
    rules = gen.rulesets["ip"].chains[key].rules
    i = next(i for i, r in enumerate(rules) if r.action == Verdict("DROP"))
    r = verify(gen, nft_gen=without_rule(gen, "ip", key, i))
    got = {row.probe.describe(): (row.legacy.text(), row.nft.text()) for row in r.differences}
    assert got["#11 icc c1 -> c2 192.0.2.3:9999/tcp"] == ("timeout", "open c2:9999")
    assert got["#14 icc c2 -> c1 192.0.2.2:9999/udp"] == ("timeout", "open c1:9999")
    assert {row.probe.kind for row in r.differences} == {"icc"}


@pytest.mark.netns
def test_nft_without_masquerade_is_caught(netns_ok):
    gen = _gen(SEED)
    key = ("nat", "POSTROUTING")
    i = next(i for i, r in enumerate(gen.rulesets["ip"].chains[key].rules)
             if isinstance(r.action, Masquerade) and "192.0.2.0/24" in repr(r.matches))
    r = verify(gen, nft_gen=without_rule(gen, "ip", key, i))
    seen = {row.probe.describe(): (row.legacy.seen, row.nft.seen) for row in r.differences}
    assert seen == {"#11 egress c1 -> outside 203.0.113.2:7/tcp": ("203.0.113.1", "192.0.2.2"),
                    "#12 egress c1 -> outside 203.0.113.2:7/udp": ("203.0.113.1", "192.0.2.2")}


@pytest.mark.netns
def test_keep_leaves_the_namespaces_and_says_how_to_remove_them(netns_ok, capsys):
    assert _main(["verify", str(CASES[SEED] / "scenario.toml"), "--keep"]) == 0
    out = capsys.readouterr().out
    left = _ours()
    try:
        assert len(left) == 6 and all(n in out for n in left)
        cmd = out[out.index("remove them with: ") + len("remove them with: "):].strip()
        subprocess.run(["bash", "-c", cmd], check=True)
    finally:
        for n in _ours():
            subprocess.run(["ip", "netns", "delete", n])
    assert not _ours()


@pytest.mark.netns
def test_errors_and_interrupts_clean_up(netns_ok, tmp_path):
    gen = _gen(SEED)
    with pytest.raises(Exception) as e:
        verify(gen, reference4="*filter\n-A NOSUCHCHAIN -j ACCEPT\nCOMMIT\n")
    assert e.value.exit_status == 2 and "iptables-legacy-restore" in str(e.value)
    assert not _ours()
    with mock.patch.object(Session, "probe", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            verify(gen)
    assert not _ours()


@pytest.mark.netns
def test_sigterm_cleans_up(netns_ok):
    code = "import sys; from nftdocker.cli import main as cli; sys.exit(cli.main(sys.argv[1:]))"
    # a long timeout keeps the run in its probe phase while the signal arrives
    proc = subprocess.Popen([sys.executable, "-c", code, "verify", str(CASES[SEED] / "scenario.toml"), "--timeout", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while len(_ours(proc.pid)) < 6 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(_ours(proc.pid)) == 6
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in err
    assert not _ours(proc.pid)
