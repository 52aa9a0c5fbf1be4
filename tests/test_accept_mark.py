"""``--accept-mark VALUE[/MASK]``: nftdocker beside a drop-policy host firewall.

Without root: the option's validation, the marked rules (which accepts carry the mark, which do
not), that compat still equals Docker's rules, and the JSON round trip. As root, in namespaces the
tests create: the kernel listing round trip (a re-apply is a noop), and packets through a Docker
host of namespaces whose own ``table inet filter`` forward chain has ``policy drop``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import CASES, RULESETS, needs_netns, run_cli
from nftdocker.host import accept_mark
from nftdocker.compat.translate import compat_of
from nftdocker.nft.parse import rulesets_from_json
from nftdocker.errors import UsageError
from nftdocker.docker.generate import generate
from nftdocker.nft.ir import Verdict
from nftdocker.nft.render import render_json_objects, rule_text
from nftdocker.nft.replace import render_nft
from nftdocker.scenario.load import load

MARK = (0x100, 0xFF00)
MARK_ARG = "0x100/0xff00"
HOST_RULE = "meta mark & 0x0000ff00 == 0x00000100 accept"


# ---------------------------------------------------------------------- the option


@pytest.mark.parametrize("text, want", [
    ("0x100/0xff00", (0x100, 0xFF00)),
    ("256/65280", (0x100, 0xFF00)),
    ("0x1", (1, 0xFFFFFFFF)),
    ("0X80000000/0x80000000", (0x80000000, 0x80000000)),
    ("4294967295", (0xFFFFFFFF, 0xFFFFFFFF)),
])
def test_parse(text, want):
    assert accept_mark.parse(text) == want


@pytest.mark.parametrize("text, says", [
    ("0", "VALUE is 0"),
    ("0x0/0xff", "VALUE is 0"),
    ("0x1/0", "MASK is 0"),
    ("0x100/0xff", "bits outside MASK"),
    ("0x100000000", "more than 32 bits"),
    ("1/0x1ffffffff", "more than 32 bits"),
    ("abc", "not a number"),
    ("-1", "not a number"),
    (" 1", "not a number"),
    ("1/", "not a number"),
    ("1/2/3", "not a number"),
    ("1_0", "not a number"),
    ("", "not a number"),
])
def test_parse_refuses(text, says):
    with pytest.raises(UsageError, match=says):
        accept_mark.parse(text)


@pytest.mark.parametrize("cmd", ["render", "apply"])
@pytest.mark.parametrize("bad", ["0x100/0xff", "0", "x"])
def test_bad_mark_is_one_line_exit_2(cmd, bad):
    where = ["--netns", "nftdt-nonexistent"] if cmd == "apply" else []  # refused before any namespace is entered
    res = run_cli(cmd, RULESETS / "usernet-portmap" / "scenario.toml", "--accept-mark", bad, *where)
    assert res.returncode == 2
    assert res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("nftdocker: --accept-mark "), res.stderr


def test_watch_refuses_a_bad_mark_before_reaching_the_daemon():
    res = run_cli("watch", "--docker-host", "unix:///nonexistent/docker.sock", "--accept-mark", "0x100/0xff")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "nftdocker: --accept-mark '0x100/0xff': VALUE 0x100 has bits outside MASK 0xff"


def test_host_rule():
    assert accept_mark.host_rule(MARK) == HOST_RULE
    assert accept_mark.host_rule((5, 0xFFFFFFFF)) == "meta mark 0x00000005 accept"


# ---------------------------------------------------------------------- which rules carry the mark


def _gen(case: str):
    return generate(load(str(RULESETS / case / "scenario.toml")))


@pytest.mark.parametrize("case", CASES)
def test_every_filter_accept_and_nothing_else_is_marked(case):
    gen = _gen(case)
    marked = accept_mark.apply(gen, MARK)
    assert marked is not gen
    for fam, rs in gen.rulesets.items():
        mrs = marked.rulesets[fam]
        assert list(mrs.chains) == list(rs.chains)
        for key, c in rs.chains.items():
            mc = mrs.chains[key]
            assert mc.policy == c.policy
            assert mc.prio == (accept_mark.PRIORITY if c.table == "filter" and c.builtin else None)
            assert [r.matches for r in mc.rules] == [r.matches for r in c.rules]
            for r, mr in zip(c.rules, mc.rules):
                is_accept = r.action == Verdict("ACCEPT")
                if c.table == "filter" and c.name != "DOCKER-USER" and is_accept:
                    assert mr.action == Verdict("ACCEPT", MARK), (fam, c.name, r)
                else:
                    assert mr.action == r.action, (fam, c.name, r)
    # generation's own state is untouched
    assert all(r.action.__class__ is not Verdict or r.action.mark is None
               for rs in gen.rulesets.values() for c in rs.chains.values() for r in c.rules)


def test_the_rendered_table():
    gen = accept_mark.apply(_gen("usernet-portmap-noproxy"), MARK)
    text = render_nft(gen.rulesets)
    mark = "meta mark set meta mark & 0xffff01ff | 0x00000100 accept"
    assert "type filter hook forward priority -1; policy accept;" in text
    assert f'iifname "bridge1" {mark}' in text
    assert f'oifname "bridge1" ct state established,related {mark}' in text
    assert f'ip daddr 192.0.2.2 iifname != "bridge1" oifname "bridge1" tcp dport 80 {mark}' in text
    accepts = [l for l in text.splitlines() if l.endswith(" accept") or l.strip() == "accept"]
    assert accepts and all(mark in l for l in accepts)
    assert "xt " not in text and " drop" in text
    full = accept_mark.apply(_gen("usernet-portmap-noproxy"), (7, 0xFFFFFFFF))
    assert 'iifname "bridge1" meta mark set 0x00000007 accept' in render_nft(full.rulesets)


@pytest.mark.parametrize("case", CASES)
def test_compat_is_still_dockers(case):
    gen = _gen(case)
    marked = accept_mark.apply(gen, MARK)
    for fam in ("ip", "ip6"):
        assert compat_of(marked, fam) == compat_of(gen, fam)


@pytest.mark.parametrize("mark", [MARK, (1, 0xFFFFFFFF), (0x80000000, 0x80000000), (0x3, 0xF)])
@pytest.mark.parametrize("case", ["usernet-portmap-noproxy", "usernet-portmap-routed", "ipv6", "usernet-portmap-noicc"])
def test_json_round_trip(case, mark):
    marked = accept_mark.apply(_gen(case), mark)
    back = rulesets_from_json(render_json_objects(marked.rulesets))
    for fam, rs in marked.rulesets.items():
        if rs.is_empty():
            continue
        for key, c in rs.chains.items():
            bc = back[fam].chains[key]
            assert bc.rules == c.rules and [r.action for r in bc.rules] == [r.action for r in c.rules]
            assert not c.builtin or bc.base == c.base
            assert [rule_text(r, rs, c.table) for r in bc.rules] == [rule_text(r, rs, c.table) for r in c.rules]


def test_known_difference_is_listed():
    import tomllib

    doc = tomllib.loads((Path(__file__).resolve().parent.parent / "compat" / "known-differences.toml").read_text())
    ids = {d["id"]: d for d in doc["difference"]}
    assert "accept-mark" in ids and "--accept-mark" in ids["accept-mark"]["when"]


# ---------------------------------------------------------------------- in the kernel


def _apply(ns: str, scenario, *extra: str) -> dict:
    res = run_cli("apply", scenario, "--netns", ns, "--json", *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _nft(ns: str, *args: str, stdin: str | None = None) -> str:
    res = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


@needs_netns
@pytest.mark.netns
def test_kernel_round_trip(netns):
    from nftdocker.nft import state

    sc = RULESETS / "usernet-portmap-noproxy" / "scenario.toml"
    try:
        first = _apply(netns, sc, "--accept-mark", MARK_ARG)
        assert first["accept_mark"] == {"value": 0x100, "mask": 0xFF00, "host_rule": HOST_RULE}
        listed = _nft(netns, "list", "chain", "ip", "nftdocker", "filter-DOCKER-CT")
        assert "meta mark set meta mark & 0xffff01ff | 0x00000100 accept" in listed
        assert "priority filter - 1" in _nft(netns, "list", "chain", "ip", "nftdocker", "filter-FORWARD")
        res = run_cli("compat", "--netns", netns)
        assert res.returncode == 0 and res.stdout == compat_of(_gen("usernet-portmap-noproxy"), "ip")
        # someone else's commit: the stored view is stale, the next apply lists the kernel's table
        _nft(netns, "add", "table", "ip", "somebody")
        again = _apply(netns, sc, "--accept-mark", MARK_ARG)
        assert (again["mode"], again["commands"]) == ("noop", 0)
        # another mark: only the marked rules change, in place
        other = _apply(netns, sc, "--accept-mark", "0x5")
        assert other["mode"] == "incremental" and other["commands"] > 0
        assert "meta mark set 0x00000005 accept" in _nft(netns, "list", "chain", "ip", "nftdocker", "filter-DOCKER-CT")
        _nft(netns, "add", "table", "ip", "somebody2")
        assert _apply(netns, sc, "--accept-mark", "0x5")["mode"] == "noop"
        # without the option: Docker's rules, no mark, priority filter
        plain = _apply(netns, sc)
        assert plain["mode"] in ("full", "incremental")
        text = _nft(netns, "list", "table", "ip", "nftdocker")
        assert "meta mark" not in text and "priority filter;" in text
        res = run_cli("compat", "--netns", netns)
        assert res.returncode == 0 and res.stdout == compat_of(_gen("usernet-portmap-noproxy"), "ip")
    finally:
        state.forget(netns)


# ---------------------------------------------------------------------- packets, beside a drop-policy host firewall

SCENARIO = """\
# dockerd --userland-proxy=false
# docker network create --ipv6 --subnet 192.0.2.0/24 --subnet 2001:db8:1::/64 -o ...bridge.name=bridge1 bridge1
# docker network create --subnet 198.51.100.0/24 -o ...bridge.name=bridge2 bridge2
# docker run --network bridge1 -p 8080:80 --name c1 busybox
# docker run --network bridge2 --name c2 busybox
[daemon]
userland-proxy = false

