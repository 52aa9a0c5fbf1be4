"""Interface names are names, not patterns.

nft reads a trailing ``*`` in an iifname/oifname string as a prefix wildcard (``\\*`` is a literal
star); iptables reads a trailing ``+`` the same way and has no escape. A bridge Docker accepts may
be named ``n*`` or ``n+``: every rule nftdocker writes must match that interface only, and compat
must translate each form into what iptables reads the same way, or refuse.

The netns tests use the test address plan only (192.0.2.0/24, 203.0.113.0/24) inside namespaces
they create and remove.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import RULESETS, needs_netns, run_cli
from nftdocker.apply import engine
from nftdocker.nft import listing, state, view
from nftdocker.nft import netns as namespaces
from nftdocker.nft.backend import Libnftables
from nftdocker.nft.commit import kernel_views
from nftdocker.nft.diff import plan
from nftdocker.compat.translate import compat_of, compat_text
from nftdocker.nft.parse import parse_expr, rulesets_from_json
from nftdocker.errors import CompatError, GenerationError
from nftdocker.docker.generate import generate
from nftdocker.nft.ir import Iface, Rule, Ruleset, Verdict
from nftdocker.compat.reference import diff
from nftdocker.nft.render import render_json_objects, rule_expr, rule_text
from nftdocker.nft.replace import render_nft
from nftdocker.scenario.load import load, loads

from test_verify import netns_ok  # noqa: F401  (the fixture: root, tools, no namespaces left behind)

TABLE = "nftdocker"


def scenario(bridge: str) -> str:
    return f"""\
[daemon]
userland-proxy = false

[[networks]]
name = "n1"
subnets = ["192.0.2.0/24"]
options = {{ "com.docker.network.bridge.name" = "{bridge}" }}

[[containers]]
name = "c1"
networks = ["n1"]
publish = ["8080:80"]
"""


def gen_of(bridge: str):
    return generate(loads(scenario(bridge), source=f"bridge-{bridge}.toml"))


def write(tmp_path: Path, bridge: str) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(scenario(bridge))
    return p


def iface_rights(objs: list[dict]) -> list[str]:
    """The right-hand sides of every iifname/oifname match in ``nft -j`` objects."""
    out = []
    for o in objs:
        for e in o.get("rule", {}).get("expr", []):
            m = e.get("match")
            if m and m["left"].get("meta", {}).get("key") in ("iifname", "oifname"):
                out.append(m["right"])
    return out


def listed_rule(chain: str, right: str, op: str = "==", key: str = "iifname") -> dict:
    """One rule as ``nft -j list`` gives it."""
    return {"rule": {"family": "ip", "table": TABLE, "chain": chain, "handle": 9, "expr": [
        {"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}}, {"drop": None}]}}


def table_with(*rules: dict) -> list[dict]:
    return [{"table": {"family": "ip", "name": TABLE}},
            {"chain": {"family": "ip", "table": TABLE, "name": "filter-FORWARD", "type": "filter", "hook": "forward",
                       "prio": 0, "policy": "accept"}},
            {"chain": {"family": "ip", "table": TABLE, "name": "filter-DOCKER-USER"}},
            *rules]


# ---------------------------------------------------------------------- render (no root)


def test_a_bridge_named_with_a_star_is_matched_escaped():
    gen = gen_of("n*")
    text = render_nft(gen.rulesets)
    assert 'iifname "n\\*" accept' in text  # filter-DOCKER-FORWARD: only n* itself
    assert 'oifname != "n\\*" masquerade' in text
    assert '"n*"' not in text  # no wildcard anywhere
    rights = iface_rights(render_json_objects(gen.rulesets))
    assert set(rights) == {"n\\*", "docker0"}  # the JSON string nft takes (and lists) for the interface n*
    # and iptables, for which '*' is no pattern, names it as it is
    compat = compat_of(gen, "ip")
    assert "-A DOCKER-FORWARD -i n* -j ACCEPT" in compat
    assert "-A POSTROUTING -s 192.0.2.0/24 ! -o n* -j MASQUERADE" in compat


def test_a_star_bridge_from_an_inspect_dump_is_matched_escaped(tmp_path):
    """The same through `docker-inspect = FILE` (which `watch` and `export` read from the live daemon)."""
    case = RULESETS / "usernet-portmap-noproxy"
    dump = (case / "docker-inspect.json").read_text()
    key = '"com.docker.network.bridge.name": "bridge1"'
    assert dump.count(key) == 1
    (tmp_path / "docker-inspect.json").write_text(dump.replace(key, '"com.docker.network.bridge.name": "e*"'))
    (tmp_path / "from-inspect.toml").write_text((case / "from-inspect.toml").read_text())
    text = render_nft(generate(load(tmp_path / "from-inspect.toml")).rulesets)
    assert 'iifname "e\\*" accept' in text and '"e*"' not in text


def test_a_bridge_named_with_a_plus_is_literal_in_nft_and_refused_by_compat(tmp_path):
    gen = gen_of("n+")
    text = render_nft(gen.rulesets)
    assert 'iifname "n+" accept' in text and "*" not in text  # '+' means nothing to nft
    assert set(iface_rights(render_json_objects(gen.rulesets))) == {"n+", "docker0"}
    # iptables reads -i n+ as every name starting with n: compat cannot say "only n+"
    with pytest.raises(CompatError, match=r"ip raw PREROUTING rule 1: interface name 'n\+' ends in '\+'"):
        compat_of(gen, "ip")
    r = run_cli("compat", write(tmp_path, "n+"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "'n+' ends in '+'" in r.stderr and "Traceback" not in r.stderr


def test_a_star_name_too_long_to_escape_is_refused(tmp_path):
    """15 bytes ending in '*': escaped it is 16, over nft 1.0.6's limit (text and JSON alike)."""
    with pytest.raises(GenerationError, match="at most 14 bytes"):
        render_nft(gen_of("abcdefghijklmn*").rulesets)
    with pytest.raises(GenerationError, match="at most 14 bytes"):
        render_json_objects(gen_of("abcdefghijklmn*").rulesets)
    r = run_cli("render", write(tmp_path, "abcdefghijklmn*"))
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "'abcdefghijklmn*'" in r.stderr and "Traceback" not in r.stderr
    assert 'iifname "abcdefghijklm\\*"' in render_nft(gen_of("abcdefghijklm*").rulesets)  # 14 bytes fit


