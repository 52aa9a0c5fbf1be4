"""Resuming generation (issue 6): replaying appended containers on a checkpoint equals generating the host.

No kernel here: the "loaded table" is the generated one as keys (what the stored view holds after
our own commit). tests/test_incremental.py drives the same path through the kernel.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import RULESETS
from nftdocker.docker import checkpoint as resume
from nftdocker.errors import NftdockerError
from nftdocker.docker.generate import Firewall, generate
from nftdocker.nft.view import wanted
from nftdocker.scenario.load import load, loads


def keys_of(gen) -> dict[str, dict[str, list[str]] | None]:
    """The generated tables as the stored view holds them: per family, chain -> rule keys."""
    out: dict[str, dict[str, list[str]] | None] = {}
    for fam in ("ip", "ip6"):
        rs = gen.rulesets[fam]
        out[fam] = None if rs.is_empty() else {n: list(w.keys) for n, w in wanted(rs).items()}
    return out


def checkpoint_of(sc) -> tuple[dict, dict]:
    fw = Firewall(sc)
    gen = fw.run()
    return json.loads(json.dumps(resume.checkpoint(fw))), keys_of(gen)


def play(tables: dict, logs: dict) -> dict:
    """Docker's recorded calls applied to the keys, as the kernel applies the commands made of them."""
    out = {f: (None if t is None else {n: list(k) for n, k in t.items()}) for f, t in tables.items()}
    for fam, ops in logs.items():
        for op, table, chain, key, _origin in ops:
            keys = out[fam][f"{table}-{chain}"]  # type: ignore[index]
            if op == "add":
                keys.append(key)
            elif op == "insert":
                keys.insert(0, key)
            else:
                keys.remove(key)
    return out


def resumed(base, plus):
    """Replay what ``plus`` appends to ``base`` on ``base``'s checkpoint: (firewall, tables after)."""
    cp, tables = checkpoint_of(base)
    n = resume.appended(cp, plus)
    assert n == len(plus.containers) - len(base.containers)
    fw = resume.ResumedFirewall(plus, cp, tables)
    fw.add_containers(plus, plus.containers[len(base.containers):])
    return fw, play(tables, fw.logs())


def assert_same_as_generated(base, plus) -> bool:
    """True if resumed; False if the replay needs a chain the base lacks (the caller generates instead)."""
    full_fw = Firewall(plus)
    full = full_fw.run()
    try:
        fw, tables = resumed(base, plus)
    except resume.Unsupported:
        base_tables, plus_tables = keys_of(generate(base)), keys_of(full)
        new_chains = any((plus_tables[f] or {}).keys() - (base_tables[f] or {}).keys() for f in ("ip", "ip6"))
        assert new_chains, "the replay gave up although the loaded table has every chain it needs"
        return False
    assert tables == keys_of(full)
    got = fw.generated()
    assert got.endpoints == full.endpoints
    assert got.sysctls == full.sysctls
    assert got.hairpin_ports == full.hairpin_ports
    # and the checkpoint it leaves is the one a full generation leaves, so resumes chain
    assert json.loads(json.dumps(resume.checkpoint(fw))) == json.loads(json.dumps(resume.checkpoint(full_fw)))
    return True


@pytest.mark.parametrize("case", sorted(p.name for p in RULESETS.iterdir() if (p / "scenario.toml").is_file()))
def test_every_case_resumed_container_by_container(case):
    sc = dataclasses.replace(load(RULESETS / case / "scenario.toml"), events=())  # a history is never resumed (below)
    for k in range(len(sc.containers)):
        base = dataclasses.replace(sc, containers=sc.containers[:k])
        assert_same_as_generated(base, sc)


def test_appended_only_when_nothing_else_changed():
    sc = load(RULESETS / "multi" / "scenario.toml")
    assert len(sc.containers) >= 2
    cp, _ = checkpoint_of(dataclasses.replace(sc, containers=sc.containers[:1]))
    assert resume.appended(cp, sc) == len(sc.containers) - 1
    assert resume.appended(cp, dataclasses.replace(sc, containers=sc.containers[:1])) == 0
    assert resume.appended(cp, dataclasses.replace(sc, containers=sc.containers[1:])) is None  # first one replaced
    assert resume.appended(cp, dataclasses.replace(sc, containers=())) is None  # removed
    assert resume.appended(cp, dataclasses.replace(sc, networks=sc.networks[:-1])) is None
    assert resume.appended(cp, dataclasses.replace(sc, daemon=dataclasses.replace(sc.daemon, icc=not sc.daemon.icc))) is None
    assert resume.appended(cp, dataclasses.replace(sc, host=dataclasses.replace(sc.host, ipv6_forwarding=True))) is None
    assert resume.appended(dict(cp, fingerprint=dict(cp["fingerprint"], format=0)), sc) is None
    assert resume.appended(dict(cp, fingerprint=dict(cp["fingerprint"], code="other code")), sc) is None
    assert resume.appended({}, sc) is None
    hist = load(RULESETS / "stop-start" / "scenario.toml")
    cp, _ = checkpoint_of(dataclasses.replace(hist, containers=hist.containers[:1], events=()))
    assert resume.appended(cp, dataclasses.replace(hist, events=())) == 1
    assert resume.appended(cp, hist) is None  # with a history, nothing is appended at the end