[[networks]]
name = "bridge1"
subnets = ["192.0.2.0/24", "2001:db8:1::/64"]
ipv6 = true
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

#: the host's own firewall, as Debian's /etc/nftables.conf writes it, with `policy drop` on forward
#: and the one rule the recipe adds (without its `flush ruleset`: that would remove nftdocker's table too)
HOST_FIREWALL = f"""\
table inet filter {{
	chain input {{
		type filter hook input priority filter;
	}}
	chain forward {{
		type filter hook forward priority filter; policy drop;
		{HOST_RULE}
	}}
	chain output {{
		type filter hook output priority filter;
	}}
}}
"""


def _load_host_firewall(ns: str) -> None:
    """(Re)create the host's table: created after nftdocker's, its forward chain would run first at an equal priority."""
    if "table inet filter" in _nft(ns, "list", "tables"):
        _nft(ns, "delete", "table", "inet", "filter")
    _nft(ns, "-f", "-", stdin=HOST_FIREWALL)


@pytest.fixture
def packets_ok():
    import os
    import shutil

    if os.geteuid() != 0:
        pytest.skip("needs root: the test builds network namespaces")
    missing = [t for t in ("ip", "nft", "iptables-legacy-restore", "ip6tables-legacy-restore") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    pytest.importorskip("pyroute2")
    pytest.importorskip("nftables")


@pytest.mark.netns
def test_packets_beside_a_drop_policy_host_firewall(packets_ok, tmp_path):
    from nftdocker.nft import state
    from nftdocker.verify.run import legacy_texts
    from nftdocker.verify.session import Session

    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO)
    gen = generate(load(str(path)))
    t4, t6, _ = legacy_texts(gen, "nftdocker")
    with Session(gen) as s:
        host = s.ns("nft", "host")
        try:
            s.load_legacy(t4, t6)  # Docker's own rules, and no host firewall: the behaviour to match
            probes = {pr.id: pr for pr in s.plan.probes}
            kinds = {k for pr in probes.values() for k in [pr.kind]}
            assert {"published", "direct", "isolation", "egress"} <= kinds

            def by_kind(res: dict, kind: str, src: str | None = None) -> list:
                return [(probes[i], o) for i, o in sorted(res.items()) if probes[i].kind == kind and src in (None, probes[i].src)]

            # Without --accept-mark the host firewall drops what nftdocker accepts.
            _apply(host, path)
            _load_host_firewall(host)
            without = s.probe(["nft"])["nft"]
            published = by_kind(without, "published", "outside")
            assert len(published) == 2  # IPv4 and IPv6
            assert all(o.result != "open" for _, o in published), published
            assert all(o.result != "open" for _, o in by_kind(without, "egress"))

            # With it: one host rule lets Docker's traffic through, whichever table was created last.
            out = _apply(host, path, "--accept-mark", MARK_ARG)
            assert out["accept_mark"]["host_rule"] == HOST_RULE
            for order in ("nftdocker created after the host's table", "host's table created after nftdocker"):
                if order.startswith("host"):
                    _load_host_firewall(host)
                res = s.probe()
                legacy, nft = res["legacy"], res["nft"]
                differ = [(probes[i].describe(), legacy[i].key(), nft[i].key()) for i in legacy if legacy[i].key() != nft[i].key()]
                assert not differ, (order, differ)
                # and what that behaviour is:
                assert [o.result for _, o in by_kind(nft, "published", "outside")] == ["open", "open"], order
                assert all(o.served == "c1:80" for _, o in by_kind(nft, "published", "outside"))
                direct = by_kind(nft, "direct")
                unpublished = [(p, o) for p, o in direct if p.port == s.plan.unpublished]
                assert unpublished and all(o.result != "open" for _, o in unpublished), order
                iso = by_kind(nft, "isolation")
                assert iso and all(o.result != "open" for _, o in iso), order
                egress = by_kind(nft, "egress")
                assert egress and all(o.result == "open" for _, o in egress), order
                uplink = {str(s.plan.uplink4[0].ip), str(s.plan.uplink6[0].ip)}
                assert all(o.seen in uplink for _, o in egress), [(p.describe(), o.seen) for p, o in egress]
            fwd = _nft(host, "list", "chain", "inet", "filter", "forward").splitlines()
            assert "policy drop;" in fwd[2] and [l.strip() for l in fwd[3:-2]] == [HOST_RULE]  # still drop, one rule
        finally:
            state.forget(host)


