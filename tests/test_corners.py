"""Corners of Docker 28.0.1 the captures showed (issue 16): address ranges, gateway-less and
IPv6-only networks, host ports across containers, and the binding order of a dump."""

from __future__ import annotations

import json
from ipaddress import ip_address

import pytest

from nftdocker.compat.translate import compat_of
from nftdocker.errors import GenerationError, ScenarioError
from nftdocker.docker.generate import generate
from nftdocker.scenario.load import load, loads

NET = """
[[networks]]
name = "bridge1"
subnets = ["192.0.2.0/24"]
options = { "com.docker.network.bridge.name" = "bridge1" }
"""


def addresses(text: str) -> dict[str, str]:
    gen = generate(loads(text, "t.toml"))
    return {e.container: str(e.ipv4 or e.ipv6) for e in gen.endpoints}


def test_ip_range_without_gateway_gives_the_gateway_the_range_start():
    sc = loads(NET.replace('options', 'ip-ranges = ["192.0.2.128/25"]\noptions') + """
[[containers]]
name = "c1"
networks = ["bridge1"]
""", "t.toml")
    net = sc.networks[1]
    assert net.gateways4 == (ip_address("192.0.2.128"),)
    assert [str(e.ipv4) for e in generate(sc).endpoints] == ["192.0.2.129"]


def test_ip_range_with_gateway_and_static_address():
    text = NET.replace('options', 'gateways = ["192.0.2.1"]\nip-ranges = ["192.0.2.64/26"]\noptions') + """
[[containers]]
name = "c1"
networks = ["bridge1"]
addresses = { bridge1 = "192.0.2.10" }

[[containers]]
name = "c2"
networks = ["bridge1"]
"""
    assert addresses(text) == {"c1": "192.0.2.10", "c2": "192.0.2.64"}


def test_fixed_cidr_on_the_default_bridge():
    text = """
[daemon]
bip = "198.18.5.1/24"
fixed-cidr = "198.18.5.128/25"

[[containers]]
name = "c1"
"""
    assert addresses(text) == {"c1": "198.18.5.128"}


def test_fixed_cidr_alone_is_the_subnet():
    sc = loads('[daemon]\nfixed-cidr = "198.18.7.0/24"\n', "t.toml")
    assert str(sc.networks[0].subnets4[0]) == "198.18.7.0/24"
    assert str(sc.networks[0].gateways4[0]) == "198.18.7.1"


@pytest.mark.parametrize("doc, message", [
    ('[daemon]\nbip = "198.18.5.1/24"\nfixed-cidr = "198.18.9.0/25"\n', "daemon.fixed-cidr: '198.18.9.0/25' is not inside"),
    (NET.replace('options', 'ip-ranges = ["198.51.100.0/25"]\noptions'), "networks[0].ip-ranges[0]: '198.51.100.0/25' is not inside"),
    (NET.replace('options', 'ipv4 = false\noptions'), "networks[0].ipv4: ipv4 = false needs ipv6 = true"),
    (NET.replace('options', 'ipv6 = true\nipv4 = false\noptions').replace('"192.0.2.0/24"', '"192.0.2.0/24", "2001:db8::/64"'),
     "networks[0].subnets: '192.0.2.0/24' is an IPv4 subnet but ipv4 is false"),
    (NET + '[[containers]]\nname = "c1"\nnetworks = ["bridge1"]\ngw-priority = { bridge2 = 1 }\n',
     "containers[0].gw-priority.bridge2: the container is not on network 'bridge2'"),
    (NET + '[[containers]]\nname = "c1"\nnetworks = ["bridge1"]\ngw-priority = { bridge1 = "high" }\n',
     "containers[0].gw-priority.bridge1: expected an integer"),
])
def test_new_keys_refuse_bad_input(doc, message):
    with pytest.raises(ScenarioError) as e:
        loads(doc, "t.toml")
    assert message in str(e.value)


def test_isolated_network_has_no_gateway():
    text = NET.replace('options = { ', 'internal = true\noptions = { "com.docker.network.bridge.gateway_mode_ipv4" = "isolated", ') + """
[[containers]]
name = "c1"
networks = ["bridge1"]
"""
    assert loads(text, "t.toml").networks[1].gateways4 == ()
    assert addresses(text) == {"c1": "192.0.2.1"}


def test_ipv6_only_network_has_no_ipv4_rules():
    text = """
[[networks]]
name = "v6"
subnets = ["2001:db8:1::/64"]
ipv6 = true
ipv4 = false
options = { "com.docker.network.bridge.name" = "br6" }
"""
    sc = loads(text, "t.toml")
    assert sc.networks[1].subnets4 == ()
    assert "br6" not in compat_of(generate(sc), "ip")
    assert "br6" in compat_of(generate(sc), "ip6")


def test_gw_priority_key_picks_the_gateway_endpoint():
    text = NET + NET.replace("bridge1", "bridge2").replace("192.0.2", "198.51.100") + """
[[containers]]
name = "c1"
networks = ["bridge1", "bridge2"]
publish = ["8080:80"]
gw-priority = { bridge2 = 10 }
"""
    assert "--to-destination 198.51.100.2:80" in compat_of(generate(loads(text, "t.toml")), "ip")


