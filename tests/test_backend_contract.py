"""The Backend contract: the same tests against the FakeBackend (always, no root) and against
libnftables in a fresh network namespace (root; marked netns).

What the apply engine relies on: a transaction is all or nothing; a refusal names the offending
operation and its rule's origin; a fresh table numbers its chains and then its rules from 1 in
the order they were added; the notifications of our commit carry the new rules' handles in batch
order and the generation; the generation moves by one per commit; a listing reads back the keys
the generated rules were sent as; and the engine on top (apply, the resume, the long-running
applier) leaves exactly what a fresh full replace leaves.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from conftest import RULESETS, needs_netns
from nftdocker.apply import engine
from nftdocker.apply.applier import IncrementalApplier
from nftdocker.docker.generate import generate
from nftdocker.errors import ApplyError
from nftdocker.nft import netns as namespaces
from nftdocker.nft import state
from nftdocker.nft.backend import Backend, Libnftables
from nftdocker.nft.fake import FakeBackend
from nftdocker.nft.netlink import MSG_NEWRULE
from nftdocker.nft.replace import full
from nftdocker.nft.transaction import Op, Transaction, rule
from nftdocker.nft.view import wanted
from nftdocker.scenario.load import load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import synthetic  # noqa: E402

TABLE = "nftdocker"


@pytest.fixture(params=["fake", pytest.param("libnftables", marks=[pytest.mark.netns, needs_netns])])
def be(request, tmp_path, monkeypatch) -> Iterator[Backend]:
    monkeypatch.setattr(state, "STATE_DIR", tmp_path / "state")
    if request.param == "fake":
        yield FakeBackend()
        return
    name = request.getfixturevalue("netns")
    with namespaces.netns(name):
        yield Libnftables()


def small_table(extra: list[Op] | None = None) -> Transaction:
    tx = Transaction([Op("add", "table", "ip", TABLE, body='comment "managed by nftdocker";'),
                      Op("add", "chain", "ip", TABLE, "filter-DOCKER-USER"),
                      Op("add", "chain", "ip", TABLE, "filter-DOCKER"),
                      rule("add", "ip", TABLE, "filter-DOCKER-USER", "return", "setupUserChain"),
                      rule("add", "ip", TABLE, "filter-DOCKER", "jump filter-DOCKER-USER", "test: a jump")])
    tx.extend(extra or [])
    return tx


def host_gen(n: int = 2):
    return generate(synthetic.host(n))


# ---------------------------------------------------------------------- the backend itself


def test_a_fresh_table_numbers_chains_then_rules_in_order(be):
    be.run(small_table())
    kt = be.read_table("ip", TABLE)
    assert kt is not None and list(kt.chains) == ["filter-DOCKER-USER", "filter-DOCKER"]
    assert kt.chains["filter-DOCKER-USER"].keys == ["return"]
    assert [kt.chains[c].handles for c in kt.chains] == [[3], [4]]
    info = be.table_info("ip", TABLE)
    assert info is not None and info.comment == "managed by nftdocker" and info.handle == kt.handle
    assert be.chain_names("ip", TABLE) == ["filter-DOCKER-USER", "filter-DOCKER"]
    assert be.read_chain("ip", TABLE, "filter-DOCKER-USER") == [("return", 3)]


def test_a_refused_transaction_changes_nothing_and_names_the_origin(be):
    be.run(small_table())
    g0 = be.genid()
    bad = Transaction([rule("add", "ip", TABLE, "filter-DOCKER", "return", "test: fine"),
                       rule("add", "ip", TABLE, "filter-DOCKER", "jump filter-NOWHERE", "test: jumps nowhere")])
    with pytest.raises(ApplyError) as e:
        be.run(bad)
    assert "nothing changed" in str(e.value) and "offending command 2" in str(e.value) and "test: jumps nowhere" in str(e.value)
    assert be.genid() == g0
    assert be.read_table("ip", TABLE).chains["filter-DOCKER"].keys == ["jump filter-DOCKER-USER"]


def test_a_rule_in_a_missing_chain_is_refused(be):
    be.run(small_table())
    with pytest.raises(ApplyError) as e:
        be.run(Transaction([rule("add", "ip", TABLE, "filter-MISSING", "return", "test: no chain")]))
    assert "test: no chain" in str(e.value)


def test_check_only_changes_nothing(be):
    g0 = be.genid()
    be.run(small_table(), check=True)
    assert be.read_table("ip", TABLE) is None and be.genid() == g0


def test_our_commit_is_told_with_its_handles_and_generation(be):
    be.run(small_table())
    g0 = be.genid()
    mon = be.monitor()
    try:
        mon.drain()
        be.run(Transaction([rule("insert", "ip", TABLE, "filter-DOCKER", "return", "test: head"),
                            rule("add", "ip", TABLE, "filter-DOCKER-USER", "return", "test: tail")]))
        got = mon.own_commit(threading.get_native_id())
    finally:
        mon.close()
    assert got is not None
    genid, events = got
    assert genid == be.genid() == (g0 + 1) & 0xFFFFFFFF
    new = [(e.chain, e.handle) for e in events if e.msg == MSG_NEWRULE]
    kt = be.read_table("ip", TABLE)
    assert new == [("filter-DOCKER", kt.chains["filter-DOCKER"].handles[0]),
                   ("filter-DOCKER-USER", kt.chains["filter-DOCKER-USER"].handles[-1])]


def test_delete_by_handle_and_digests(be):
    be.run(small_table())
    kt = be.read_table("ip", TABLE)
    h = kt.chains["filter-DOCKER"].handles[0]
    d = be.rule_digest("ip", TABLE, "filter-DOCKER", h)
    assert d is not None and d == be.rule_digest("ip", TABLE, "filter-DOCKER", h)
    assert be.rule_digest("ip", TABLE, "filter-DOCKER", 999) is None
    be.run(Transaction([Op("delete", "rule", "ip", TABLE, "filter-DOCKER", handle=h)]))
    assert be.read_table("ip", TABLE).chains["filter-DOCKER"].keys == []


def test_the_generated_table_reads_back_as_its_keys_block_or_flat(be):
    gen = generate(load(RULESETS / "usernet-portmap" / "scenario.toml"))
    tx = full(be, gen.rulesets, TABLE)
    assert tx.block
    be.run(tx)
    for fam in gen.families():
        kt = be.read_table(fam, TABLE)
        assert {n: c.keys for n, c in kt.chains.items()} == {n: w.keys for n, w in wanted(gen.rulesets[fam]).items()}
        assert {n: c.handles for n, c in kt.chains.items()} == {n: c.handles for n, c in tx.after[fam].chains.items()}
    flat = full(be, gen.rulesets, TABLE)
    flat.block = False
    be.run(flat)
    for fam in gen.families():
        assert {n: c.keys for n, c in be.read_table(fam, TABLE).chains.items()} == \
            {n: c.keys for n, c in tx.after[fam].chains.items()}


# ---------------------------------------------------------------------- the engine on top


def listing(be: Backend) -> dict:
    return {f: {n: c.keys for n, c in kt.chains.items()} if (kt := be.read_table(f, TABLE)) else None for f in ("ip", "ip6")}


def fresh_listing(gen) -> dict:
    fresh = FakeBackend()
    engine.apply(gen, replace=True, store=False, backend=fresh)
    return listing(fresh)


def test_apply_edits_in_place_and_equals_a_fresh_replace(be):
    sc = synthetic.host(3)
    assert engine.apply(generate(sc), backend=be).mode == "full"
    one = synthetic.with_container(sc, synthetic.new_container(sc, 0, network="net1"))
    res = engine.apply(generate(one), backend=be)
    assert (res.mode, res.commands, res.view) == ("incremental", 3, "state")
    assert listing(be) == fresh_listing(generate(one))
    res = engine.apply(generate(sc), backend=be)
    assert (res.mode, res.removed_rules) == ("incremental", 3)
    assert listing(be) == fresh_listing(generate(sc))


def test_resume_and_the_long_running_applier_take_the_one_replay_path(be):
    sc = synthetic.host(3)
    assert engine.apply_scenario(sc, backend=be).generation == "full"
    one = synthetic.with_container(sc, synthetic.new_container(sc, 0, network="net1"))
    res = engine.apply_scenario(one, backend=be)
    assert (res.generation, res.replayed, res.commands, res.mode) == ("resumed", 1, 3, "incremental")
    assert listing(be) == fresh_listing(generate(one))
    with IncrementalApplier(backend=be) as ap:
        assert ap.load(one).mode == "noop"
        ctr = synthetic.new_container(one, 1)
        plus = synthetic.with_container(one, ctr)
        st = ap.replay(lambda fw: fw.add_containers(plus, [ctr]))
        assert (st.mode, st.commands) == ("fast", 3)
    assert listing(be) == fresh_listing(generate(plus))


def test_remove_deletes_both_tables(be):
    engine.apply(host_gen(), backend=be)
    assert engine.remove(backend=be) == ["ip", "ip6"]
    assert listing(be) == {"ip": None, "ip6": None}


def test_a_replace_keeps_the_users_rules_in_docker_user(be):
    engine.apply(host_gen(), backend=be)
    user = rule("insert", "ip", TABLE, "filter-DOCKER-USER", "accept", "the user")
    if isinstance(be, FakeBackend):
        be.external(Transaction([user]))
    else:
        be.run(Transaction([user]))
    res = engine.apply(host_gen(), replace=True, backend=be)
    assert res.mode == "full" and res.kept_user_rules == {"ip": 1, "ip6": 0}
    assert listing(be)["ip"]["filter-DOCKER-USER"] == ["accept", "return"]


def test_listings_for_listing_and_heal(be):
    assert be.list_json(f"list table ip {TABLE}") == [] and be.list_text(f"list table ip {TABLE}") == ""
    be.run(Transaction([Op("add", "table", "ip", TABLE, body='comment "managed by nftdocker";'),
                        Op("add", "chain", "ip", TABLE, "filter-DOCKER-USER"),
                        Op("add", "chain", "ip", TABLE, "filter-FORWARD",
                           "type filter hook forward priority filter; policy accept;")]))
    objs = be.list_json(f"list table ip {TABLE}")
    assert [(k, o[k]["name"]) for o in objs for k in o if k != "metainfo"] == \
        [("table", TABLE), ("chain", "filter-DOCKER-USER"), ("chain", "filter-FORWARD")]
    assert next(o["chain"] for o in objs if "chain" in o and "hook" in o["chain"])["prio"] == 0
    assert [o for o in be.list_json("list sets ip") if "metainfo" not in o] == []
    be.run(Transaction([rule("add", "ip", TABLE, "filter-DOCKER-USER", "return")]))
    text = be.list_text(f"list table ip {TABLE}")
    assert text.startswith(f"table ip {TABLE} {{\n") and "\tchain filter-DOCKER-USER {\n\t\treturn\n\t}\n" in text


def test_the_fake_refuses_clearly_what_it_cannot_list_or_run():
    fake = FakeBackend()
    fake.run(small_table())
    with pytest.raises(NotImplementedError, match="nft text"):
        fake.list_json(f"list chain ip {TABLE} filter-DOCKER-USER")
    assert fake.json_cmd({"nftables": []})[0] != 0
