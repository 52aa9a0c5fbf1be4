"""Scenarios with a history (``[[events]]``): what Docker does on each lifecycle event, in its order.

The real captures of a history (rulesets/stop-start, rulesets/gw-priority) are compared with the
daemon's iptables-save in test_reference.py; here: each event's semantics, the refusals, and a
property test over random histories (the replay leaves the rules a fresh host in the same final
state has, and the kernel, applied event by event, lists as a fresh full apply does).
"""

from __future__ import annotations

import subprocess
import uuid
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import needs_netns, run_cli
from nftdocker.apply import engine
from nftdocker.compat.translate import compat_of
from nftdocker.errors import ScenarioError
from nftdocker.scenario.write import export_scenario
from nftdocker.docker.generate import generate
from nftdocker.scenario.load import loads

BASE = """
[daemon]
userland-proxy = false

[[networks]]
name = "bridge1"
subnets = ["192.0.2.0/24"]
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
networks = ["bridge1"]
publish = ["9090:90"]
"""


def event(do: str, **keys) -> str:
    body = "".join(f"{k.replace('_', '-')} = {_toml(v)}\n" for k, v in keys.items())
    return f'\n[[events]]\ndo = "{do}"\n{body}'


def _toml(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml(x)}' for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, int):
        return str(v)
    return f'"{v}"'


def bridge(name: str) -> dict:
    return {"com.docker.network.bridge.name": name}


def gen_of(*events: str, base: str = BASE):
    return generate(loads(base + "".join(events), "h.toml"))


def save(g, fam: str = "ip") -> str:
    return compat_of(g, fam)


def rules(g) -> Counter:
    return Counter((f, t, n, r) for f, rs in g.rulesets.items() for (t, n), c in rs.chains.items() for r in c.rules)


def lines(g, chain: str) -> list[str]:
    return [l for l in save(g).splitlines() if l.startswith(f"-A {chain} ")]


# ---------------------------------------------------------------------- each event


def test_stop_then_start_programs_the_container_after_the_others():
    g = gen_of(event("stop", container="c1"), event("start", container="c1"))
    dnat = lines(g, "DOCKER")
    assert [l for l in dnat if "DNAT" in l] == [
        "-A DOCKER -p tcp -m tcp --dport 9090 -j DNAT --to-destination 192.0.2.3:90",
        "-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.0.2.2:80",
    ]
    assert [l for l in dnat if "ACCEPT" in l][0].startswith("-A DOCKER -d 192.0.2.2/32")  # inserted at the top again
    assert rules(g) == rules(gen_of())  # the same rules, in another order


def test_restart_is_stop_then_start():
    assert save(gen_of(event("restart", container="c1"))) == save(gen_of(event("stop", container="c1"), event("start", container="c1")))


def test_a_stopped_container_has_no_rules_and_frees_its_port_and_address():
    g = gen_of(event("stop", container="c1"))
    assert "8080" not in save(g) and "192.0.2.2" not in save(g)
    assert [e.container for e in g.endpoints] == ["c2"]
    g = gen_of(event("rm", container="c1"),
               event("run", name="c3", networks=["bridge1"], publish=["8080:80"]))
    assert "--dport 8080 -j DNAT --to-destination 192.0.2.2:80" in save(g)  # the freed address and port


def test_start_keeps_the_address_while_it_is_free_else_takes_the_lowest():
    g = gen_of(event("stop", container="c1"), event("start", container="c1"))
    assert {e.container: str(e.ipv4) for e in g.endpoints} == {"c1": "192.0.2.2", "c2": "192.0.2.3"}
    g = gen_of(event("stop", container="c1"), event("run", name="c3", networks=["bridge1"]),
               event("start", container="c1"))
    assert {e.container: str(e.ipv4) for e in g.endpoints} == {"c2": "192.0.2.3", "c3": "192.0.2.2", "c1": "192.0.2.4"}