def test_ephemeral_port_skips_one_an_earlier_container_listens_on():
    text = NET + """
[[containers]]
name = "c1"
networks = ["bridge1"]
publish = ["80"]

[[containers]]
name = "c2"
networks = ["bridge1"]
publish = ["127.0.0.1::81"]
"""
    gen = generate(loads(text, "t.toml"))
    assert [b.host_port for b in gen.bindings["c2"]] == [32769]


def test_udp_ephemeral_ports_do_not_clash():
    text = NET + """
[[containers]]
name = "c1"
networks = ["bridge1"]
publish = ["80/udp"]

[[containers]]
name = "c2"
networks = ["bridge1"]
publish = ["127.0.0.1::81/udp"]
"""
    gen = generate(loads(text, "t.toml"))
    assert [b.host_port for b in gen.bindings["c2"]] == [32768]


@pytest.mark.parametrize("publish2, ctr", [
    ('["127.0.0.1:8080:81"]', "c2"),   # an explicit port an earlier container's 0.0.0.0 listens on
])
def test_explicit_port_docker_cannot_bind_is_refused(publish2, ctr):
    text = NET + f"""
[[containers]]
name = "c1"
networks = ["bridge1"]
publish = ["8080:80"]

[[containers]]
name = "c2"
networks = ["bridge1"]
publish = {publish2}
"""
    with pytest.raises(GenerationError) as e:
        generate(loads(text, "t.toml"))
    assert f"container {ctr!r}" in str(e.value) and "fails to start" in str(e.value)


def test_one_container_listening_twice_on_a_port_is_refused():
    text = NET + """
[[containers]]
name = "c1"
networks = ["bridge1"]
publish = ["80", "127.0.0.1::81"]
"""
    with pytest.raises(GenerationError) as e:
        generate(loads(text, "t.toml"))
    assert "listen on 127.0.0.1:32768/tcp fails" in str(e.value)


def _dump(tmp_path, ports, bindings):
    net = {"Name": "bridge1", "Id": "a" * 64, "Created": "2025-01-01T00:00:00Z", "Driver": "bridge", "Scope": "local",
           "EnableIPv4": True, "EnableIPv6": False, "Internal": False,
           "IPAM": {"Driver": "default", "Config": [{"Subnet": "192.0.2.0/24"}]},
           "Options": {"com.docker.network.bridge.name": "bridge1"}}
    ctr = {"Name": "/c1", "Created": "2025-01-01T00:00:01Z",
           "HostConfig": {"NetworkMode": "bridge1", "PortBindings": bindings},
           "NetworkSettings": {"Ports": ports, "Networks": {"bridge1": {"IPAddress": "192.0.2.2", "GlobalIPv6Address": ""}}}}
    (tmp_path / "dump.json").write_text(json.dumps([net, ctr]))
    (tmp_path / "s.toml").write_text('docker-inspect = "dump.json"\n')
    return load(tmp_path / "s.toml")


def test_dump_keeps_docker_binding_order(tmp_path):
    """-p 9000-9002:9000-9002/udp -p 8000-8010:80: exact ports first, the range after."""
    def both(p):
        return [{"HostIp": "0.0.0.0", "HostPort": p}, {"HostIp": "::", "HostPort": p}]
    ports = {"80/tcp": both("8000"), **{f"{p}/udp": both(str(p)) for p in (9000, 9001, 9002)}}
    bindings = {"80/tcp": [{"HostIp": "", "HostPort": "8000-8010"}],
                **{f"{p}/udp": [{"HostIp": "", "HostPort": str(p)}] for p in (9000, 9001, 9002)}}
    from_dump = compat_of(generate(_dump(tmp_path, ports, bindings)), "ip")
    scenario = compat_of(generate(loads(NET + """
[[containers]]
name = "c1"
networks = ["bridge1"]
publish = ["9000-9002:9000-9002/udp", "8000-8010:80"]
""", "t.toml")), "ip")
    assert from_dump == scenario
    dnat = [l for l in from_dump.splitlines() if "DNAT" in l]
    assert "--dport 8000 " in dnat[-1]


def test_dump_keeps_the_port_docker_allocated(tmp_path):
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8005"}]}
    bindings = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000-8010"}]}
    gen = generate(_dump(tmp_path, ports, bindings))
    assert [b.host_port for b in gen.bindings["c1"]] == [8005]


def test_isolated_ipv6_has_no_gateway():
    text = """
[[networks]]
name = "v6"
subnets = ["192.0.2.0/24", "2001:db8:1::/64"]
ipv6 = true
internal = true
options = { "com.docker.network.bridge.name" = "br6", "com.docker.network.bridge.gateway_mode_ipv6" = "isolated" }

[[containers]]
name = "c1"
networks = ["v6"]
"""
    sc = loads(text, "t.toml")
    assert sc.networks[1].gateways6 == () and sc.networks[1].gateways4 == (ip_address("192.0.2.1"),)
    ep = generate(sc).endpoints[0]
    assert (str(ep.ipv4), str(ep.ipv6)) == ("192.0.2.2", "2001:db8:1::1")
