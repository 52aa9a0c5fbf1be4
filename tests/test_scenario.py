"""Scenario loading: Docker's vocabulary, clear located errors, and a fuzzed loader."""

from __future__ import annotations

import json
from ipaddress import ip_address

import pytest
from hypothesis import given, settings, strategies as st

from nftdocker.errors import GenerationError, ScenarioError
from nftdocker.docker.generate import generate
from nftdocker.model import PortSpec
from nftdocker.scenario.context import Context
from nftdocker.scenario.load import from_document, loads
from nftdocker.scenario.publish import parse_publish

SEED = """
[daemon]
userland-proxy = false

[[networks]]
name = "bridge1"
subnets = ["192.0.2.0/24"]
gateways = ["192.0.2.1"]
options = { "com.docker.network.bridge.name" = "bridge1" }

[[containers]]
name = "c1"
networks = ["bridge1"]
publish = ["8080:80"]
"""


def test_seed_loads():
    sc = loads(SEED, "seed.toml")
    assert [n.name for n in sc.networks] == ["bridge", "bridge1"]
    assert sc.networks[1].bridge == "bridge1"
    assert sc.daemon.userland_proxy is False
    assert sc.containers[0].publish == (PortSpec(80, "tcp", None, 8080, 8080),)


@pytest.mark.parametrize(
    "spec, want",
    [
        ("80", [PortSpec(80)]),
        ("8080:80", [PortSpec(80, "tcp", None, 8080, 8080)]),
        ("127.0.0.1:9090:90", [PortSpec(90, "tcp", ip_address("127.0.0.1"), 9090, 9090)]),
        ("127.0.0.1::90", [PortSpec(90, "tcp", ip_address("127.0.0.1"), 0, 0)]),
        ("[2001:db8::1]:8080:80/udp", [PortSpec(80, "udp", ip_address("2001:db8::1"), 8080, 8080)]),
        ("8000-8010:80", [PortSpec(80, "tcp", None, 8000, 8010)]),
        ("7000-7001:7000-7001/sctp", [PortSpec(7000, "sctp", None, 7000, 7000), PortSpec(7001, "sctp", None, 7001, 7001)]),
        ("80-81", [PortSpec(80), PortSpec(81)]),
    ],
)
def test_publish_syntax(spec, want):
    assert parse_publish(Context("t.toml"), "containers[0].publish[0]", spec) == want


@pytest.mark.parametrize(
    "doc, message",
    [
        ('[[networks]]\nname = "n"\nsubnets = ["10.0.0.0/33"]\noptions = { "com.docker.network.bridge.name" = "b" }',
         "t.toml: networks[0].subnets[0]: '10.0.0.0/33' is not an IP prefix"),
        ('[[networks]]\nname = "n"\nsubnets = ["192.0.2.0/24"]',
         't.toml: networks[0].options."com.docker.network.bridge.name": is required'),
        ('[[networks]]\nname = "n"\nsubnets = ["192.0.2.0/24"]\noptions = { "com.docker.network.bridge.name" = "br0123456789abcdef" }',
         "longer than 15 bytes"),
        ('[[networks]]\nname = "n"\nsubnets = ["192.0.2.0/24"]\noptions = { "com.docker.network.bridge.name" = "b\\"; drop" }',
         "not a valid interface name"),
        ('[[containers]]\nname = "c"\npublish = ["99999:80"]', "t.toml: containers[0].publish[0]: port 99999 is out of range"),
        ('[[containers]]\nname = "c"\nnetworks = ["nope"]', "t.toml: containers[0].networks[0]: no network named 'nope'"),
        ('[daemon]\nuserland-proxy = "no"', "t.toml: daemon.userland-proxy: expected a boolean"),
        ('[daemon]\nbogus = 1', "t.toml: daemon.bogus: unknown key"),
        ('[[networks]]\nname = "n"\ningress = true\nsubnets = ["192.0.2.0/24"]', "swarm ingress is out of scope"),
        ('x = [', "t.toml: TOML syntax"),
        ('[[networks]]\nname = "n"\nsubnets = ["192.0.2.0/24"]\noptions = { "com.docker.network.bridge.name" = "b", "com.docker.network.bridge.gateway_mode_ipv4" = "weird" }',
         "'weird' is not a gateway mode"),
    ],
)
def test_errors_are_located(doc, message):
    with pytest.raises(ScenarioError) as e:
        loads(doc, "t.toml")
    assert message in str(e.value)


def test_inspect_refuses_swarm_ingress():
    dump = {"networks": [{"Name": "ingress", "Driver": "overlay", "Ingress": True, "Scope": "swarm", "IPAM": {}}], "containers": []}
    with pytest.raises(ScenarioError, match="swarm"):
        from_document(Context("s.toml"), {}, __import__("pathlib").Path("."), inspect=dump)


# ----------------------------------------------------------------------------- fuzzing

toml_scalar = st.one_of(
    st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
    st.sampled_from(["192.0.2.0/24", "2001:db8::/64", "127.0.0.1:9090:90", "8080:80/udp", "bridge1", "none", "nat", "routed"]),
)
toml_value = st.recursive(toml_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
    ["name", "subnets", "gateways", "options", "networks", "publish", "internal", "ipv6", "addresses", "links", "expose",
     "com.docker.network.bridge.name", "userland-proxy", "bip", "bridge"]), inner, max_size=4)), max_leaves=12)
doc_strategy = st.fixed_dictionaries({}, optional={
    "daemon": st.dictionaries(st.sampled_from(["userland-proxy", "icc", "ip", "bip", "bridge", "ipv6", "fixed-cidr-v6", "bogus"]), toml_scalar, max_size=3),
    "networks": st.lists(toml_value, max_size=3),
    "containers": st.lists(toml_value, max_size=3),
})


@settings(max_examples=300, deadline=None)
@given(doc_strategy)
def test_fuzz_documents(doc):
    """Any document yields a scenario that generates, or a located ScenarioError; never a traceback."""
    try:
        sc = from_document(Context("fuzz.toml"), doc, __import__("pathlib").Path("."))
    except ScenarioError as e:
        assert str(e).startswith("fuzz.toml: ")
        return
    try:
        generate(sc)
    except GenerationError as e:
        assert "fuzz.toml" in str(e)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_raw_text(text):
    try:
        loads(text, "raw.toml")
    except ScenarioError as e:
        assert str(e).startswith("raw.toml: ")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789:-/[]abcdeftcpudps.", max_size=24))
def test_fuzz_publish(spec):
    try:
        out = parse_publish(Context("p.toml"), "k", spec)
    except ScenarioError as e:
        assert str(e).startswith("p.toml: k: ")
        return
    for p in out:
        assert 1 <= p.container_port <= 65535


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
                        ["Name", "Id", "Created", "Driver", "IPAM", "Config", "Subnet", "Gateway", "Options", "NetworkSettings",
                         "Networks", "Ports", "HostConfig", "PortBindings", "IPAddress", "Internal", "EnableIPv6", "networks",
                         "containers"]), inner, max_size=4)), max_leaves=15))
def test_fuzz_inspect(dump):
    try:
        sc = from_document(Context("i.toml"), {}, __import__("pathlib").Path("."), inspect=dump)
    except ScenarioError as e:
        assert ": " in str(e)
        return
    try:
        generate(sc)
    except GenerationError:
        pass