def test_connect_with_priority_moves_the_port_mappings_and_disconnect_moves_them_back():
    moved = gen_of(event("connect", container="c1", network="bridge2", gw_priority=10))
    text = save(moved)
    assert "--dport 8080 -j DNAT --to-destination 198.51.100.2:80" in text and "192.0.2.2:80" not in text
    back = gen_of(event("connect", container="c1", network="bridge2", gw_priority=10),
                  event("disconnect", container="c1", network="bridge2"))
    dnat = [l for l in lines(back, "DOCKER") if "DNAT" in l]
    assert dnat[-1].endswith("--to-destination 192.0.2.2:80")  # programmed again, after c2's
    plain = gen_of(event("connect", container="c1", network="bridge2"))  # equal priority: bridge1 sorts first
    assert save(plain) == save(gen_of())


def test_a_network_created_then_removed_leaves_what_was_there():
    net = dict(name="bridge3", subnets=["203.0.113.0/24"], options=bridge("bridge3"))
    g = gen_of(event("network create", **net))
    assert "bridge3" in save(g)
    assert rules(gen_of(event("network create", **net), event("network rm", network="bridge3"))) == rules(gen_of())
    g = gen_of(event("network create", **net), event("run", name="c9", networks=["bridge3"], publish=["7070:70"]))
    assert "--to-destination 203.0.113.2:70" in save(g)


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize("events, where, what", [
    ([event("stop", container="c9")], "events[0].container", "does not exist at this point"),
    ([event("stop", container="c1"), event("stop", container="c1")], "events[1].container", "is not running"),
    ([event("start", container="c1")], "events[0].container", "is already running"),
    ([event("rm", container="c1"), event("start", container="c1")], "events[1].container", "does not exist"),
    ([event("connect", container="c1", network="bridge1")], "events[0].network", "already connected"),
    ([event("disconnect", container="c1", network="bridge2")], "events[0].network", "is not connected"),
    ([event("network rm", network="bridge1")], "events[0].network", "still has containers: c1, c2"),
    ([event("network create", name="bridge2", subnets=["203.0.113.0/24"], options=bridge("bridge9"))], "events[0].name", "exists already"),
    ([event("network create", name="b9", subnets=["203.0.113.0/24"], options=bridge("bridge2"))], "events[0].options", "already used"),
    ([event("network create", name="b9", subnets=["192.0.2.128/25"], options=bridge("b9"))], "events[0].subnets", "overlaps"),
    ([event("run", name="c2")], "events[0].name", "exists already"),
    ([event("pause", container="c1")], "events[0].do", "is not an event"),
    ([event("stop", container="c1", network="bridge1")], "events[0].network", "unknown key"),
])
def test_events_docker_would_refuse_are_bad_input(events, where, what):
    with pytest.raises(ScenarioError) as e:
        loads(BASE + "".join(events), "h.toml")
    assert f"h.toml: {where}: " in e.value.message and what in e.value.message, e.value.message


def test_cli_refuses_a_bad_event_in_one_line(tmp_path):
    f = tmp_path / "h.toml"
    f.write_text(BASE + event("stop", container="c9"))
    r = run_cli("compat", f)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"nftdocker: {f}: events[0].container: container 'c9' does not exist at this point"]


def test_a_clash_during_the_history_names_the_event():
    with pytest.raises(Exception) as e:
        gen_of(event("run", name="c3", networks=["bridge1"], publish=["8080:81"]))
    assert "events[0] (run)" in str(e.value) and "8080" in str(e.value)


# ---------------------------------------------------------------------- random histories


