"""Incremental apply (issue 6): the in-place edit equals a full replace, and costs what the change costs.

The kernel tests run in network namespaces they make and remove. Hosts come from
benchmarks/synthetic.py (198.18.0.0/15, the benchmarking range, only ever inside those namespaces).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RULESETS, needs_netns, sent_after
import dataclasses

from nftdocker.apply import engine
from nftdocker.apply.applier import IncrementalApplier
from nftdocker.docker.record import RecordingFirewall
from nftdocker.errors import ApplyError
from nftdocker.nft import diff, state
from nftdocker.nft import netns as namespaces
from nftdocker.nft.backend import Libnftables
from nftdocker.nft.commit import kernel_views
from nftdocker.nft.transaction import Transaction, rule
from nftdocker.docker.generate import generate
from nftdocker.nft.replace import render_nft
from nftdocker.scenario.load import load, loads

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import synthetic  # noqa: E402

TABLE = "nftdocker"


# ---------------------------------------------------------------------- no kernel


@pytest.mark.parametrize("case", sorted(p.name for p in RULESETS.iterdir() if (p / "scenario.toml").is_file()))
def test_indexed_generation_equals_generate(case):
    sc = load(RULESETS / case / "scenario.toml")
    a, b = generate(sc), RecordingFirewall(sc).run()
    assert render_nft(a.rulesets) == render_nft(b.rulesets)
    assert (a.endpoints, a.bindings, a.sysctls) == (b.endpoints, b.bindings, b.sysctls)


def _replay(keys: list[str], handles: list[int], ed: diff.ChainEdit | None) -> list[str]:
    """What the kernel does with a ChainEdit: deletes by handle, inserts at the head, appends."""
    if ed is None:
        return keys
    gone = set(ed.deletes)
    out = [k for k, h in zip(keys, handles) if h not in gone]
    for k in reversed(ed.head):
        out.insert(0, k)
    return out + ed.tail


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("abcdefgh"), max_size=12), st.lists(st.sampled_from("abcdefghij"), max_size=12))
def test_chain_edit_turns_old_into_new(old, new):
    handles = list(range(100, 100 + len(old)))
    ed = diff.chain_edit(old, handles, new)
    assert _replay(old, handles, ed) == new
    if ed is not None:
        kept = [h for h in ed.handles if h is not None]
        assert set(kept).isdisjoint(ed.deletes) and len(kept) + len(ed.head) + len(ed.tail) == len(new)


def test_chain_edit_uses_the_ends_for_dockers_own_calls():
    old = [f"r{i}" for i in range(1000)]
    h = list(range(1000))
    assert diff.chain_edit(old, h, ["new"] + old).head == ["new"]  # -I
    ed = diff.chain_edit(old, h, old + ["new"])  # -A
    assert (ed.head, ed.tail, ed.deletes) == ([], ["new"], [])
    ed = diff.chain_edit(old, h, old[:500] + old[501:])  # -D
    assert (ed.head, ed.tail, ed.deletes) == ([], [], [500])


# ---------------------------------------------------------------------- kernel

def kernel_test(f):
    return pytest.mark.netns(needs_netns(f))


@contextmanager
def namespace():
    name = f"nftdi-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        state.forget(name)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def two_ns():
    with namespace() as a, namespace() as b:
        yield a, b


def listing(ns: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True, check=True)
    return r.stdout


def fresh_listing(ns: str, gen) -> str:
    """The listing a full apply of ``gen`` gives in an empty namespace."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
    engine.apply(gen, ns, TABLE, replace=True, store=False)
    return listing(ns)


def plan_of(gen, replace: bool = False):
    """The planner against what is loaded (inside the namespace): the transaction, None for a full replace."""
    be = Libnftables()
    tx, _ = diff.plan(be, kernel_views(be, TABLE)[0], gen.rulesets, TABLE, replace=replace)
    return None if tx.mode == "full" else tx


