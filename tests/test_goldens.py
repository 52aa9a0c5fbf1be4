"""Golden outputs under rulesets/<case>/, written by the code (pytest --update-goldens)."""

from __future__ import annotations

import json

import pytest

from conftest import CASES, COMPAT, RULESETS
from nftdocker.compat.translate import compat_text
from nftdocker.docker.generate import generate
from nftdocker.nft.render import render_json, render_json_objects
from nftdocker.nft.replace import render_nft
from nftdocker.scenario.load import load


@pytest.mark.parametrize("case", CASES)
def test_goldens(case, golden):
    gen = generate(load(RULESETS / case / "scenario.toml"))
    rss = gen.rulesets
    golden.check(RULESETS / case / "ruleset.nft", render_nft(rss))
    golden.check(RULESETS / case / "ruleset.json", render_json(rss))
    objs = render_json_objects(rss)
    golden.check(RULESETS / case / "iptables-save.txt", compat_text(objs, "ip"))
    golden.check(RULESETS / case / "ip6tables-save.txt", compat_text(objs, "ip6"))


@pytest.mark.parametrize("case", CASES)
def test_goldens_agree_with_docker(case):
    """The golden compat files are checked against the real captures, not just against themselves."""
    for name in ("iptables-save.txt", "ip6tables-save.txt"):
        assert (RULESETS / case / name).read_text() == (COMPAT / case / name).read_text()


@pytest.mark.parametrize("case", CASES)
def test_golden_json_translates_back(case):
    """compat reads ruleset.json itself (not the scenario)."""
    objs = json.loads((RULESETS / case / "ruleset.json").read_text())["nftables"]
    assert compat_text(objs, "ip") == (COMPAT / case / "iptables-save.txt").read_text()


def _walk(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


@pytest.mark.parametrize("case", CASES)
def test_native_only(case):
    """No sets, maps, verdict maps or xt expressions: loads without x_tables or nft_compat."""
    objs = json.loads((RULESETS / case / "ruleset.json").read_text())["nftables"]
    keys = set(_walk(objs))
    assert not keys & {"set", "map", "vmap", "xt", "element", "elem"}
    text = (RULESETS / case / "ruleset.nft").read_text()
    for word in (" vmap ", " map ", "@", " xt "):
        assert word not in text