@st.composite
def histories(draw):
    """A valid random history over BASE: every event Docker accepts at that point."""
    running, stopped, nets, extra = {"c1": ["bridge1"], "c2": ["bridge1"]}, {}, ["bridge1", "bridge2"], 0
    out, n_ctr, ports = [], 2, iter(range(7000, 7100))
    for _ in range(draw(st.integers(1, 8))):
        kinds = ["run", "network create"] + (["stop", "restart", "rm", "connect", "disconnect"] if running else [])
        kinds += ["start", "rm"] if stopped else []
        kinds += ["network rm"] if any(all(n not in v for v in {**running, **stopped}.values()) for n in nets[2:]) else []
        do = draw(st.sampled_from(kinds))
        if do == "run":
            n_ctr += 1
            name, net = f"c{n_ctr}", draw(st.sampled_from(nets))
            pub = [f"{next(ports)}:80"] + (["127.0.0.1::81"] if draw(st.booleans()) else [])
            out.append(event("run", name=name, networks=[net], publish=pub))
            running[name] = [net]
        elif do == "network create":
            extra += 1
            name = f"n{extra}"
            out.append(event("network create", name=name, subnets=[f"198.18.{extra}.0/24"], options=bridge(name)))
            nets.append(name)
        elif do in ("stop", "restart"):
            c = draw(st.sampled_from(sorted(running)))
            out.append(event(do, container=c))
            if do == "stop":
                stopped[c] = running.pop(c)
        elif do == "rm":
            c = draw(st.sampled_from(sorted(running) + sorted(stopped)))
            out.append(event(do, container=c))
            running.pop(c, None)
            stopped.pop(c, None)
        elif do == "start":
            c = draw(st.sampled_from(sorted(stopped)))
            out.append(event(do, container=c))
            running[c] = stopped.pop(c)
        elif do == "connect":
            c = draw(st.sampled_from(sorted(running)))
            free = [n for n in nets if n not in running[c]]
            if free:
                n = draw(st.sampled_from(free))
                prio = draw(st.sampled_from([None, 10, -5]))
                out.append(event("connect", container=c, network=n, **({"gw_priority": prio} if prio is not None else {})))
                running[c].append(n)
        elif do == "disconnect":
            c = draw(st.sampled_from(sorted(running)))
            if running[c]:
                n = draw(st.sampled_from(running[c]))
                out.append(event("disconnect", container=c, network=n))
                running[c].remove(n)
        else:  # network rm
            n = draw(st.sampled_from([n for n in nets[2:] if all(n not in v for v in {**running, **stopped}.values())]))
            out.append(event("network rm", network=n))
            nets.remove(n)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_a_history_leaves_the_rules_of_the_host_it_leaves(events):
    """After every event: the rules (as a multiset: the order is the history's) are those of a fresh
    host holding what is there now, as export writes it (addresses and ports pinned)."""
    for k in range(1, len(events) + 1):
        g = gen_of(*events[:k])
        fresh = generate(loads(export_scenario(loads(BASE + "".join(events[:k]), "h.toml"), header=""), "<export>"))
        assert not fresh.scenario.events
        assert rules(g) == rules(fresh), "".join(events[:k])


@pytest.mark.netns
@needs_netns
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(histories())
def test_applied_event_by_event_the_kernel_lists_as_a_fresh_full_apply(events):
    a, b = f"nftdh-{uuid.uuid4().hex[:6]}", f"nftdh-{uuid.uuid4().hex[:6]}"
    for ns in (a, b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for k in range(len(events) + 1):
            g = gen_of(*events[:k])
            engine.apply(g, a)  # only the difference
            engine.apply(g, b, replace=True)  # a fresh full apply
            listed = [subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True,
                                     text=True, check=True).stdout for ns in (a, b)]
            assert listed[0] == listed[1], "".join(events[:k])
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_the_raw_table_stays_once_created_as_iptables_save_shows_it():
    """Docker's iptables-save keeps printing *raw with its policies after the last raw rule goes."""
    proxy = BASE.replace("userland-proxy = false", "userland-proxy = true")
    g = gen_of(event("stop", container="c1"), event("stop", container="c2"), base=proxy)
    text = save(g)
    assert text.startswith("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"), text
    assert "*raw" not in save(gen_of(base=proxy.replace('publish = ["8080:80"]', "").replace('publish = ["9090:90"]', "")))