def add_container(ap: IncrementalApplier, ctr):
    """One more container, through the long-running path (Docker's calls replayed on the kept model)."""
    assert ap.scenario is not None
    plus = dataclasses.replace(ap.scenario, containers=ap.scenario.containers + (ctr,))
    return ap.replay(lambda fw: fw.add_containers(plus, [ctr]))


def update(ap: IncrementalApplier, sc):
    """Bring the applier to ``sc``: containers it appends as Docker's calls on the kept model (what
    watch's events do), anything else by loading ``sc``."""
    old = ap.scenario
    assert old is not None
    n = len(old.containers)
    if (sc.daemon, sc.host, sc.networks) == (old.daemon, old.host, old.networks) and sc.containers[:n] == old.containers:
        return ap.replay(lambda fw: fw.add_containers(sc, sc.containers[n:]))
    return ap.load(sc)


def commands_to(ns: str, gen) -> int:
    """plan() against what is loaded in ``ns``: the number of commands (full replace: None)."""
    with namespaces.lock(ns), namespaces.netns(ns):
        tx = plan_of(gen)
    return -1 if tx is None else tx.commands()


@kernel_test
@pytest.mark.parametrize("n", [10, 1000])
def test_one_container_costs_a_handful_of_commands(n, two_ns):
    ns, _ = two_ns
    sc = synthetic.host(n)
    gen = generate(sc)
    assert engine.apply(gen, ns).mode == "full"
    one = synthetic.with_container(sc, synthetic.new_container(sc, 0, network="net1"))
    gen1 = generate(one)
    assert commands_to(ns, gen1) == 3  # raw DROP, nat DNAT, filter ACCEPT
    res = engine.apply(gen1, ns)
    assert (res.mode, res.commands, res.view) == ("incremental", 3, "state")
    assert commands_to(ns, gen) == 3  # and removing it again
    res = engine.apply(gen, ns)
    assert (res.mode, res.commands, res.removed_rules) == ("incremental", 3, 3)
    with IncrementalApplier(ns) as ap:
        ap.load(sc)
        stats = add_container(ap, synthetic.new_container(sc, 1))
        assert (stats.mode, stats.commands) == ("fast", 3)
    if n == 10:  # the listing equals a fresh full apply (checked at every size by the property test)
        assert listing(ns) == fresh_listing(two_ns[1], generate(ap.scenario))


@kernel_test
@pytest.mark.parametrize("n", [10, 1000])
def test_apply_replays_only_appended_containers(n, two_ns):
    ns, other = two_ns
    sc = synthetic.host(n)
    res = engine.apply_scenario(sc, ns)
    assert (res.mode, res.generation) == ("full", "full")
    one = synthetic.with_container(sc, synthetic.new_container(sc, 0, network="net1"))
    res = engine.apply_scenario(one, ns)
    assert (res.mode, res.generation, res.replayed, res.commands, res.view) == ("incremental", "resumed", 1, 3, "state")
    two = synthetic.with_container(one, synthetic.new_container(sc, 1))
    res = engine.apply_scenario(two, ns)  # resumes from the checkpoint the resumed apply left
    assert (res.generation, res.replayed, res.commands) == ("resumed", 1, 3)
    if n == 10:
        assert listing(ns) == fresh_listing(other, generate(two))
    res = engine.apply_scenario(one, ns)  # a removal: the whole host is generated, the edit is still small
    assert (res.mode, res.generation, res.commands) == ("incremental", "full", 3)
    subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "rule", "ip", TABLE, "filter-DOCKER-USER", "counter"], check=True)
    res = engine.apply_scenario(two, ns)  # someone else committed: the table is listed, the host generated
    assert (res.generation, res.view, res.commands) == ("full", "listing", 3)
    res = engine.apply_scenario(two, ns, check=True)
    assert (res.checked, res.generation) == (True, "full")
    if n == 10:
        assert listing(ns).replace("\t\tcounter packets 0 bytes 0\n", "") == fresh_listing(other, generate(two))


