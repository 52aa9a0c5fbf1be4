"""README's switch-over: contrib/docker-iptables-off.sh removes exactly the rules Docker programmed.

In a scratch namespace: a real Docker 28.0.1 daemon's rules (compat/multi, its iptables-save and
ip6tables-save) loaded with iptables-restore, plus rules of the host's own in the same built-in
chains; the script, given what the README records (nftdocker's compat form of that host), must
leave only the host's rules, and change nothing when run again.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import COMPAT, ROOT, RULESETS, needs_netns, run_cli

pytestmark = [pytest.mark.netns, needs_netns,
              pytest.mark.skipif(not shutil.which("iptables-restore"), reason="needs iptables (bash setup.sh --test)")]

HOST_RULES = [  # the host's own, which must stay
    ("iptables", "filter", "INPUT -p tcp -m tcp --dport 22 -j ACCEPT"),
    ("iptables", "filter", "FORWARD -i eth9 -o eth8 -j ACCEPT"),
    ("iptables", "nat", "POSTROUTING -o eth9 -j MASQUERADE"),
    ("ip6tables", "filter", "INPUT -p tcp -m tcp --dport 22 -j ACCEPT"),
]


def ns_run(ns: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, *args], input=stdin, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r


def rules(ns: str, tool: str) -> list[str]:
    return [l for l in ns_run(ns, f"{tool}-save").stdout.splitlines() if l.startswith(("-A", "*", ":"))]


def test_docker_iptables_off_leaves_only_the_hosts_rules(netns, tmp_path):
    recorded = {}
    for tool, flag in (("iptables", ()), ("ip6tables", ("--ipv6",))):
        ns_run(netns, f"{tool}-restore", stdin=(COMPAT / "multi" / f"{tool}-save.txt").read_text())
        r = run_cli("compat", RULESETS / "multi" / "scenario.toml", *flag)
        assert r.returncode == 0, r.stderr
        recorded[tool] = tmp_path / f"{tool}.txt"
        recorded[tool].write_text(r.stdout)
    for tool, table, rule in HOST_RULES:
        ns_run(netns, tool, "-t", table, "-A", *rule.split())
    assert any(":DOCKER-USER" in l for l in rules(netns, "iptables"))

    script = ["bash", str(ROOT / "contrib" / "docker-iptables-off.sh"), str(recorded["iptables"]), str(recorded["ip6tables"])]
    r = ns_run(netns, *script)
    assert "iptables: deleted 16 rules from built-in chains and 8 chains" in r.stderr, r.stderr
    for tool in ("iptables", "ip6tables"):
        left = [l for l in rules(netns, tool) if l.startswith("-A")]
        assert left == [f"-A {rule}" for t, _, rule in HOST_RULES if t == tool], left
        assert not [l for l in rules(netns, tool) if "DOCKER" in l]
    again = ns_run(netns, *script)
    assert "deleted 0 rules from built-in chains and 0 chains" in again.stderr


def test_docker_iptables_off_refuses_a_missing_file(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "contrib" / "docker-iptables-off.sh"), str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cannot read it" in r.stderr