def test_a_damaged_checkpoint_is_not_used():
    sc = load(RULESETS / "multi" / "scenario.toml")
    cp, tables = checkpoint_of(dataclasses.replace(sc, containers=()))
    del cp["ports"]
    with pytest.raises(resume.Unsupported):
        resume.ResumedFirewall(sc, cp, tables)


def test_a_clash_in_the_new_container_is_the_error_generation_gives():
    base = loads(SCENARIO_HEAD + CTR.format(name="a", nets='"n0"', publish='"8080:80"'), "host.toml")
    plus = loads(SCENARIO_HEAD + CTR.format(name="a", nets='"n0"', publish='"8080:80"')
                 + CTR.format(name="b", nets='"n0"', publish='"8080:81"'), "host.toml")
    with pytest.raises(NftdockerError) as full:
        generate(plus)
    with pytest.raises(NftdockerError) as part:
        resumed(base, plus)
    assert str(part.value) == str(full.value)


# ---------------------------------------------------------------------- the property

SCENARIO_HEAD = """
[daemon]
userland-proxy = false

[[networks]]
name = "n0"
subnets = ["198.51.100.0/28"]
options = { "com.docker.network.bridge.name" = "br-n0" }
"""
CTR = """
[[containers]]
name = "{name}"
networks = [{nets}]
publish = [{publish}]
"""

GW_MODES = ["nat", "nat-unprotected", "routed"]


@st.composite
def hosts(draw):
    """A random host as scenario text, and the number of its containers."""
    proxy = draw(st.booleans())
    icc = draw(st.booleans())
    ipv6 = draw(st.booleans())
    out = ["[daemon]", f"userland-proxy = {str(proxy).lower()}", f"icc = {str(icc).lower()}"]
    if ipv6:
        out += ["ipv6 = true", 'fixed-cidr-v6 = "2001:db8:ffff::/64"']
    if draw(st.booleans()):
        out += ["[host]", "ipv6-forwarding = true"]
    nets = ["bridge"]
    for i in range(draw(st.integers(0, 3))):
        v6 = draw(st.booleans())
        subnets = [f'"198.51.100.{16 * i}/28"'] + ([f'"2001:db8:{i + 1}::/64"'] if v6 else [])
        opts = {"com.docker.network.bridge.name": f"br-n{i}"}
        if draw(st.booleans()):
            opts["com.docker.network.bridge.enable_icc"] = "false"
        if draw(st.booleans()):
            opts["com.docker.network.bridge.gateway_mode_ipv4"] = draw(st.sampled_from(GW_MODES))
        if v6 and draw(st.booleans()):
            opts["com.docker.network.bridge.gateway_mode_ipv6"] = draw(st.sampled_from(GW_MODES))
        internal = draw(st.integers(0, 4)) == 0
        out += ["[[networks]]", f'name = "n{i}"', f"subnets = [{', '.join(subnets)}]", f"ipv6 = {str(v6).lower()}",
                f"internal = {str(internal).lower()}",
                "options = { " + ", ".join(f'"{k}" = "{v}"' for k, v in opts.items()) + " }"]
        nets.append(f"n{i}")
    n_ctrs = draw(st.integers(1, 6))
    host_port = 8000
    for c in range(n_ctrs):
        mine = draw(st.lists(st.sampled_from(nets), min_size=1, max_size=2, unique=True))
        pubs = []
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["fixed", "ephemeral", "range", "loopback", "udp"]))
            cport = draw(st.integers(80, 83))
            host_port += 1
            pubs.append({"fixed": f"{host_port}:{cport}", "ephemeral": f"{cport}", "range": f"9000-9009:{cport}",
                         "loopback": f"127.0.0.1:{host_port}:{cport}", "udp": f"{host_port}:{cport}/udp"}[kind])
        out += ["[[containers]]", f'name = "c{c}"', f"networks = [{', '.join(map(repr, mine))}]".replace("'", '"'),
                f"publish = [{', '.join(map(repr, pubs))}]".replace("'", '"')]
        if draw(st.booleans()):
            out.append(f"expose = [{draw(st.integers(5000, 5002))}]")
        if c and "bridge" in mine and draw(st.booleans()):
            out.append(f'links = ["c{draw(st.integers(0, c - 1))}:alias"]')
    return "\n".join(out) + "\n", n_ctrs


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(host=hosts(), data=st.data())
def test_resumed_equals_generated(host, data):
    text, n = host
    try:
        plus = loads(text, "host.toml")
        generate(plus)
    except NftdockerError:
        assume(False)  # an invalid host (a clash): the loader and generation say so; nothing to resume
    k = data.draw(st.integers(0, n - 1), label="containers already loaded")
    base = dataclasses.replace(plus, containers=plus.containers[:k])
    assert_same_as_generated(base, plus)
