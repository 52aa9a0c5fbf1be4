"""Property: whenever diff --semantic calls a permutation of a generated host's chains equivalent,
packets agree. Most examples probe with the evaluator (every hook of every table, a sample of
packets built from every rule's box); a few send verify's probes through both orders in namespaces.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nftdocker.verify.run import verify
from nftdocker.compat.translate import compat_of
from nftdocker.docker.generate import generate
from nftdocker.nft.ir import BUILTIN_CHAINS
from nftdocker.compat.reference import parse
from nftdocker.compat.chain_eval import evaluate
from nftdocker.compat.semantic import Hints, candidates, parse_rule
from nftdocker.compat.semantic_diff import compare

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import synthetic  # noqa: E402

GEN = generate(synthetic.host(3, 2, 2))
TEXT = compat_of(GEN, "ip")
TABLES = parse(TEXT)


@st.composite
def permuted(draw) -> str:
    """TEXT with each chain kept, permuted at random, or changed by a few adjacent swaps."""
    out = []
    for line in TEXT.splitlines():
        if not line.startswith("-A "):
            out.append(line)
    body: dict[tuple[str, str], list[str]] = {}
    for name, t in TABLES.items():
        for r in t.rules:
            body.setdefault((name, r.split()[1]), []).append(r)
    for key, rules in body.items():
        how = draw(st.sampled_from(["keep", "swaps", "swaps", "shuffle"]))
        rules = list(rules)
        if how == "shuffle":
            rules = draw(st.permutations(rules))
        elif how == "swaps" and len(rules) > 1:
            for k in draw(st.lists(st.integers(0, len(rules) - 2), max_size=4)):
                rules[k], rules[k + 1] = rules[k + 1], rules[k]
        body[key] = rules
    text = []
    table = None
    for line in out:
        if line.startswith("*"):
            table = line[1:]
        if line == "COMMIT":
            text.extend(r for (t, _), rs in body.items() if t == table for r in rs)
        text.append(line)
    return "\n".join(text) + "\n"


def _chains(text: str) -> dict[str, tuple[dict, dict]]:
    out = {}
    for name, t in parse(text).items():
        chains: dict[str, list] = {}
        for r in t.rules:
            chains.setdefault(r.split()[1], []).append(parse_rule(r))
        out[name] = (chains, t.policies)
    return out


ALL_RULES = [parse_rule(r) for t in TABLES.values() for r in t.rules]
HINTS = Hints.of(ALL_RULES)
PROBES = [p for r in ALL_RULES for p in list(candidates(r.box, HINTS, 4))[:4]]


def _disagreements(a: str, b: str) -> list[str]:
    ca, cb = _chains(a), _chains(b)
    bad = []
    for name in ca:
        for hook in BUILTIN_CHAINS[name]:
            for p in PROBES:
                q = p
                if hook in ("OUTPUT", "POSTROUTING"):
                    q = type(p)(**{**p.__dict__, "iif": None})
                if hook in ("PREROUTING", "INPUT"):
                    q = type(p)(**{**p.__dict__, "oif": None})
                ea = evaluate(*ca[name], hook, q).effect
                eb = evaluate(*cb[name], hook, q).effect
                if ea != eb:
                    bad.append(f"{name} {hook} {q.text()}: {ea} / {eb}")
    return bad


def test_the_probe_sample_is_sharp():
    """Swapping one overlapping pair is caught by the sample (so the property below can fail)."""
    lines = TEXT.splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith("-A DOCKER -d ") and "-j ACCEPT" in l)
    bridge = lines[i].split(" -o ")[1].split()[0]
    j = lines.index(f"-A DOCKER ! -i {bridge} -o {bridge} -j DROP")
    lines.insert(i, lines.pop(j))
    bad_text = "\n".join(lines) + "\n"
    assert _disagreements(TEXT, bad_text)
    assert not compare(TEXT, bad_text, "swapped").equivalent


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(permuted())
def test_equivalent_means_packets_agree(text):
    res = compare(TEXT, text, "permuted")
    if res.equivalent:
        assert _disagreements(TEXT, text) == []
    for w in res.witnesses:  # and every witness is one the evaluator confirms
        ref, ours = _chains(text)[w.table], _chains(TEXT)[w.table]
        assert evaluate(*ref, w.hook, w.packet).effect != evaluate(*ours, w.hook, w.packet).effect


def _netns_ready() -> bool:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "iptables-legacy-restore", "ip6tables-legacy-restore")):
        return False
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.netns
@pytest.mark.skipif(not _netns_ready(), reason="needs root, iproute2, iptables-legacy and pyroute2")
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(permuted().filter(lambda t: t != TEXT and compare(TEXT, t, "permuted").equivalent))
def test_equivalent_permutation_agrees_in_namespaces(text):
    report = verify(GEN, reference4=text, reference_names=("permuted", None))
    assert report.ok, [r.probe.describe() for r in report.differences]