@needs_netns
@pytest.mark.netns
def test_watch_marks_what_it_loads(netns, tmp_path):
    """watch --accept-mark: the full sync and each change carry the mark; the change is computed on the
    kernel's listing, so an unchanged host is a noop."""
    pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")
    from conftest import SHARED_REFERENCE
    from fake_engine import FakeEngine
    from nftdocker.nft import state
    from nftdocker.live.watch import Watcher

    dump = json.loads((SHARED_REFERENCE / "multi" / "docker-inspect.json").read_text())
    with FakeEngine(tmp_path / "d.sock", dump, version="28.0.1") as engine:
        w = Watcher(engine.host, netns, log=lambda line: None, accept_mark=MARK, heal=False)
        try:
            w.sync("start")
            text = _nft(netns, "list", "table", "ip", "nftdocker")
            assert "meta mark set meta mark & 0xffff01ff | 0x00000100 accept" in text
            assert "priority filter - 1" in text
            res = run_cli("compat", "--netns", netns)
            assert res.returncode == 0
            assert res.stdout == run_cli("compat", "--docker-host", engine.host).stdout
            _nft(netns, "add", "table", "ip", "somebody")  # the applier reads the table again
            stats = w.applier.apply(w._generate(), w.current)
            assert (stats.mode, stats.commands) == ("noop", 0)
            # self-healing puts the marked rules back, and then finds nothing to do
            from nftdocker.live.heal import restore

            ct = json.loads(_nft(netns, "-j", "-a", "list", "chain", "ip", "nftdocker", "filter-DOCKER-CT"))
            handle = next(o["rule"]["handle"] for o in ct["nftables"] if "rule" in o)
            _nft(netns, "delete", "rule", "ip", "nftdocker", "filter-DOCKER-CT", "handle", str(handle))
            done = restore(w.current, netns, "nftdocker", w.applier, {})
            assert done is not None and (done.added, done.removed) == (1, 0)
            assert _nft(netns, "list", "table", "ip", "nftdocker") == text
            assert restore(w.current, netns, "nftdocker", w.applier, {}) is None
            _nft(netns, "flush", "ruleset")
            assert restore(w.current, netns, "nftdocker", w.applier, {}) is not None
            assert _nft(netns, "list", "table", "ip", "nftdocker") == text
        finally:
            close = getattr(w.applier, "close", None)
            if callable(close):
                close()
            state.forget(netns)
