"""Docker 28.0.1 behaviour beyond the ten captured cases, rule by rule.

Each expectation is the iptables-save line moby 76417bf763 writes for that option (the moby
function is named in the test); the captured cases in test_reference.py pin the overall format.
"""

from __future__ import annotations

import pytest

from nftdocker.compat.translate import save_text
from nftdocker.errors import GenerationError
from nftdocker.docker.generate import generate
from nftdocker.scenario.load import loads

NET1 = '''
[[networks]]
name = "bridge1"
subnets = ["192.0.2.0/24"]
options = {{ "com.docker.network.bridge.name" = "bridge1"{opts} }}
'''


def compat(doc: str):
    gen = generate(loads(doc, "t.toml"))
    return save_text(gen.rulesets["ip"]), save_text(gen.rulesets["ip6"]), gen


def net1(**opts):
    extra = "".join(f', "{k}" = "{v}"' for k, v in opts.items())
    return NET1.format(opts=extra)


def ctr(name="c1", nets=("bridge1",), publish=(), extra=""):
    return f'\n[[containers]]\nname = "{name}"\nnetworks = {list(nets)!r}\npublish = {list(publish)!r}\n{extra}'.replace("'", '"')


def test_host_port_range_allocates_one_port_then_the_next():
    v4, _, gen = compat(net1() + ctr("c1", publish=["8000-8010:80"]) + ctr("c2", publish=["8000-8010:80"]))
    assert "-A DOCKER ! -i bridge1 -p tcp -m tcp --dport 8000 -j DNAT --to-destination 192.0.2.2:80" in v4
    assert "-A DOCKER ! -i bridge1 -p tcp -m tcp --dport 8001 -j DNAT --to-destination 192.0.2.3:80" in v4
    assert [b.host_port for b in gen.bindings["c1"]] == [8000, 8000]  # IPv4 and IPv6 share the port


def test_ephemeral_port_starts_at_the_dynamic_range():
    v4, _, _ = compat(net1() + ctr("c1", publish=["80"]))
    assert "--dport 32768 -j DNAT --to-destination 192.0.2.2:80" in v4


def test_udp_and_sctp():
    v4, _, _ = compat(net1() + ctr("c1", publish=["5353:53/udp", "3868:3868/sctp"]))
    assert "-A DOCKER -d 192.0.2.2/32 ! -i bridge1 -o bridge1 -p udp -m udp --dport 53 -j ACCEPT" in v4
    assert "-A DOCKER ! -i bridge1 -p sctp -m sctp --dport 3868 -j DNAT --to-destination 192.0.2.2:3868" in v4
    assert "-A PREROUTING -d 192.0.2.2/32 ! -i bridge1 -p sctp -m sctp --dport 3868 -j DROP" in v4


def test_host_binding_ipv4_loopback():
    """host_binding_ipv4 = 127.0.0.1: DNAT -d 127.0.0.1 and raw ! -i lo DROP; no IPv6 binding (configurePortBindingIPv6)."""
    v4, v6, gen = compat(net1(**{"com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"}) + ctr("c1", publish=["8080:80"]))
    assert "-A PREROUTING -d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 8080 -j DROP" in v4
    assert "-A DOCKER -d 127.0.0.1/32 ! -i bridge1 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.0.2.2:80" in v4
    assert all(b.host_ip.version == 4 for b in gen.bindings["c1"])


def test_snat_host_ipv4():
    """com.docker.network.host_ipv4: SNAT instead of MASQUERADE (setupNonInternalNetworkRules)."""
    v4, _, _ = compat("[daemon]\nuserland-proxy = false\n" + net1(**{"com.docker.network.host_ipv4": "203.0.113.5"}))
    assert "-A POSTROUTING -s 192.0.2.0/24 ! -o bridge1 -j SNAT --to-source 203.0.113.5" in v4
    assert "-A POSTROUTING -o bridge1 -m addrtype --src-type LOCAL -j SNAT --to-source 203.0.113.5" in v4


def test_routed_without_proxy_keeps_the_seed_bugs():
    """routed: no MASQUERADE, no DNAT, skip-DNAT RETURN even without the proxy (fixed only in 28.0.2), ICMP accepted."""
    v4, _, _ = compat("[daemon]\nuserland-proxy = false\n" + net1(**{"com.docker.network.bridge.gateway_mode_ipv4": "routed"}) + ctr(publish=["8080:80"]))
    assert "-A DOCKER -i bridge1 -j RETURN" in v4
    assert "-A POSTROUTING -o bridge1 -m addrtype --src-type LOCAL -j MASQUERADE" in v4
    assert "-s 192.0.2.0/24 ! -o bridge1 -j MASQUERADE" not in v4
    assert "DNAT" not in v4
    assert "-A DOCKER -o bridge1 -p icmp -j ACCEPT" in v4
    assert "-A DOCKER -d 192.0.2.2/32 ! -i bridge1 -o bridge1 -p tcp -m tcp --dport 80 -j ACCEPT" in v4
    assert "*raw" not in v4
    lines = v4.splitlines()
    assert lines.index("-A DOCKER-ISOLATION-STAGE-1 -i bridge1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT") < lines.index(
        "-A DOCKER-ISOLATION-STAGE-1 -o bridge1 -j RETURN")


