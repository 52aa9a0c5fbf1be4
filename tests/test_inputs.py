"""Reading inputs (one reader: regular files up to 64 MiB, ``-`` for standard input) and writing ``-o FILE``."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import COMPAT, ROOT, RULESETS, SHARED_REFERENCE
from conftest import run_cli as run
from nftdocker import cli, inputs
from nftdocker.errors import EnvironmentProblem, ScenarioError, UsageError

SEED = RULESETS / "usernet-portmap-noproxy" / "scenario.toml"
SEED_DOC = COMPAT / "usernet-portmap-noproxy" / "iptablesdoc.txt"
#: A command that reads its input for ever is killed after this many seconds (and the test fails).
QUICK = 20


def _one_line_exit_2(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


# ----------------------------------------------------------------------------- endless and odd input files


def test_render_dev_zero_is_refused_at_once():
    _one_line_exit_2(run("render", "/dev/zero", timeout=QUICK), "/dev/zero: is a character device, not a regular file")


def test_docker_inspect_dev_zero_is_refused_at_once(tmp_path):
    s = tmp_path / "s.toml"
    s.write_text('docker-inspect = "/dev/zero"\n')
    _one_line_exit_2(run("render", s, timeout=QUICK), f"{s}: docker-inspect: /dev/zero: is a character device")


def test_diff_reference_dev_zero_is_refused_at_once():
    _one_line_exit_2(run("diff", SEED, "/dev/zero", timeout=QUICK), "/dev/zero: is a character device")


def test_daemon_config_dev_zero_is_refused_at_once(tmp_path):
    # daemon.json is read before the daemon is asked anything: no Engine is needed for this refusal
    r = run("export", "--docker-host", f"unix://{tmp_path}/absent.sock", "--daemon-config", "/dev/zero", timeout=QUICK)
    _one_line_exit_2(r, "/dev/zero: is a character device")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "s.toml"
    os.mkfifo(fifo)
    _one_line_exit_2(run("render", fifo, timeout=QUICK), f"{fifo}: is a FIFO, not a regular file")


def test_a_directory_is_refused(tmp_path):
    _one_line_exit_2(run("compat", tmp_path, timeout=QUICK), f"{tmp_path}: is a directory, not a regular file")


def test_a_file_over_64_mib_is_refused_unread(tmp_path):
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(inputs.MAX_BYTES + 1)  # sparse: nothing to write, nothing to read
    _one_line_exit_2(run("render", big, timeout=QUICK), f"{big}: is larger than 64 MiB")
    dump = tmp_path / "dump.json"
    os.link(big, dump)
    s = tmp_path / "s.toml"
    s.write_text('docker-inspect = "dump.json"\n')
    _one_line_exit_2(run("render", s, timeout=QUICK), f"{s}: docker-inspect: {dump}: is larger than 64 MiB")


def test_the_limit_holds_for_standard_input_and_a_growing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_BYTES", 10)
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(b"x" * 11)))
    with pytest.raises(ScenarioError, match=r"^<stdin>: is larger than"):
        inputs.read_bytes("-", stdin=True)
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(b"x" * 10)))
    assert inputs.read_bytes("-", stdin=True) == b"x" * 10
    # st_size says 0 (as for /proc files), yet more than the limit comes: cut at the limit, refused
    proc = Path("/proc/self/mountinfo")
    assert proc.stat().st_size == 0 and len(proc.read_bytes()) > 10
    with pytest.raises(ScenarioError, match="is larger than"):
        inputs.read_bytes(proc)
    # "-" is a file name where standard input is not allowed
    with pytest.raises(ScenarioError, match="^-: no such file"):
        inputs.read_bytes("-")


def test_missing_and_unreadable_files_are_one_line(tmp_path):
    _one_line_exit_2(run("render", tmp_path / "absent.toml"), "absent.toml: no such file")
    s = tmp_path / "s.toml"
    s.write_text('docker-inspect = "absent.json"\n')
    _one_line_exit_2(run("render", s), f"{s}: docker-inspect: {tmp_path / 'absent.json'}: no such file")


@pytest.mark.parametrize("command", [["render"], ["render", "--format", "json"], ["compat"], ["compat", "--ipv6"]])
def test_dash_reads_the_scenario_from_standard_input(command):
    want = run(*command, SEED)
    assert want.returncode == 0, want.stderr
    got = run(*command, "-", input=SEED.read_text())
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout


def test_diff_dash_reads_the_scenario_from_standard_input():
    r = run("diff", "-", SEED_DOC, input=SEED.read_text())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""
    bad = run("render", "-", input='[[networks]]\nname = "n"\nsubnets = ["10.0.0.0/33"]\n')
    _one_line_exit_2(bad, "<stdin>: networks[0].subnets[0]: '10.0.0.0/33' is not an IP prefix")


def test_dash_scenario_finds_its_dump_relative_to_the_working_directory(tmp_path):
    shutil.copy(SHARED_REFERENCE / "multi" / "docker-inspect.json", tmp_path / "d.json")
    r = subprocess.run([sys.executable, "-m", "nftdocker", "compat", "-"], input='docker-inspect = "d.json"\n',
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "-A DOCKER" in r.stdout


# ----------------------------------------------------------------------------- -o FILE


def _files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_output_to_a_directory_is_refused_and_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    r = run("render", SEED, "-o", target)
    _one_line_exit_2(r, f"{target}: is a directory")
    assert _files(tmp_path) == {"out"} and _files(target) == set()


def test_output_follows_no_symlink_planted_beside_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "rules.nft"
    (tmp_path / "rules.nft.tmp").symlink_to(victim)
    r = run("render", SEED, "-o", out)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n"
    assert out.read_text().startswith("table ip nftdocker {") and not out.is_symlink()
    assert _files(tmp_path) == {"victim", "rules.nft", "rules.nft.tmp"}


def test_output_replaces_the_file_whole_with_the_usual_mode(tmp_path):
    out = tmp_path / "c.txt"
    out.write_text("old content that is much longer than the new one\n" * 1000)
    old = os.umask(0o027)
    try:
        cli.write_file(str(out), "new\n")
    finally:
        os.umask(old)
    assert out.read_text() == "new\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert _files(tmp_path) == {"c.txt"}


@pytest.mark.parametrize("err, exc, status", [(errno.ENOSPC, EnvironmentProblem, 3), (errno.EACCES, UsageError, 2)])
def test_a_failed_write_removes_its_temporary_file(tmp_path, monkeypatch, err, exc, status):
    out = tmp_path / "c.txt"
    out.write_text("before\n")

    def fail(src, dst):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(exc) as e:
        cli.write_file(str(out), "after\n")
    assert e.value.exit_status == status
    assert e.value.message == f"{out}: cannot write: {os.strerror(err)}"
    assert out.read_text() == "before\n"
    assert _files(tmp_path) == {"c.txt"}


def test_output_into_a_missing_directory_is_exit_2(tmp_path):
    _one_line_exit_2(run("compat", SEED, "-o", tmp_path / "nodir" / "x"), "nodir/x: cannot write: No such file or directory")