@kernel_test
@pytest.mark.parametrize("case", ["multi", "ipv6", "usernet-portmap-noproxy"])
def test_replace_and_fresh_tables_are_full(case, two_ns):
    ns, other = two_ns
    gen = generate(load(RULESETS / case / "scenario.toml"))
    with namespaces.netns(ns):
        assert plan_of(gen) is None  # nothing loaded yet
    engine.apply(gen, ns)
    with namespaces.netns(ns):
        tx = plan_of(gen)
        assert tx is not None and tx.commands() == 0
        assert plan_of(gen, replace=True) is None
    assert engine.apply(gen, ns, replace=True).mode == "full"
    assert listing(ns) == fresh_listing(other, gen)


@kernel_test
def test_user_rules_in_docker_user_are_kept(two_ns):
    ns, _ = two_ns
    sc = synthetic.host(2)
    engine.apply(generate(sc), ns)
    subprocess.run(["ip", "netns", "exec", ns, "nft", "insert", "rule", "ip", TABLE, "filter-DOCKER-USER",
                    "iifname", "eth9", "drop"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "rule", "ip", TABLE, "filter-DOCKER-USER",
                    "handle", _handle_of(ns, "filter-DOCKER-USER", "return")], check=True)
    res = engine.apply(generate(synthetic.with_container(sc, synthetic.new_container(sc))), ns)
    assert res.mode == "incremental" and res.view == "listing"  # someone else committed: the state was not trusted
    user = _chain_rules(ns, "filter-DOCKER-USER")
    assert user == ['iifname "eth9" drop', "return"]  # kept, and the return put back as a full replace does


