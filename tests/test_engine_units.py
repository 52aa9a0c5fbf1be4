"""The apply engine without root: the planner, transactions, handle learning, the stored state and
the resume path, on the FakeBackend (nftdocker/nft/fake.py). tests/test_backend_contract.py shows
the fake behaves as libnftables does for all the engine relies on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import RULESETS, sent_after
from nftdocker.apply import engine
from nftdocker.apply.applier import IncrementalApplier
from nftdocker.docker.generate import generate
from nftdocker.errors import ApplyError, UsageError
from nftdocker.nft import state
from nftdocker.nft.commit import commit, kernel_views, learn
from nftdocker.nft.diff import Replace, calls_edit, diff, plan
from nftdocker.nft.fake import FakeBackend
from nftdocker.nft.transaction import Block, ChainBlock, Op, Transaction, locate, offending, rule
from nftdocker.scenario.load import load, loads

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import synthetic  # noqa: E402

TABLE = "nftdocker"


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_DIR", tmp_path / "state")
    return tmp_path / "state"


@pytest.fixture
def be() -> FakeBackend:
    return FakeBackend()


def keys(be: FakeBackend) -> dict:
    return {f: {n: c.keys for n, c in kt.chains.items()} if (kt := be.read_table(f, TABLE)) else None for f in ("ip", "ip6")}


def fresh(gen) -> dict:
    other = FakeBackend()
    engine.apply(gen, replace=True, store=False, backend=other)
    return keys(other)


def plus_one(sc, i: int = 0, network: str = "net1"):
    return synthetic.with_container(sc, synthetic.new_container(sc, i, network=network))


# ---------------------------------------------------------------------- transactions


def test_an_op_renders_one_command_a_line():
    assert Op("add", "table", "ip", "t", body='comment "x";').line() == 'add table ip t { comment "x"; }'
    assert Op("add", "chain", "ip", "t", "c").line() == "add chain ip t c"
    assert Op("flush", "chain", "ip", "t", "c").line() == "flush chain ip t c"
    assert rule("insert", "ip", "t", "c", "accept", "o").line() == "insert rule ip t c accept"
    assert Op("delete", "rule", "ip", "t", "c", handle=7).line() == "delete rule ip t c handle 7"


def test_a_new_table_renders_in_block_form_and_the_rest_flat():
    new = Block("ip", "t", 'comment "x";', [
        ChainBlock("a", "type filter hook forward priority filter; policy accept;", ["jump b", "accept"], ["moby.a1", "moby.a2"]),
        ChainBlock("b", "", ["return"], [""])])
    tx = Transaction([Op("add", "table", "ip", "t"), Op("delete", "table", "ip", "t"), new,
                      Op("delete", "table", "ip6", "t")], block=True)
    assert tx.text == ("add table ip t\ndelete table ip t\ntable ip t {\n\tcomment \"x\";\n"
                       "\tchain a {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tjump b\n\t\taccept\n\t}\n"
                       "\tchain b {\n\t\treturn\n\t}\n}\ndelete table ip6 t\n")
    assert tx.flat_lines() == ["add table ip t", "delete table ip t", 'add table ip t { comment "x"; }',
                               "add chain ip t a { type filter hook forward priority filter; policy accept; }",
                               "add chain ip t b", "add rule ip t a jump b", "add rule ip t a accept", "add rule ip t b return",
                               "delete table ip6 t"]
    assert tx.commands() == len(tx.ops) == 9
    assert [op.origin for op in tx.ops if op.obj == "rule"] == ["moby.a1", "moby.a2", ""]
    assert new.lines(spaced=True, comments=True)[3:9] == ["\t\ttype filter hook forward priority filter; policy accept;",
                                                         '\t\tjump b comment "moby.a1"', '\t\taccept comment "moby.a2"',
                                                         "\t}", "", "\tchain b {"]


def test_a_refused_block_is_located_on_its_flat_form_with_the_origin():
    ops = [rule("add", "ip", "t", "c", f"r{i}", f"moby.f[{i}]") for i in range(10)]
    tx = Transaction(ops, block=True)
    bad = lambda text: "r6" not in text  # noqa: E731  (a dry run refusing r6)
    assert locate(tx, bad) == 7
    msg = offending(tx, "Could not process rule", bad)
    assert msg == "Could not process rule; offending command 7: add rule ip t c r6 (origin: moby.f[6])"
    assert locate(Transaction(), bad) is None


def test_the_full_replace_names_the_moby_origin_of_a_refused_rule(be, monkeypatch):
    gen = generate(load(RULESETS / "usernet-portmap" / "scenario.toml"))
    loop = Transaction([rule("add", "ip", TABLE, "filter-DOCKER-CT", "jump filter-NOWHERE", "test: injected")])
    sent_after(monkeypatch, loop)
    with pytest.raises(ApplyError, match="origin: test: injected"):
        engine.apply(gen, backend=be)
    assert keys(be) == {"ip": None, "ip6": None}


def test_the_in_place_edit_carries_the_rules_moby_origins(be):
    sc = synthetic.host(2)
    engine.apply(generate(sc), backend=be)
    views, _ = kernel_views(be, TABLE)
    tx = diff(views, generate(plus_one(sc)).rulesets, TABLE)
    origins = [op.origin for op in tx.ops]
    assert len(origins) == 3 and all(o and not o.startswith(("filter-", "nat-", "raw-")) for o in origins), origins


# ---------------------------------------------------------------------- the planner


def test_nothing_loaded_is_a_full_replace(be):
    views, _ = kernel_views(be, TABLE)
    with pytest.raises(Replace, match="no table loaded yet"):
        diff(views, generate(synthetic.host(2)).rulesets, TABLE)
    tx, reason = plan(be, views, generate(synthetic.host(2)).rulesets, TABLE)
    assert (tx.mode, reason) == ("full", "no table loaded yet")


def test_a_large_difference_is_a_full_replace(be):
    engine.apply(generate(synthetic.host(1)), backend=be)
    views, _ = kernel_views(be, TABLE)
    tx, reason = plan(be, views, generate(synthetic.host(30)).rulesets, TABLE)
    assert tx.mode == "full" and "larger than the table" in reason


def test_an_unchanged_host_is_a_noop_and_replace_is_full(be):
    gen = generate(synthetic.host(2))
    engine.apply(gen, backend=be)
    views, _ = kernel_views(be, TABLE)
    assert plan(be, views, gen.rulesets, TABLE)[0].mode == "noop"
    assert plan(be, views, gen.rulesets, TABLE, replace=True)[0].mode == "full"
    assert engine.apply(gen, backend=be).mode == "noop"


def test_a_family_going_away_deletes_its_table(be):
    text = synthetic.scenario_toml(2)
    engine.apply(generate(loads(text)), backend=be)
    gen = generate(loads(text.replace("[daemon]", "[daemon]\nip6tables = false", 1)))
    res = engine.apply(gen, backend=be)
    assert (res.mode, res.removed, res.families) == ("incremental", ["ip6"], ["ip"])
    assert keys(be) == fresh(gen)


def test_a_foreign_table_of_that_name_is_refused(be):
    be.external(Transaction([Op("add", "table", "ip", TABLE)]))
    with pytest.raises(UsageError, match="not created by nftdocker"):
        engine.apply(generate(synthetic.host(1)), backend=be)


def test_recorded_calls_become_an_edit_and_a_new_chain_does_not(be):
    engine.apply(generate(synthetic.host(2)), backend=be)
    views, _ = kernel_views(be, TABLE)
    calls = {"ip": [("add", "filter", "DOCKER", "accept", "moby.x"), ("add", "filter", "DOCKER", "drop", "moby.y"),
                    ("delete", "filter", "DOCKER", "drop", "moby.y")]}
    tx = calls_edit(views, calls, TABLE)
    assert [op.line() for op in tx.ops] == ["add rule ip nftdocker filter-DOCKER accept"] and tx.ops[0].origin == "moby.x"
    assert calls_edit(views, {"ip": [("chain", "filter", "DOCKER-NEW", "", "")]}, TABLE) is None
    assert calls_edit(views, {"ip": [("delete", "filter", "DOCKER", "not there", "")]}, TABLE) is None


# ---------------------------------------------------------------------- handle learning


def test_handles_are_learnt_from_the_notifications(be):
    sc = synthetic.host(2)
    engine.apply(generate(sc), backend=be)
    views, _ = kernel_views(be, TABLE)
    tx = diff(views, generate(plus_one(sc)).rulesets, TABLE)
    after, genid = commit(be, tx, TABLE, store=False)
    assert genid == be.genid() and after is not None
    for fam, kt in after.items():
        listed = be.read_table(fam, TABLE)
        assert {n: (c.keys, c.handles) for n, c in kt.chains.items()} == {n: (c.keys, c.handles) for n, c in listed.chains.items()}


def test_notifications_that_do_not_match_teach_nothing(be):
    sc = synthetic.host(2)
    engine.apply(generate(sc), backend=be)
    views, _ = kernel_views(be, TABLE)
    tx = diff(views, generate(plus_one(sc)).rulesets, TABLE)
    assert learn(tx, [], TABLE) is None


def test_the_long_running_applier_notices_a_foreign_commit(be):
    sc = synthetic.host(3)
    with IncrementalApplier(backend=be) as ap:
        ap.load(sc)
        kt = be.read_table("ip", TABLE)
        h = kt.chains["filter-DOCKER"].handles[0]
        be.external(Transaction([Op("delete", "rule", "ip", TABLE, "filter-DOCKER", handle=h)]))
        ctr = synthetic.new_container(sc, 0, network="net2")
        plus = synthetic.with_container(sc, ctr)
        st = ap.replay(lambda fw: fw.add_containers(plus, [ctr]))
        assert st.resynced and st.mode == "diff"
        assert keys(be) == fresh(generate(plus))


# ---------------------------------------------------------------------- the stored state


def stored(be: FakeBackend) -> Path:
    return state.state_path(be, TABLE)


def test_the_stored_view_is_used_while_nothing_else_committed(be):
    sc = synthetic.host(2)
    engine.apply(generate(sc), backend=be)
    assert stored(be).is_file()
    assert kernel_views(be, TABLE)[1] == "state"
    be.external(Transaction([Op("add", "table", "ip", "somebody")]))
    assert state.stored_state(be, TABLE) is None  # stale: silently
    assert engine.apply(generate(plus_one(sc)), backend=be).view == "listing"


@pytest.mark.parametrize("damage", ["not json", '{"tables": 3}', "chains"])
def test_a_damaged_state_is_ignored_with_one_warning(be, caplog, damage):
    engine.apply(generate(synthetic.host(2)), backend=be)
    path = stored(be)
    if damage == "chains":
        d = json.loads(path.read_text())
        d["tables"]["ip"]["chains"][0][3] = [1, 2]
        path.write_text(json.dumps(d))
    else:
        path.write_text(damage)
    assert state.stored_state(be, TABLE) is None
    assert [r.getMessage() for r in caplog.records if "ignoring the stored state" in r.getMessage()], caplog.text


def test_a_forged_state_is_not_the_kernels_and_is_ignored(be, caplog):
    sc = synthetic.host(2)
    engine.apply(generate(sc), backend=be)
    path = stored(be)
    d = json.loads(path.read_text())
    chain = next(c for c in d["tables"]["ip"]["chains"] if c[4])
    chain[4][0] = 9999  # a handle the kernel does not have there
    path.write_text(json.dumps(d))
    assert state.stored_state(be, TABLE) is None
    assert "is not the kernel's" in caplog.text
    assert engine.apply(generate(plus_one(sc)), backend=be).view == "listing"


def test_remove_forgets_the_state(be):
    engine.apply(generate(synthetic.host(1)), backend=be)
    engine.remove(backend=be)
    assert not stored(be).exists()


# ---------------------------------------------------------------------- the resume path


def test_apply_resumes_appended_containers_and_equals_a_fresh_apply(be):
    sc = synthetic.host(3)
    assert engine.apply_scenario(sc, backend=be).generation == "full"
    one = plus_one(sc)
    res = engine.apply_scenario(one, backend=be)
    assert (res.generation, res.replayed, res.commands, res.view) == ("resumed", 1, 3, "state")
    two = plus_one(one, 1, "net2")
    assert engine.apply_scenario(two, backend=be).generation == "resumed"
    assert keys(be) == fresh(generate(two))
    res = engine.apply_scenario(one, backend=be)  # a removal: generated whole, still a small edit
    assert (res.generation, res.mode, res.commands) == ("full", "incremental", 3)
    assert keys(be) == fresh(generate(one))


def test_a_damaged_checkpoint_generates_the_host(be, caplog):
    sc = synthetic.host(2)
    engine.apply_scenario(sc, backend=be)
    path = stored(be)
    d = json.loads(path.read_text())
    d["checkpoint"]["ipam"] = "forged"
    path.write_text(json.dumps(d))
    res = engine.apply_scenario(plus_one(sc), backend=be)
    assert res.generation == "full" and "ignoring the stored state" in caplog.text
    assert keys(be) == fresh(generate(plus_one(sc)))


def test_check_resumes_nothing_and_changes_nothing(be):
    sc = synthetic.host(2)
    engine.apply_scenario(sc, backend=be)
    before, g0 = be.dump(), be.genid()
    res = engine.apply_scenario(plus_one(sc), check=True, backend=be)
    assert (res.checked, res.generation) == (True, "full")
    assert (be.dump(), be.genid()) == (before, g0)


def test_a_new_tables_user_chain_gets_the_user_rules_files_rules(be):
    from nftdocker.host import user_rules as ur
    rules = ur.parse("rules.nft", b"ip: tcp dport 2222 drop\nip6: ip6 saddr 2001:db8:ff::/48 drop\n")
    text = synthetic.scenario_toml(2)
    engine.apply(generate(loads(text.replace("[daemon]", "[daemon]\nip6tables = false", 1))), user_rules=rules, backend=be)
    gen = generate(loads(text))
    res = engine.apply(gen, user_rules=rules, backend=be)
    other = FakeBackend()
    engine.apply(gen, replace=True, store=False, user_rules=rules, backend=other)
    assert res.mode == "incremental"
    assert keys(be) == keys(other)
    assert len(keys(be)["ip6"]["filter-DOCKER-USER"]) == 2
    assert engine.apply(gen, user_rules=rules, backend=be).mode == "noop"


@pytest.mark.parametrize("lost", [False, True])
def test_own_commit_is_not_told_once_notifications_were_lost(lost):
    from nftdocker.nft.netlink import MSG_NEWGEN, MSG_NEWRULE, Event, Monitor
    mon = Monitor.__new__(Monitor)  # no socket: _read is played below
    mon.pending, mon.foreign, mon.lost, mon._commits = [], [], False, []

    def read(timeout: float) -> bool:
        mon.lost = lost  # ENOBUFS while reading: a foreign NEWGEN may be among the dropped messages
        mon.pending.append(Event(MSG_NEWRULE, "ip", "t", "c", 7))
        mon._close_commit(Event(MSG_NEWGEN, "", genid=5, pid=42))
        return True

    mon._read = read  # type: ignore[method-assign]
    got = mon.own_commit(42, timeout=0.01)
    assert got is None if lost else got == (5, [Event(MSG_NEWRULE, "ip", "t", "c", 7)])


def test_a_refusal_a_dry_run_does_not_reproduce_blames_no_operation():
    tx = Transaction([rule("add", "ip", "t", "c", f"r{i}", f"moby.f[{i}]") for i in range(3)])
    assert locate(tx, lambda text: True) is None
    assert offending(tx, "Device or resource busy", lambda text: True) == \
        "Device or resource busy; not reproducible in a dry run"


def test_recorded_calls_learn_their_handles_through_commit_as_any_edit(be):
    engine.apply(generate(synthetic.host(2)), backend=be)
    views, _ = kernel_views(be, TABLE)
    before = {n: list(c.handles) for n, c in views["ip"].chains.items()}
    first = views["ip"].chains["filter-DOCKER"].keys[0]
    calls = {"ip": [("add", "filter", "DOCKER", "accept", "moby.x"), ("insert", "filter", "DOCKER", "drop", "moby.y"),
                    ("delete", "filter", "DOCKER", first, "moby.z"), ("insert", "filter", "DOCKER", "reject", "moby.w")]}
    tx = calls_edit(views, calls, TABLE)
    assert [s[2] for s in tx.slots] == [len(views["ip"].chains["filter-DOCKER"].keys) + 1, 1, 0]
    after, genid = commit(be, tx, TABLE, store=False)
    assert genid == be.genid() and after is not None
    listed = be.read_table("ip", TABLE)
    assert {n: (c.keys, c.handles) for n, c in after["ip"].chains.items()} == \
        {n: (c.keys, c.handles) for n, c in listed.chains.items()}
    assert {n: c.handles for n, c in views["ip"].chains.items()} == before  # the view read is left as it was