NAMES = ["n*", "**", "a*b", "n+", "a++", "eth0", "abcdefghijklm*", "abcdefghijklmno"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("wildcard", [False, True])
def test_every_match_survives_json_and_back(name, wildcard):
    """IR -> libnftables JSON -> IR is the identity, literal names and wildcards alike."""
    if wildcard and len(name) == 15:
        pytest.raises(GenerationError, rule_expr, Rule((Iface("i", name, wildcard=True),), Verdict("DROP")),
                      Ruleset("ip"), "filter")
        return
    rs = Ruleset("ip")
    r = Rule((Iface("i", name, False, wildcard), Iface("o", name, True, wildcard)), Verdict("DROP"))
    matches, action = parse_expr(rule_expr(r, rs, "filter"), "filter", "test")
    assert Rule(tuple(matches), action) == r
    assert [m.wildcard for m in matches] == [wildcard, wildcard]


# ---------------------------------------------------------------------- compat (no root)


def test_compat_reads_the_kernels_forms_as_iptables_does():
    objs = table_with(listed_rule("filter-DOCKER-USER", "n\\*"),  # the interface n*
                      listed_rule("filter-DOCKER-USER", "eth*"),  # every name starting with eth
                      listed_rule("filter-DOCKER-USER", "a*b", "!=", "oifname"),
                      listed_rule("filter-DOCKER-USER", "a+*"))  # every name starting with a+
    lines = [l for l in compat_text(objs, "ip").splitlines() if l.startswith("-A DOCKER-USER")]
    assert lines == ["-A DOCKER-USER -i n* -j DROP", "-A DOCKER-USER -i eth+ -j DROP",
                     "-A DOCKER-USER ! -o a*b -j DROP", "-A DOCKER-USER -i a++ -j DROP"]


def test_compat_refuses_what_neither_side_can_say():
    with pytest.raises(CompatError, match=r"DOCKER-USER rule 1: interface name 'n\+' ends in '\+'"):
        compat_text(table_with(listed_rule("filter-DOCKER-USER", "n+")), "ip")
    for odd in ("a\\b", "a\\*\\*", "abcdefghijklmn\\*"):  # nothing nftdocker writes or can write back
        with pytest.raises(CompatError, match="unsupported interface name"):
            rulesets_from_json(table_with(listed_rule("filter-DOCKER-USER", odd)))
    # the kernel listing's keys: such a rule is someone else's, never a traceback
    assert view._key_of(listed_rule("filter-FORWARD", "a\\b")["rule"], "ip", Ruleset("ip")).startswith("\0foreign")


# ---------------------------------------------------------------------- reference / diff (no root)


def test_reference_plus_is_a_wildcard_when_diffed():
    """Docker's ``-i e+`` (a wildcard) equals an nft wildcard, and never a literal name."""
    ref = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n" \
          "-A DOCKER-USER -i e+ -j DROP\nCOMMIT\n"
    wildcard = compat_text(table_with(listed_rule("filter-DOCKER-USER", "e*")), "ip")
    assert diff(wildcard, ref, "ref")[0] == []
    literal = compat_text(table_with(listed_rule("filter-DOCKER-USER", "e\\*")), "ip")
    assert diff(literal, ref, "ref")[0] != []


def test_diff_against_dockers_rules_for_a_plus_bridge_is_not_identical(tmp_path):
    """Docker itself writes ``-i n+`` for the bridge n+: a wildcard. nftdocker's literal ``"n+"`` must
    not be reported identical to it."""
    docker_rules = compat_of(gen_of("n*"), "ip").replace(" n* ", " n+ ")  # Docker writes the name as it is
    assert docker_rules.count(" n+ ") >= 10
    ref = tmp_path / "iptables-save.txt"
    ref.write_text(docker_rules)
    r = run_cli("diff", write(tmp_path, "n+"), ref)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "'n+' ends in '+'" in r.stderr and "identical" not in r.stderr


# ---------------------------------------------------------------------- the kernel (root)


def _nft(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True, check=True).stdout


@needs_netns
@pytest.mark.netns
def test_applied_star_bridge_matches_only_itself_and_round_trips(netns):
    sc = loads(scenario("n*"), source="star.toml")
    gen = generate(sc)
    try:
        assert engine.apply_scenario(sc, netns).mode == "full"
        listed = listing.list_objects(netns)
        assert set(iface_rights(listed)) == {"n\\*", "docker0"}  # nft lists the interface n*, no wildcard
        # the kernel's own bytes: a 16-byte compare (name and NUL), not a one-byte prefix
        dump = _nft(netns, "--debug=netlink", "list", "chain", "ip", TABLE, "filter-DOCKER-FORWARD")
        assert "cmp eq reg 1 0x00002a6e 0x00000000 0x00000000 0x00000000" in dump
        assert "cmp eq reg 1 0x0000006e ]" not in dump
        # the listing's keys (read_table: nft.parse.parse_expr -> render.rule_text) equal the generated ones
        with namespaces.lock(netns), namespaces.netns(netns):
            be = Libnftables()
            for fam, rs in gen.rulesets.items():
                kt = be.read_table(fam, TABLE)
                want = view.wanted(rs)
                assert {n: c.keys for n, c in kt.chains.items()} == {n: c.keys for n, c in want.items()}
            tx, _ = plan(be, kernel_views(be, TABLE)[0], gen.rulesets, TABLE)
            assert tx.mode != "full" and tx.commands() == 0  # not a full replace
        res = engine.apply_scenario(sc, netns)
        assert (res.mode, res.commands) == ("noop", 0)
        # and the compat of what the kernel holds is the compat of the scenario
        for fam in ("ip", "ip6"):
            assert compat_text(listing.list_objects(netns), fam) == compat_of(gen, fam)
        # a wildcard someone adds to DOCKER-USER reads back as iptables' wildcard
        _nft(netns, "insert", "rule", "ip", TABLE, "filter-DOCKER-USER", "iifname", "eth*", "drop")
        assert "-A DOCKER-USER -i eth+ -j DROP\n" in compat_text(listing.list_objects(netns), "ip")
        assert engine.apply_scenario(sc, netns).commands == 0  # kept, nothing else to do
    finally:
        state.forget(netns)


# ---------------------------------------------------------------------- packets (root)


@pytest.mark.netns
def test_star_bridge_verifies_against_legacy_iptables(netns_ok, tmp_path, capsys):  # noqa: F811
    from nftdocker.cli import main as cli

    assert cli.main(["verify", str(write(tmp_path, "n*")), "--json"]) == 0, capsys.readouterr().out
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["summary"]["differ"] == []
    by_kind = {}
    for p in report["probes"]:
        by_kind.setdefault(p["kind"], []).append(p)
    # the unpublished port stays closed from outside, egress is masqueraded: on both sides
    assert {p["nft"]["result"] for p in by_kind["direct"]} == {"timeout"}
    assert {p["nft"]["seen"] for p in by_kind["egress"]} == {"203.0.113.1"}


@pytest.mark.netns
def test_plus_bridge_is_refused_by_verify(netns_ok, tmp_path):  # noqa: F811
    r = run_cli("verify", write(tmp_path, "n+"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'n+' ends in '+'" in r.stderr
