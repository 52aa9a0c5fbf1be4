"""Generated is a snapshot: its own read-only copies, left as they are by later replays."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nftdocker.docker.generate import Firewall, Generated
from nftdocker.nft.replace import render_nft
from nftdocker.scenario.load import load, loads

ROOT = Path(__file__).resolve().parent.parent

MORE = """
[[containers]]
name = "c9"
networks = ["bridge1"]
publish = ["9999:99"]
"""


def test_later_replays_leave_the_snapshot_as_it_was():
    sc = load(ROOT / "rulesets" / "usernet-portmap" / "scenario.toml")
    fw = Firewall(sc)
    gen = fw.run()
    text, endpoints, bindings = render_nft(gen.rulesets), gen.endpoints, dict(gen.bindings)
    plus = loads((ROOT / "rulesets" / "usernet-portmap" / "scenario.toml").read_text() + MORE)
    fw.add_containers(plus, plus.containers[len(sc.containers):])
    after = fw.generated()
    assert render_nft(after.rulesets) != text and len(after.endpoints) == len(endpoints) + 1
    assert render_nft(gen.rulesets) == text
    assert gen.endpoints == endpoints and dict(gen.bindings) == bindings
    assert all(a is not b for f in ("ip", "ip6") for a, b in zip(gen.rulesets[f].chains.values(), after.rulesets[f].chains.values()))


def test_its_fields_are_read_only():
    gen = Firewall(load(ROOT / "rulesets" / "usernet-portmap" / "scenario.toml")).run()
    assert isinstance(gen.endpoints, tuple) and isinstance(gen.sysctls, tuple) and isinstance(gen.hairpin_ports, tuple)
    assert all(isinstance(bs, tuple) for bs in gen.bindings.values())
    with pytest.raises(TypeError):
        gen.rulesets["ip"] = gen.rulesets["ip6"]  # type: ignore[index]
    with pytest.raises(TypeError):
        gen.bindings["c1"] = ()  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        gen.endpoints = ()  # type: ignore[misc]


def test_a_replaced_copy_is_frozen_too():
    gen = Firewall(load(ROOT / "rulesets" / "usernet-portmap" / "scenario.toml")).run()
    rulesets = dict(gen.rulesets)
    copy = dataclasses.replace(gen, rulesets=rulesets, endpoints=list(gen.endpoints))
    assert isinstance(copy, Generated) and isinstance(copy.endpoints, tuple)
    rulesets.clear()
    assert set(copy.rulesets) == {"ip", "ip6"} and render_nft(copy.rulesets) == render_nft(gen.rulesets)