def test_routed_ipv6_icmpv6():
    doc = '''
[[networks]]
name = "n6"
ipv6 = true
subnets = ["192.0.2.0/24", "2001:db8:1::/64"]
options = { "com.docker.network.bridge.name" = "br6", "com.docker.network.bridge.gateway_mode_ipv6" = "routed" }
''' + ctr("c1", nets=("n6",), publish=["8080:80"])
    v4, v6, _ = compat(doc)
    assert "-A DOCKER -o br6 -p ipv6-icmp -j ACCEPT" in v6
    assert "-A DOCKER -d 2001:db8:1::2/128 ! -i br6 -o br6 -p tcp -m tcp --dport 80 -j ACCEPT" in v6
    assert "DNAT" not in v6 and "DNAT --to-destination 192.0.2.2:80" in v4


def test_nat_unprotected():
    v4, _, _ = compat(net1(**{"com.docker.network.bridge.gateway_mode_ipv4": "nat-unprotected"}) + ctr(publish=["8080:80"]))
    assert "-A DOCKER ! -i bridge1 -o bridge1 -j ACCEPT" in v4
    assert "--dport 80 -j ACCEPT" not in v4 and "*raw" not in v4
    assert "--dport 8080 -j DNAT" in v4


def test_masquerade_off():
    v4, _, _ = compat(net1(**{"com.docker.network.bridge.enable_ip_masquerade": "false"}))
    assert "-s 192.0.2.0/24" not in v4 and "-A DOCKER -i bridge1 -j RETURN" not in v4


def test_internal_ipv6():
    """setupInternalNetworkRules v6: the extra interface terms; -S shows the -o rule first."""
    doc = '''
[[networks]]
name = "in6"
internal = true
ipv6 = true
subnets = ["192.0.2.0/24", "2001:db8:2::/64"]
options = { "com.docker.network.bridge.name" = "brin6" }
'''
    _, v6, _ = compat(doc)
    body = [l for l in v6.splitlines() if l.startswith("-A DOCKER-ISOLATION-STAGE-1")]
    assert body == [
        "-A DOCKER-ISOLATION-STAGE-1 ! -s 2001:db8:2::/64 ! -i brin6 -o brin6 -j DROP",
        "-A DOCKER-ISOLATION-STAGE-1 ! -d 2001:db8:2::/64 -i brin6 ! -o brin6 -j DROP",
    ]
    assert "-A DOCKER-FORWARD -i brin6 -o brin6 -j ACCEPT" in v6


def test_legacy_links_on_default_bridge_without_icc():
    doc = '[daemon]\nicc = false\n' + ctr("web", nets=("bridge",), extra='expose = ["80"]') + ctr("app", nets=("bridge",), extra='links = ["web:db"]')
    v4, _, _ = compat(doc)
    assert "-A DOCKER -s 172.17.0.3/32 -d 172.17.0.2/32 -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT" in v4
    assert "-A DOCKER -s 172.17.0.2/32 -d 172.17.0.3/32 -i docker0 -o docker0 -p tcp -m tcp --sport 80 -j ACCEPT" in v4
    assert "-A DOCKER-FORWARD -i docker0 -o docker0 -j DROP" in v4
    assert "-A DOCKER-FORWARD -i docker0 ! -o docker0 -j ACCEPT" in v4


def test_links_do_nothing_with_icc_on():
    doc = ctr("web", nets=("bridge",), extra='expose = ["80"]') + ctr("app", nets=("bridge",), extra='links = ["web:db"]')
    v4, _, _ = compat(doc)
    assert "--sport 80" not in v4


def test_bridge_none():
    v4, v6, _ = compat('[daemon]\nbridge = "none"\n' + net1())
    assert "docker0" not in v4 + v6 and "172.17." not in v4


@pytest.mark.parametrize("daemon, policy", [
    ("[host]\nipv4-forwarding = false\n", "DROP"),
    ("[host]\nipv4-forwarding = false\n[daemon]\nip-forward-no-drop = true\n", "ACCEPT"),
    ("[host]\nipv4-forwarding = false\n[daemon]\nip-forward = false\n", "ACCEPT"),
    ("", "ACCEPT"),
])
def test_forward_policy(daemon, policy):
    v4, v6, gen = compat(daemon)
    assert f":FORWARD {policy} [0:0]" in v4
    assert ":FORWARD ACCEPT [0:0]" in v6  # no IPv6 network: IPv6 forwarding untouched


