"""verify --witness: witness packets of diff --semantic sent through both sides, in namespaces.

Root only (verify builds its namespaces from the scenario; test addresses only inside them).
"""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest

from conftest import RULESETS
from nftdocker.cli import main as cli
from nftdocker.verify.plan import PREFIX
from nftdocker.docker.generate import generate
from nftdocker.scenario.load import load
from test_semantic_diff import PAIRED, _drop_first, _id, _reorder, _scenario, _version

pytestmark = pytest.mark.netns


def _loopback_only(path, packet: dict) -> bool:
    """Is the witness's container port published on loopback host addresses only? Then the host
    reaches it through OUTPUT, never FORWARD, and raw PREROUTING drops the container's port from
    every other interface: a difference in filter DOCKER is real for the chain and invisible to
    every packet this host can get."""
    g = generate(load(_scenario(path)))
    found = [b for bs in g.bindings.values() for b in bs
             if str(b.container_ip) == packet["dst"] and b.container_port == packet["dport"] and b.proto == packet["proto"]]
    return bool(found) and all(b.host_ip.is_loopback for b in found)


@pytest.fixture
def netns_ok():
    if os.geteuid() != 0:
        pytest.skip("needs root: verify builds network namespaces")
    missing = [t for t in ("ip", "iptables-legacy-restore", "ip6tables-legacy-restore") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    pytest.importorskip("pyroute2")
    before = _ours()
    yield
    assert _ours() == before, "verify left namespaces behind"


def _ours() -> set[str]:
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith(f"{PREFIX}-{os.getpid()}")}
    except FileNotFoundError:
        return set()


def _verify(path, ref_text, tmp_path, capsys) -> tuple[int, dict]:
    ref = tmp_path / path.name
    ref.write_text(ref_text)
    opt = "--reference6" if _version(path) == 6 else "--reference"
    rc = cli.main(["verify", str(_scenario(path)), opt, str(ref), "--witness", "--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("path", [p for p in PAIRED if p.parent.parent == RULESETS], ids=_id)
def test_packets_confirm_the_witness(netns_ok, path, tmp_path, capsys):
    rc, out = _verify(path, _drop_first(path.read_text()), tmp_path, capsys)
    assert rc == 1
    fam = "ip6" if _version(path) == 6 else "ip"
    assert out["witness"]["semantic"][fam]["equivalent"] is False
    ws = out["witness"]["witnesses"]
    drop_accept = [w for w in ws if (w["witness"]["reference"]["effect"], w["witness"]["nftdocker"]["effect"]) == ("DROP", "ACCEPT")]
    for w in [w for w in drop_accept if w["witness"]["packet"]["proto"] not in ("tcp", "udp")]:
        assert w["status"] == "cannot be sent" and not w["probes"]  # ICMP: verify sends TCP and UDP only
    drop_accept = [w for w in drop_accept if w["witness"]["packet"]["proto"] in ("tcp", "udp")]
    assert drop_accept
    rows = {p["id"]: p for p in out["probes"]}
    hidden = [w for w in drop_accept if _loopback_only(path, w["witness"]["packet"])]
    assert all(w["status"] == "NOT confirmed" for w in hidden), json.dumps(hidden, indent=1)
    assert all(rows[i]["agree"] for w in hidden for i in w["probes"])
    drop_accept = [w for w in drop_accept if w not in hidden]
    if path.parent.name == "usernet-portmap-lo":
        assert hidden and not drop_accept  # its only published port is on 127.0.0.1
    assert all(w["status"] == "confirmed" for w in drop_accept), json.dumps(ws, indent=1)
    for w in drop_accept:
        assert any(not rows[i]["agree"] and rows[i]["legacy"]["result"] != "open" and rows[i]["nft"]["result"] == "open"
                   for i in w["differ"])


@pytest.mark.parametrize("case", ["multi", "usernet-portmap-routed"])
def test_equivalent_reordering_is_not_contradicted(netns_ok, case, tmp_path, capsys):
    path = RULESETS / case / "iptables-save.txt"
    moved = _reorder(path.read_text(), random.Random(case))
    assert moved != path.read_text()
    rc, out = _verify(path, moved, tmp_path, capsys)
    assert out["witness"]["semantic"]["ip"]["equivalent"] is True
    assert out["witness"]["contradictions"] == [] and out["witness"]["witnesses"] == []
    assert rc == 0 and out["ok"]
