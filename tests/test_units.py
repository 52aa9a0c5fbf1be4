"""The systemd units in contrib/, as shipped, installed by contrib/install.sh.

``contrib/install.sh --root DIR`` installs into a scratch root (the venv in DIR/opt/nftdocker, the
units in DIR/etc/systemd/system); ``systemd-analyze verify --root DIR`` then checks the units
there, with Debian's own units beside them, including that each ExecStart binary exists and is
executable. The apply unit's ExecStart (and ExecReload) line is parsed from the unit file,
expanded as systemd expands it (Environment= defaults, overridden as /etc/default/nftdocker
would: NFTDOCKER_APPLY_OPTS="--netns NS", NFTDOCKER_SCENARIO), and run as written, its binary the
one install.sh put under the root, against a scratch namespace.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import COMPAT, ROOT, RULESETS, needs_netns, run_cli

CONTRIB = ROOT / "contrib"
UNITS = ("nftdocker-watch.service", "nftdocker-apply.service")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
OPT = "/opt/nftdocker/"
SEED = "usernet-portmap-noproxy"

pytestmark = [pytest.mark.netns, needs_netns, pytest.mark.slow]


def unit_settings(path: Path) -> dict[str, list[str]]:
    """key -> values, in order, of a unit file (comments and continuation lines as systemd reads them)."""
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;" or s.startswith("["):
            continue
        k, _, v = s.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def expand(cmdline: str, env: dict[str, str]) -> list[str]:
    """systemd's expansion of an Exec line: ``$VAR`` alone as a word splits into zero or more
    words, ``${VAR}`` is replaced in place as one word."""
    argv: list[str] = []
    for word in cmdline.split():
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            argv.extend(env.get(m.group(1), "").split())
            continue
        argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda x: env.get(x.group(1), ""), word))
    return argv


def unit_environment(settings: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for v in settings.get("Environment", []):
        k, _, val = v.partition("=")
        env[k] = val
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """contrib/install.sh --root into a scratch root, with Debian's system units beside ours."""
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing: bash setup.sh --test installs systemd")
    root = tmp_path_factory.mktemp("root")
    r = subprocess.run(["bash", str(CONTRIB / "install.sh"), "--root", str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    return root


def verify(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", *UNITS], capture_output=True, text=True, cwd="/")


def test_install_puts_the_command_where_the_units_run_it(installed):
    for unit in UNITS:
        assert (installed / "etc/systemd/system" / unit).read_text() == (CONTRIB / unit).read_text()
        for key in ("ExecStart", "ExecReload"):
            for line in unit_settings(CONTRIB / unit).get(key, []):
                exe = line.split()[0]
                assert exe.startswith(OPT), line
                assert (installed / exe.lstrip("/")).is_file()
    link = installed / "usr/local/sbin/nftdocker"
    assert link.is_symlink() and str(link.readlink()) == OPT + "bin/nftdocker"
    r = subprocess.run([installed / "opt/nftdocker/bin/nftdocker", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("nftdocker "), r.stderr


def test_units_pass_systemd_analyze_verify(installed):
    r = verify(installed)
    assert r.returncode == 0 and "nftdocker" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_verify_catches_a_unit_whose_command_is_missing(installed, tmp_path):
    """The check above can fail: the same root without the installed command is refused."""
    exe = installed / "opt/nftdocker/bin/nftdocker"
    moved = tmp_path / "nftdocker"
    exe.rename(moved)
    try:
        r = verify(installed)
    finally:
        moved.rename(exe)
    assert r.returncode != 0 and "is not executable" in r.stderr, r.stderr


def test_apply_unit_order_and_propagation():
    s = unit_settings(CONTRIB / "nftdocker-apply.service")
    assert s["Type"] == ["oneshot"] and s["RemainAfterExit"] == ["yes"]
    for key in ("PartOf", "After", "WantedBy", "ReloadPropagatedFrom"):
        assert "nftables.service" in " ".join(s[key]).split(), key
    w = unit_settings(CONTRIB / "nftdocker-watch.service")
    after = " ".join(w["After"]).split()
    assert {"docker.service", "nftables.service"} <= set(after)
    assert "docker.service" in " ".join(w["Wants"]).split()
    assert w["Restart"] == ["on-failure"]


def _run_exec(installed: Path, key: str, netns: str) -> subprocess.CompletedProcess:
    s = unit_settings(CONTRIB / "nftdocker-apply.service")
    env = unit_environment(s)
    assert set(env) >= {"NFTDOCKER_APPLY_OPTS", "NFTDOCKER_SCENARIO"}
    # what /etc/default/nftdocker (EnvironmentFile=) would set on such a host
    env |= {"NFTDOCKER_APPLY_OPTS": f"--netns {netns}", "NFTDOCKER_SCENARIO": str(RULESETS / SEED / "scenario.toml")}
    (line,) = s[key]
    argv = expand(line, env)
    assert argv[0].startswith(OPT)
    argv[0] = str(installed / argv[0].lstrip("/"))
    return subprocess.run(argv, capture_output=True, text=True, cwd="/")


def test_apply_unit_exec_lines_load_the_scenario(installed, netns):
    r = _run_exec(installed, "ExecStart", netns)
    assert r.returncode == 0, r.stderr
    want = (COMPAT / SEED / "iptables-save.txt").read_text()
    assert run_cli("show", "--netns", netns, "--format", "iptables").stdout == want
    # nftables.service reloading: /etc/nftables.conf's `flush ruleset`, then the propagated reload
    subprocess.run(["ip", "netns", "exec", netns, "nft", "flush", "ruleset"], check=True)
    assert run_cli("show", "--netns", netns, "--format", "iptables").stdout == ""
    r = _run_exec(installed, "ExecReload", netns)
    assert r.returncode == 0, r.stderr
    assert run_cli("show", "--netns", netns, "--format", "iptables").stdout == want