def test_iptables_false_writes_no_ipv4_rules():
    v4, v6, gen = compat("[daemon]\niptables = false\n" + net1() + ctr(publish=["8080:80"]))
    assert v4 == "" and gen.families() == ["ip6"]
    assert "-A DOCKER-USER -j RETURN" in v6


def test_ip6tables_false():
    _, v6, gen = compat("[daemon]\nip6tables = false\n")
    assert v6 == "" and gen.families() == ["ip"]


def test_ipv6_on_the_default_bridge():
    v4, v6, _ = compat('[daemon]\nipv6 = true\nfixed-cidr-v6 = "2001:db8:17::/64"\n' + ctr("c1", nets=("bridge",), publish=["8080:80"]))
    assert "-A POSTROUTING -s 2001:db8:17::/64 ! -o docker0 -j MASQUERADE" in v6
    assert "-A DOCKER ! -s fe80::/10 ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [2001:db8:17::2]:80" in v6
    assert ":FORWARD DROP [0:0]" in v6  # dockerd turned IPv6 forwarding on


def test_ports_go_to_the_gateway_endpoint():
    """A container on bridge1 then connected to an internal net and to "a-net": gateway is "a-net" (name order)."""
    doc = net1() + '''
[[networks]]
name = "a-net"
subnets = ["198.51.100.0/24"]
options = { "com.docker.network.bridge.name" = "bridgeA" }

[[networks]]
name = "inside"
internal = true
subnets = ["203.0.113.0/24"]
options = { "com.docker.network.bridge.name" = "bridgeI" }
''' + ctr("c1", nets=("bridge1", "inside", "a-net"), publish=["8080:80"])
    v4, _, gen = compat(doc)
    assert "--dport 8080 -j DNAT --to-destination 198.51.100.2:80" in v4
    assert "192.0.2.2:80" not in v4
    assert {(e.network, str(e.ipv4)) for e in gen.endpoints} == {("bridge1", "192.0.2.2"), ("inside", "203.0.113.2"), ("a-net", "198.51.100.2")}


def test_ipam_lowest_free_with_explicit_gateway_and_address():
    doc = '''
[[networks]]
name = "n"
subnets = ["192.0.2.0/24"]
gateways = ["192.0.2.254"]
options = { "com.docker.network.bridge.name" = "brn" }
''' + ctr("c1", nets=("n",), extra='addresses = { n = "192.0.2.1" }') + ctr("c2", nets=("n",))
    _, _, gen = compat(doc)
    assert [str(e.ipv4) for e in gen.endpoints] == ["192.0.2.1", "192.0.2.2"]


def test_address_clash_is_an_error():
    doc = net1() + ctr("c1", extra='addresses = { bridge1 = "192.0.2.2" }') + ctr("c2", extra='addresses = { bridge1 = "192.0.2.2" }')
    with pytest.raises(GenerationError, match="already in use"):
        generate(loads(doc, "t.toml"))


def test_same_host_port_twice_is_an_error():
    with pytest.raises(GenerationError, match="already allocated"):
        generate(loads(net1() + ctr("c1", publish=["8080:80"]) + ctr("c2", publish=["8080:80"]), "t.toml"))


def test_ipv6_host_binding_to_ipv4_container_makes_only_the_raw_drop():
    """-p [::]:8080:80 on an IPv4-only container with the proxy: docker-proxy only, plus the raw DROP (port_mapping_linux.go)."""
    v4, v6, _ = compat(net1() + ctr("c1", publish=["[::]:8080:80"]))
    assert "-A PREROUTING -d 192.0.2.2/32 ! -i bridge1 -p tcp -m tcp --dport 80 -j DROP" in v4
    assert "DNAT" not in v4 + v6


def test_ipv6_only_subnet_still_gets_docker_default_ipv4_pool():
    """docker network create --ipv6 --subnet 2001:db8:3::/64: IPv4 comes from the default pools (172.18.0.0/16 next to docker0)."""
    doc = '''
[[networks]]
name = "v6"
ipv6 = true
subnets = ["2001:db8:3::/64"]
options = { "com.docker.network.bridge.name" = "brv6" }
''' + ctr("c1", nets=("v6",), publish=["8080:80"])
    v4, v6, gen = compat(doc)
    assert "-A POSTROUTING -s 172.18.0.0/16 ! -o brv6 -j MASQUERADE" in v4
    assert "--dport 8080 -j DNAT --to-destination 172.18.0.2:80" in v4
    assert "DNAT --to-destination [2001:db8:3::2]:80" in v6
