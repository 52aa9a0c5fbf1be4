"""The command line as a user runs it: exit statuses, -o, --json, python -m."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import COMPAT, ROOT, RULESETS
from conftest import run_cli as run

SEED = RULESETS / "usernet-portmap-noproxy" / "scenario.toml"
SEED_DOC = COMPAT / "usernet-portmap-noproxy" / "iptablesdoc.txt"


def test_render_prints_the_table():
    r = run("render", SEED)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("table ip nftdocker {")
    assert "table ip6 nftdocker {" in r.stdout
    assert "tcp dport 8080 dnat to 192.0.2.2:80" in r.stdout


def test_render_table_name_and_output_file(tmp_path):
    out = tmp_path / "r.json"
    r = run("render", SEED, "--format", "json", "--table", "mine", "-o", out)
    assert r.returncode == 0 and r.stdout == ""
    objs = json.loads(out.read_text())["nftables"]
    assert {o["table"]["name"] for o in objs if "table" in o} == {"mine"}


def test_diff_against_seed_document_is_identical():
    r = run("diff", SEED, SEED_DOC)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""


def test_diff_finds_a_changed_rule(tmp_path):
    changed = tmp_path / "seed.txt"
    text = SEED_DOC.read_text()
    assert "--dport 8080 -j DNAT" in text
    changed.write_text(text.replace("--dport 8080 -j DNAT", "--dport 8081 -j DNAT", 1))
    r = run("diff", SEED, changed)
    assert r.returncode == 1
    assert "--dport 8081" in r.stdout and "+-A DOCKER -p tcp -m tcp --dport 8080" in r.stdout


@pytest.mark.parametrize("case", ["multi", "ipv6"])
def test_diff_accepts_iptables_save_and_dash_S(case, tmp_path):
    save = COMPAT / case / "iptables-save.txt"
    assert run("diff", RULESETS / case / "scenario.toml", save).returncode == 0
    # the same rules as `iptables -S` per table, with -t prefixes
    lines = []
    table = None
    for l in save.read_text().splitlines():
        if l.startswith("*"):
            table = l[1:]
        elif l.startswith(":"):
            name, pol = l[1:].split()[:2]
            lines.append(f"-t {table} " + (f"-N {name}" if pol == "-" else f"-P {name} {pol}"))
        elif l.startswith("-A"):
            lines.append(f"-t {table} {l}")
    dash_s = tmp_path / "dash-S.txt"
    dash_s.write_text("\n".join(lines) + "\n")
    r = run("diff", RULESETS / case / "scenario.toml", dash_s, "--json")
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["identical"] is True


def test_diff_ipv6():
    r = run("diff", RULESETS / "ipv6" / "scenario.toml", COMPAT / "ipv6" / "ip6tables-save.txt", "--ipv6")
    assert r.returncode == 0, r.stdout
    assert run("diff", RULESETS / "ipv6" / "scenario.toml", COMPAT / "ipv6" / "ip6tables-save.txt").returncode == 1


def test_bad_scenario_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[networks]]\nname = "n"\nsubnets = ["10.0.0.0/33"]\n')
    r = run("render", bad)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().count("\n") == 0
    assert f"{bad}: networks[0].subnets[0]: '10.0.0.0/33' is not an IP prefix" in r.stderr


def test_missing_file_exits_2():
    r = run("compat", "/nonexistent/x.toml")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_reference_without_rules_exits_2(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    r = run("diff", SEED, empty)
    assert r.returncode == 2 and "no iptables rules" in r.stderr


def test_usage_error_exits_2():
    assert run("render").returncode == 2
    assert run("frobnicate").returncode == 2


def test_pure_commands_need_only_the_standard_library():
    code = (
        "import sys, runpy; sys.argv=['nftdocker','compat',%r];"
        "import nftdocker.cli.main as c; rc=c.main(sys.argv[1:]);"
        "bad=[m for m in ('nftables','pyroute2','docker') if m in sys.modules]; print('LOADED', bad); sys.exit(rc)"
    ) % str(SEED)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("LOADED []")


def test_explain_names_each_rules_origin():
    r = run("render", SEED, "--explain")
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if "dnat to 192.0.2.2:80" in l)
    assert 'comment "setPerPortNAT[bridge1 c1 8080->80/tcp] DNAT"' in line
    rules = [l for l in r.stdout.splitlines() if l.startswith("\t\t") and not l.strip().startswith("type ")]
    assert rules and all(' comment "' in l for l in rules)
