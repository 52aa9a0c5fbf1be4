"""diff --semantic: boxes and overlap (compat/semantic.py), the per-chain comparison and its witnesses
(compat/semantic_diff.py), and the CLI, over every real capture in rulesets/*/ and compat/*/.

Pure: no root, no kernel.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from conftest import COMPAT, RULESETS, run_cli
from nftdocker.compat import reference
from nftdocker.compat.chain_eval import evaluate
from nftdocker.compat.semantic import Packet, overlap, parse_rule
from nftdocker.compat.semantic_diff import compare

CAPTURES = sorted(p for base in (RULESETS, COMPAT) for p in base.glob("*/ip*tables-save.txt"))


def _id(p: Path) -> str:
    return f"{p.parent.parent.name}/{p.parent.name}/{p.name}"


def _version(p: Path) -> int:
    return 6 if p.name.startswith("ip6") else 4


def _scenario(p: Path) -> Path:
    return RULESETS / p.parent.name / "scenario.toml"


# ---------------------------------------------------------------------- an independent, textual "harmless"


def _target(line: str) -> str:
    return line.split(" -j ", 1)[1] if " -j " in line else line


def _literal(line: str, opt: str) -> str | None:
    w = line.split()
    for i, t in enumerate(w[:-1]):
        if t == opt and (i == 0 or w[i - 1] != "!") and not w[i + 1].endswith("+"):
            return w[i + 1]
    return None


def _may_swap(a: str, b: str) -> bool:
    """Obviously harmless by reading the text: same target, different literal interfaces or ports."""
    if _target(a) == _target(b):
        return True
    if any(_literal(a, o) and _literal(b, o) and _literal(a, o) != _literal(b, o) for o in ("-o", "-i")):
        return True
    pa, pb = _literal(a, "--dport"), _literal(b, "--dport")  # single ports of the same protocol
    return bool(pa and pb and ":" not in pa + pb and pa != pb and _literal(a, "-p") == _literal(b, "-p"))


def _reorder(text: str, rng: random.Random, may=_may_swap, tries: int = 400) -> str:
    """Random adjacent swaps of rules within each chain, each allowed by ``may``."""
    lines = text.splitlines()
    by_chain: dict[tuple[int, str], list[int]] = {}
    table = 0
    for i, l in enumerate(lines):
        if l.startswith("*"):
            table = i
        if l.startswith("-A "):
            by_chain.setdefault((table, l.split()[1]), []).append(i)
    for idx in by_chain.values():
        for _ in range(min(tries, 20 * len(idx))):
            if len(idx) < 2:
                break
            k = rng.randrange(len(idx) - 1)
            a, b = idx[k], idx[k + 1]
            if may(lines[a], lines[b]):
                lines[a], lines[b] = lines[b], lines[a]
    return "\n".join(lines) + "\n"


def _published_pair(text: str) -> tuple[str, str] | None:
    """A published port's ACCEPT on bridge X in filter DOCKER, and X's ``! -i X -o X -j DROP``."""
    lines = text.splitlines()
    for l in lines:
        m = re.match(r"-A DOCKER -d (\S+) ! -i (\S+) -o \2 .*-j ACCEPT$", l)
        if m and f"-A DOCKER ! -i {m[2]} -o {m[2]} -j DROP" in lines:
            return l, f"-A DOCKER ! -i {m[2]} -o {m[2]} -j DROP"
    return None


def _drop_first(text: str) -> str:
    accept, drop = _published_pair(text)  # type: ignore[misc]
    lines = [l for l in text.splitlines() if l != drop]
    lines.insert(lines.index(accept), drop)
    return "\n".join(lines) + "\n"


PAIRED = [p for p in CAPTURES if _published_pair(p.read_text())]


def test_captures_are_there():
    cases = {p.parent.name for p in CAPTURES}
    assert len(cases) >= 18 and len(CAPTURES) == 4 * len(cases) and len(PAIRED) >= 14


# ---------------------------------------------------------------------- boxes


@pytest.mark.parametrize("a, b, expect", [
    ("-A X -i br+ -j ACCEPT", "-A X -i br0 -j DROP", True),
    ("-A X -i br+ -j ACCEPT", "-A X -i eth0 -j DROP", False),
    ("-A X ! -i br+ -j ACCEPT", "-A X -i br0 -j DROP", False),
    ("-A X ! -i br0 -j ACCEPT", "-A X -i br+ -j DROP", True),
    ("-A X ! -i docker0 -o docker0 -j DROP", "-A X -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT", True),
    ("-A X ! -i docker0 -o docker0 -j DROP", "-A X -d 192.0.2.2/32 ! -i bridge1 -o bridge1 -p tcp -m tcp --dport 80 -j ACCEPT", False),
    ("-A X -i docker0 ! -o docker0 -j Y", "-A X -o docker0 -j DROP", False),
    ("-A X -s 10.0.0.0/8 -j ACCEPT", "-A X ! -s 10.1.0.0/16 -j DROP", True),
    ("-A X -s 10.1.0.0/16 -j ACCEPT", "-A X ! -s 10.0.0.0/8 -j DROP", False),
    ("-A X -s 10.1.0.0/16 -j ACCEPT", "-A X -s 10.2.0.0/16 -j DROP", False),
    ("-A X -p tcp -m tcp --dport 80:90 -j ACCEPT", "-A X -p tcp -m tcp --dport 85 -j DROP", True),
    ("-A X -p tcp -m tcp --dport 80:90 -j ACCEPT", "-A X -p tcp -m tcp --dport 91 -j DROP", False),
    ("-A X -p tcp -m tcp --dport 80 -j ACCEPT", "-A X -p udp -m udp --dport 80 -j DROP", False),
    ("-A X -p tcp -m tcp ! --dport 80 -j ACCEPT", "-A X -p tcp -m tcp --dport 80 -j DROP", False),
    ("-A X -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-A X -m conntrack --ctstate NEW -j DROP", False),
    ("-A X -m conntrack ! --ctstate INVALID -j ACCEPT", "-A X -m conntrack --ctstate NEW -j DROP", True),
    ("-A X -m addrtype --dst-type LOCAL -j DOCKER", "-A X -m addrtype ! --dst-type LOCAL -j DROP", False),
    ("-A X -m mark --mark 0x1 -j ACCEPT", "-A X -o eth9 -p udp -j DROP", True),  # unknown module: overlaps all
    ("-A X -m addrtype --dst-type BROADCAST -j ACCEPT", "-A X -m addrtype ! --dst-type LOCAL -j DROP", True),
])
def test_overlap(a, b, expect):
    assert overlap(parse_rule(a), parse_rule(b)) is expect
    assert overlap(parse_rule(b), parse_rule(a)) is expect


def test_evaluator_follows_jumps_and_returns():
    rules = {c: [parse_rule(t) for t in ts] for c, ts in {
        "FORWARD": ["-A FORWARD -j DOCKER-USER", "-A FORWARD -o br0 -j DOCKER", "-A FORWARD -i br0 -j ACCEPT"],
        "DOCKER-USER": ["-A DOCKER-USER -j RETURN"],
        "DOCKER": ["-A DOCKER -p tcp -m tcp --dport 80 -j ACCEPT", "-A DOCKER ! -i br0 -j DROP"],
    }.items()}
    from ipaddress import ip_address as ip

    def run(**kw):
        p = Packet(**{"proto": "tcp", "src": ip("203.0.113.9"), "sport": 4, "dst": ip("192.0.2.2"), "dport": 80,
                      "iif": "eth0", "oif": "br0", **kw})
        o = evaluate(rules, {"FORWARD": "DROP"}, "FORWARD", p)
        return o.effect, o.chain, o.rule

    assert run() == ("ACCEPT", "DOCKER", 1)
    assert run(dport=81) == ("DROP", "DOCKER", 2)
    assert run(iif="br0", oif="eth0") == ("ACCEPT", "FORWARD", 3)
    assert run(iif="eth1", oif="eth0") == ("DROP", "FORWARD", None)  # the policy


# ---------------------------------------------------------------------- every capture


@pytest.mark.parametrize("path", CAPTURES, ids=_id)
def test_harmless_reordering_is_equivalent(path):
    text = path.read_text()
    moved = _reorder(text, random.Random(_id(path)))
    if moved == text:
        # Nothing a textual rule of thumb can swap here: reverse what may be reversed, or say why not.
        assert not any(_may_swap(a, b) for a, b in _adjacent(text)), "a swap was possible but none happened"
        return
    res = compare(text, moved, "moved", version=_version(path))
    assert res.equivalent, res.text()
    assert sum(res.moved.values()) > 0 and res.summary().startswith("equivalent:")
    lines, _ = reference.diff(text, moved, "moved")
    assert lines  # the plain diff still sees a difference


def _adjacent(text: str):
    lines = [l for l in text.splitlines() if l.startswith("-A ")]
    return [(a, b) for a, b in zip(lines, lines[1:]) if a.split()[1] == b.split()[1]]


def test_most_captures_get_reordered():
    """Most captures hold rules the rule of thumb may swap (so the equivalence test is not vacuous):
    every IPv4 capture of the first ten cases but new-daemon, and at least 40 % of all."""
    changed = {p for p in CAPTURES if _reorder(p.read_text(), random.Random(_id(p))) != p.read_text()}
    first_ten = {"ipv6", "multi", "new-daemon", "usernet-internal", "usernet-portmap", "usernet-portmap-lo",
                 "usernet-portmap-natunprot", "usernet-portmap-noicc", "usernet-portmap-noproxy", "usernet-portmap-routed"}
    assert {p for p in changed if p.parent.name in first_ten} == {
        p for p in CAPTURES if p.name == "iptables-save.txt" and p.parent.name in first_ten - {"new-daemon"}}
    assert len(changed) >= len(CAPTURES) * 4 // 10


@pytest.mark.parametrize("path", PAIRED, ids=_id)
def test_overlapping_swap_has_a_witness(path):
    text = path.read_text()
    accept, drop = _published_pair(text)  # type: ignore[misc]
    res = compare(text, _drop_first(text), "swapped", version=_version(path))
    assert not res.equivalent
    orders = [d for d in res.differences if d.kind == "order"]
    assert orders and all(d.witness for d in orders), res.text()
    w = next(d.witness for d in orders if accept in [t for _, _, t in d.rules])
    ref, ours = w.outcomes
    assert (ref.effect, ours.effect) == ("DROP", "ACCEPT")
    assert (ref.chain, ours.chain) == ("DOCKER", "DOCKER")
    bridge = re.search(r"-o (\S+)", drop)[1]
    assert w.packet.oif == bridge and w.packet.iif != bridge
    assert f"-d {w.packet.dst}/" in accept
    assert w.table == "filter" and w.hook == "FORWARD"


def test_rule_only_on_one_side_has_a_witness():
    text = (RULESETS / "usernet-portmap" / "iptables-save.txt").read_text()
    ref = "".join(l + "\n" for l in text.splitlines() if "-j DNAT" not in l)
    res = compare(text, ref, "ref")
    (d,) = res.differences
    assert d.kind == "only-nftdocker" and d.witness is not None
    w = d.witness
    assert (w.outcomes[0].effect, w.outcomes[1].effect) == ("ACCEPT", "DNAT --to-destination 192.0.2.2:80")
    assert w.packet.dport == 8080 and w.packet.iif != "bridge1" and w.packet.dst_local
    assert w.hook in ("PREROUTING", "OUTPUT") and w.outcomes[0].rule is None  # the policy decided


def test_unknown_match_is_never_equivalent_when_moved():
    text = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -o br0 -j ACCEPT\n-A FORWARD -m mark --mark 0x1 -o br1 -j DROP\nCOMMIT\n"
    swapped = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m mark --mark 0x1 -o br1 -j DROP\n-A FORWARD -o br0 -j ACCEPT\nCOMMIT\n"
    res = compare(text, swapped, "ref")
    assert not res.equivalent and res.differences[0].kind == "order"


# ---------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("path", [p for p in CAPTURES if p.parent.parent == RULESETS], ids=_id)
def test_cli_equivalent_and_different(path, tmp_path):
    text = path.read_text()
    six = ["--ipv6"] if _version(path) == 6 else []
    moved = _reorder(text, random.Random(_id(path)))
    ref = tmp_path / "moved.txt"
    ref.write_text(moved)
    p = run_cli("diff", "--semantic", _scenario(path), ref, *six)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("\n") == 1 and p.stdout.startswith("equivalent: ")
    if moved != text:
        assert run_cli("diff", _scenario(path), ref, *six).returncode == 1
        assert "moved" in p.stdout
    if path not in PAIRED:
        return
    ref.write_text(_drop_first(text))
    p = run_cli("diff", "--semantic", _scenario(path), ref, *six)
    assert p.returncode == 1 and "  witness: " in p.stdout and p.stdout.splitlines()[-1].startswith("different: ")
    j = run_cli("diff", "--semantic", "--json", _scenario(path), ref, *six)
    assert j.returncode == 1
    out = json.loads(j.stdout)
    assert out["equivalent"] is False
    w = next(d["witness"] for d in out["differences"] if d["kind"] == "order")
    assert w["reference"]["effect"] == "DROP" and w["nftdocker"]["effect"] == "ACCEPT"
    assert w["packet"]["proto"] in ("tcp", "udp") and w["at"] == "filter FORWARD"