def _chain_rules(ns: str, chain: str) -> list[str]:
    """The rules of ``chain`` as ``nft list chain`` prints them."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "chain", "ip", TABLE, chain],
                         capture_output=True, text=True, check=True).stdout
    body = [l.strip() for l in out.splitlines()]
    return [l for l in body[body.index(next(l for l in body if l.startswith("chain "))) + 1:] if l and l != "}" and not l.startswith(("type ", "}"))]


def _handle_of(ns: str, chain: str, text: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-a", "list", "chain", "ip", TABLE, chain],
                         capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.strip().startswith(text + " #"))
    return line.rsplit("handle", 1)[1].strip()


@kernel_test
def test_long_running_path_notices_changes_made_by_others(two_ns):
    ns, other = two_ns
    sc = synthetic.host(3)
    with IncrementalApplier(ns) as ap:
        ap.load(sc)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "rule", "ip", TABLE, "filter-DOCKER",
                        "handle", _handle_of(ns, "filter-DOCKER", 'ip daddr 198.18.0.66 iifname != "br1" oifname "br1" tcp dport 80 accept')],
                       check=True)
        st = add_container(ap, synthetic.new_container(sc, 0, network="net2"))
        assert st.resynced and st.mode == "diff"
        assert listing(ns) == fresh_listing(other, generate(ap.scenario))
        st = add_container(ap, synthetic.new_container(ap.scenario, 1, network="net2"))
        assert not st.resynced and st.mode == "fast"
        assert listing(ns) == fresh_listing(other, generate(ap.scenario))


# ---------------------------------------------------------------------- the property: always equal to a full replace


def scenario_text(nets: list[tuple[int, bool, bool]], ctrs: list[tuple[str, str, tuple[int, ...]]], ipv6: bool, proxy: bool) -> str:
    out = ["[daemon]", f"userland-proxy = {str(proxy).lower()}"]
    if ipv6:
        out += ["ipv6 = true", 'fixed-cidr-v6 = "2001:db8:ffff::/64"']
    for i, internal, v6 in nets:
        subnets = [f'"{synthetic.subnet4(i)}"'] + ([f'"{synthetic.subnet6(i)}"'] if v6 else [])
        out += ["[[networks]]", f'name = "net{i}"', f"subnets = [{', '.join(subnets)}]",
                f"internal = {str(internal).lower()}", f"ipv6 = {str(v6).lower()}",
                f'options = {{ "com.docker.network.bridge.name" = "br{i}" }}']
    for name, net, ports in ctrs:
        pub = ", ".join(f'"{p}:{80 + j}"' for j, p in enumerate(ports))
        out += ["[[containers]]", f'name = "{name}"', f'networks = ["{net}"]', f"publish = [{pub}]"]
    return "\n".join(out) + "\n"


step = st.one_of(
    st.tuples(st.just("add-container"), st.integers(0, 9), st.integers(0, 2)),
    st.tuples(st.just("remove-container"), st.integers(0, 99), st.just(0)),
    st.tuples(st.just("add-network"), st.booleans(), st.booleans()),
    st.tuples(st.just("remove-network"), st.integers(0, 99), st.just(0)),
)


@pytest.fixture(scope="module")
def three_ns():
    with namespace() as a, namespace() as b, namespace() as c:
        yield a, b, c


@kernel_test
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(n0=st.integers(0, 3), ipv6=st.booleans(), proxy=st.booleans(), steps=st.lists(step, min_size=1, max_size=5))
def test_always_equal_to_a_full_replace(three_ns, n0, ipv6, proxy, steps):
    by_apply, fresh, by_applier = three_ns
    for ns in three_ns:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
    nets = [(i, False, ipv6 and i % 2 == 0) for i in range(n0)]
    ctrs = [(f"c{i}", f"net{i}", (20000 + i,)) for i in range(n0)]
    serial = [n0, 0]
    sc = loads(scenario_text(nets, ctrs, ipv6, proxy))
    engine.apply_scenario(sc, by_apply)
    with IncrementalApplier(by_applier) as ap:
        ap.load(sc)
        for kind, a, b in steps:
            names = ["bridge"] + [f"net{i}" for i, _, _ in nets]
            if kind == "add-container":
                serial[1] += 1
                ctrs.append((f"x{serial[1]}", names[a % len(names)], tuple(30000 + 10 * serial[1] + j for j in range(b))))
            elif kind == "remove-container" and ctrs:
                ctrs.pop(a % len(ctrs))
            elif kind == "add-network":
                nets.append((serial[0], a, b and ipv6))
                serial[0] += 1
            elif kind == "remove-network" and nets:
                gone = nets.pop(a % len(nets))
                ctrs = [c for c in ctrs if c[1] != f"net{gone[0]}"]
            sc = loads(scenario_text(nets, ctrs, ipv6, proxy))
            gen = generate(sc)
            want = fresh_listing(fresh, gen)
            res = engine.apply_scenario(sc, by_apply)  # appended containers: replayed on the checkpoint
            assert listing(by_apply) == want, (kind, steps, res)
            update(ap, sc)
            assert listing(by_applier) == want, (kind, steps, ap.last)


@kernel_test
def test_refused_change_names_the_command_and_changes_nothing(two_ns):
    ns, _ = two_ns
    sc = synthetic.host(2)
    engine.apply(generate(sc), ns)
    before = listing(ns)
    loop = Transaction([rule("add", "ip", "nftdocker", "filter-DOCKER-CT", "jump filter-DOCKER-FORWARD", "test: injected loop")])
    gen1 = generate(synthetic.with_container(sc, synthetic.new_container(sc)))
    with pytest.MonkeyPatch.context() as mp:
        sent_after(mp, loop)
        for replace in (False, True):
            with pytest.raises(ApplyError) as e:
                engine.apply(gen1, ns, replace=replace)
            assert "filter-DOCKER-CT jump filter-DOCKER-FORWARD" in str(e.value) and "injected loop" in str(e.value)
            assert listing(ns) == before
    assert engine.apply(gen1, ns).mode == "incremental"  # the stored view is still good: nothing was committed


@kernel_test
def test_a_family_going_away_deletes_its_table(two_ns):
    ns, other = two_ns
    text = synthetic.scenario_toml(2)
    engine.apply(generate(loads(text)), ns)
    gen = generate(loads(text.replace("[daemon]", "[daemon]\nip6tables = false", 1)))
    res = engine.apply(gen, ns)
    assert (res.mode, res.removed, res.families) == ("incremental", ["ip6"], ["ip"])
    assert listing(ns) == fresh_listing(other, gen)
