"""nftdocker.scenario.write: a Scenario as a scenario file that reproduces its rulesets exactly."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import CASES, RULESETS
from nftdocker.scenario import load as sc
from nftdocker.compat.translate import compat_text
from nftdocker.scenario.write import dumps, export_scenario, scenario_document
from nftdocker.docker.generate import generate
from nftdocker.nft.render import render_json_objects

SCENARIO_FILES = sorted(
    str(p.relative_to(RULESETS)) for case in CASES for p in (RULESETS / case).glob("*.toml")
)


def _objs(s):
    gen = generate(s)
    return render_json_objects(gen.rulesets)


def _roundtrip(s, tmp_path: Path | None = None):
    text = export_scenario(s)
    tomllib.loads(text)  # valid TOML
    if tmp_path is not None:
        (tmp_path / "exported.toml").write_text(text)
        return text, sc.load(tmp_path / "exported.toml")
    return text, sc.loads(text, source="<exported>")


@pytest.mark.parametrize("rel", SCENARIO_FILES)
def test_export_reproduces_every_case(rel, tmp_path):
    s = sc.load(RULESETS / rel)
    text, back = _roundtrip(s, tmp_path)
    assert _objs(back) == _objs(s)
    for fam in ("ip", "ip6"):
        assert compat_text(_objs(back), fam) == compat_text(_objs(s), fam)
    assert "docker-inspect" not in text
    # pinned as allocated: exporting the export gives the same file
    assert export_scenario(back, header="") == export_scenario(s, header="")
    now = generate(s).scenario  # the host as its history (if any) left it
    assert [c.name for c in back.containers] == [c.name for c in now.containers]
    assert [n.name for n in back.networks] == [n.name for n in now.networks]


def test_export_of_a_dump_pins_addresses_and_ports():
    s = sc.load(RULESETS / "multi" / "from-inspect.toml")
    doc = tomllib.loads(export_scenario(s))
    c1 = next(c for c in doc["containers"] if c["name"] == "c1")
    assert c1["addresses"] == {"bridge1": "192.0.2.2"}
    assert c1["publish"] == ["5353:53/udp", "8080:80/tcp", "8443:443/tcp"]  # sorted by container port
    c2 = next(c for c in doc["containers"] if c["name"] == "c2")
    assert "7000-7002:7000-7002/tcp" in c2["publish"]  # consecutive ports folded back into a range
    assert doc["host"] == {"ipv4-forwarding": True, "ipv6-forwarding": False}
    assert "daemon" not in doc  # all defaults


TRICKY = """
[daemon]
icc = false
userland-proxy = false
ip = "127.0.0.1"
bip = "172.18.0.1/16"
[host]
ipv6-forwarding = true
[[networks]]
name = "n.1"
subnets = ["192.0.2.0/24"]
options = { "com.docker.network.bridge.name" = "br1", "com.docker.network.bridge.enable_icc" = "false", "x.y" = "a\\"b\\\\c" }
[[networks]]
name = "int"
subnets = ["198.51.100.0/24"]
internal = true
options = { "com.docker.network.bridge.name" = "brint" }
[[networks]]
name = "rt"
subnets = ["203.0.113.0/24", "2001:db8:7::/64"]
gateways = ["203.0.113.254"]
ipv6 = true
options = { "com.docker.network.bridge.name" = "brrt", "com.docker.network.bridge.gateway_mode_ipv4" = "routed" }
[[containers]]
name = "a"
publish = ["80", "8080:81", "9000-9010:90", "127.0.0.1::53/udp", "5000-5002:5000-5002"]
expose = ["22"]
[[containers]]
name = "b"
networks = ["bridge", "n.1", "int"]
links = ["a:alias"]
addresses = { "n.1" = "192.0.2.77" }
publish = ["100-102/tcp", "7777:77"]
[[containers]]
name = "c"
networks = ["rt"]
publish = ["8000:80", "[2001:db8:7::1]:8001:81"]
"""


def test_export_tricky_scenario():
    s = sc.loads(TRICKY)
    text, back = _roundtrip(s)
    assert _objs(back) == _objs(s)
    doc = tomllib.loads(text)
    assert doc["daemon"] == {"userland-proxy": False, "icc": False, "ip": "127.0.0.1", "bip": "172.18.0.1/16"}
    assert doc["host"] == {"ipv4-forwarding": True, "ipv6-forwarding": True}
    n1 = doc["networks"][0]
    assert n1["options"]["x.y"] == 'a"b\\c'
    ctrs = {c["name"]: c for c in doc["containers"]}
    # a: pinning its ephemeral port would make Docker sort its bindings differently: kept as requested
    assert "80/tcp" in ctrs["a"]["publish"] and "8080:81/tcp" in ctrs["a"]["publish"]
    # b: its ephemeral range keeps its place when pinned: pinned to the ports allocated
    assert ctrs["b"]["publish"] == ["7777:77/tcp", "32769-32771:100-102/tcp"]
    assert ctrs["b"]["addresses"] == {"bridge": "172.18.0.3", "n.1": "192.0.2.77", "int": "198.51.100.2"}
    assert ctrs["b"]["links"] == ["a:alias"]
    assert ctrs["a"]["expose"] == ["22/tcp"]
    assert ctrs["c"]["addresses"] == {"rt": ["203.0.113.1", "2001:db8:7::2"]}


def test_export_names_the_bridge_of_an_unnamed_network(tmp_path):
    dump = json.loads((RULESETS / "multi" / "docker-inspect.json").read_text())
    objs = dump if isinstance(dump, list) else dump["networks"] + dump["containers"]
    for o in objs:
        if o.get("Name") == "bridge1":
            del o["Options"]["com.docker.network.bridge.name"]
            ident = o["Id"]
    (tmp_path / "d.json").write_text(json.dumps(dump))
    (tmp_path / "s.toml").write_text('docker-inspect = "d.json"\n')
    s = sc.load(tmp_path / "s.toml")
    text, back = _roundtrip(s)
    assert f'"com.docker.network.bridge.name" = "br-{ident[:12]}"' in text
    assert _objs(back) == _objs(s)


def test_writer_agrees_with_tomli_w():
    tomli_w = pytest.importorskip("tomli_w")
    for s in (sc.loads(TRICKY), sc.load(RULESETS / "multi" / "from-inspect.toml")):
        doc = scenario_document(s)
        assert tomllib.loads(dumps(doc)) == tomllib.loads(tomli_w.dumps(doc)) == doc


def test_writer_long_arrays_and_odd_strings():
    doc = {"containers": [{"name": "x", "publish": [f"{p}:{p}/udp" for p in range(1000, 1040, 2)],
                           "links": ["é:\u0001\t\n"]}]}
    text = dumps(doc, header="two\nlines")
    assert text.startswith("# two\n# lines\n")
    assert tomllib.loads(text) == doc
    assert max(len(l) for l in text.splitlines()) <= 100


def test_export_needs_only_the_standard_library():
    import subprocess

    code = (
        "import sys; sys.modules['tomli_w'] = None; sys.modules['docker'] = None\n"
        "from nftdocker.scenario import load as scenario, write as export\n"
        f"print(export.export_scenario(scenario.load({str(RULESETS / 'multi' / 'scenario.toml')!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert '[[containers]]\nname = "c1"' in r.stdout
