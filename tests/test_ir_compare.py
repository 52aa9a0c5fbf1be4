"""Rulesets compared as IR, and compat translating the IR: the same answers as through JSON (no root).

``watch`` and ``export`` compare two hosts with ``Ruleset`` equality, and ``compat_of`` translates a
generated ruleset directly; both once went through the hosts' libnftables JSON. These check, over
every case, that the IR answers what the JSON answered.
"""

from __future__ import annotations

import itertools

import pytest

from conftest import CASES, RULESETS
from nftdocker.compat.translate import compat_of, compat_text
from nftdocker.docker.generate import generate
from nftdocker.errors import GenerationError
from nftdocker.nft.ir import Chain, Rule, Ruleset
from nftdocker.nft.render import render_json_objects
from nftdocker.scenario.load import load, loads


def _gens() -> dict[str, object]:
    return {str(p.relative_to(RULESETS)): generate(load(p)) for case in CASES for p in sorted((RULESETS / case).glob("*.toml"))}


def test_ir_equality_agrees_with_json_equality_over_every_pair_of_cases():
    gens = _gens()
    json = {k: render_json_objects(g.rulesets) for k, g in gens.items()}
    for a, b in itertools.combinations(gens, 2):
        assert (gens[a].rulesets == gens[b].rulesets) == (json[a] == json[b]), (a, b)
    again = _gens()  # generated apart: equal, not the same objects
    assert all(again[k].rulesets == g.rulesets and again[k].rulesets is not g.rulesets for k, g in gens.items())


def test_origin_and_chain_order_do_not_count_rule_order_does():
    gen = generate(load(RULESETS / "usernet-portmap-noproxy" / "scenario.toml"))
    rs = gen.rulesets["ip"]
    relabelled = Ruleset(rs.family, {k: Chain(c.table, c.name, [Rule(r.matches, r.action, "elsewhere") for r in c.rules], c.policy, c.prio)
                                     for k, c in reversed(rs.chains.items())})
    assert relabelled == rs
    key, chain = next((k, c) for k, c in rs.chains.items() if len(set(c.rules)) > 1)
    reordered = Ruleset(rs.family, dict(rs.chains))
    reordered.chains[key] = Chain(chain.table, chain.name, list(reversed(chain.rules)), chain.policy, chain.prio)
    assert reordered != rs


@pytest.mark.parametrize("family", ["ip", "ip6"])
def test_compat_of_the_ir_equals_compat_of_its_json(family):
    for name, gen in _gens().items():
        assert compat_of(gen, family) == compat_text(render_json_objects(gen.rulesets), family), name


def test_compat_refuses_a_name_nft_cannot_hold_as_rendering_does():
    text = (RULESETS / "usernet-portmap-noproxy" / "scenario.toml").read_text()
    key = '"com.docker.network.bridge.name" = "bridge1"'
    assert text.count(key) == 1
    gen = generate(loads(text.replace(key, '"com.docker.network.bridge.name" = "abcdefghijklmn*"'), source="long-star.toml"))
    with pytest.raises(GenerationError, match="at most 14 bytes"):
        render_json_objects(gen.rulesets)
    with pytest.raises(GenerationError, match="at most 14 bytes"):
        compat_of(gen, "ip")
