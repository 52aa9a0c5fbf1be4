"""Reading inputs (one reader: regular files up to 64 MiB, ``-`` for standard input) and writing ``-o FILE``."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import COMPAT, ROOT, RULESETS, SHARED_REFERENCE
from conftest import run_cli as run
from nftdocker.cli.output import write_file
from nftdocker import inputs
from nftdocker.errors import EnvironmentProblem, GenerationError, ScenarioError, UsageError
from nftdocker.docker.generate import generate
from nftdocker.scenario.context import Context
from nftdocker.scenario.load import from_document

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


def test_output_to_a_fifo_or_a_link_to_one_is_refused_and_leaves_it(tmp_path):
    # as /dev/null or /dev/stdout would be: replacing them with a file would break the host
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    for target in (fifo, link):
        _one_line_exit_2(run("render", SEED, "-o", target, timeout=QUICK), f"{target}: is not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink()
    assert _files(tmp_path) == {"fifo", "link"}


def test_a_symlink_at_the_output_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.symlink_to(victim)
    assert run("compat", SEED, "-o", out).returncode == 0
    assert victim.read_text() == "precious\n" and not out.is_symlink()
    assert out.read_text().startswith("*raw\n")


def test_output_replaces_the_file_whole_with_the_usual_mode(tmp_path):
    out = tmp_path / "c.txt"
    out.write_text("old content that is much longer than the new one\n" * 1000)
    old = os.umask(0o027)
    try:
        write_file(str(out), "new\n")
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
        write_file(str(out), "after\n")
    assert e.value.exit_status == status
    assert e.value.message == f"{out}: cannot write: {os.strerror(err)}"
    assert out.read_text() == "before\n"
    assert _files(tmp_path) == {"c.txt"}


def test_output_into_a_missing_directory_is_exit_2(tmp_path):
    _one_line_exit_2(run("compat", SEED, "-o", tmp_path / "nodir" / "x"), "nodir/x: cannot write: No such file or directory")


# ----------------------------------------------------------------------------- docker inspect dumps: types

DUMPS = sorted(SHARED_REFERENCE.glob("*/docker-inspect.json"))
PORTMAP = SHARED_REFERENCE / "usernet-portmap" / "docker-inspect.json"


def _load_dump(dump, source="d.json"):
    return from_document(Context(source), {}, Path("."), inspect=dump)


def _portmap():
    return json.loads(PORTMAP.read_text())


def _c1(dump):
    return next(c for c in dump["containers"] if c["Name"] == "/c1")


def _bridge1(dump):
    return next(n for n in dump["networks"] if n["Name"] == "bridge1")


def test_the_real_dumps_load():
    assert len(DUMPS) >= 18
    for p in DUMPS:
        _load_dump(json.loads(p.read_text()), str(p))


def _edit_ports_string(d):
    _c1(d)["NetworkSettings"]["Ports"] = "x"


def _edit_internal_yes(d):
    _bridge1(d)["Internal"] = "yes"


def _edit_settings_null(d):
    _c1(d)["NetworkSettings"] = None


def _edit_no_networks(d):
    del _c1(d)["NetworkSettings"]["Networks"]


def _edit_networks_null(d):
    _c1(d)["NetworkSettings"]["Networks"] = None


def _edit_hostport_99999(d):
    _c1(d)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] = "99999"


def _edit_requested_hostport_70000(d):
    for c in d["containers"]:
        c["NetworkSettings"]["Ports"] = {}
    _c1(d)["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"] = "70000"


def _edit_hostip_garbage(d):
    _c1(d)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostIp"] = "x"


def _edit_endpoint_null(d):
    _c1(d)["NetworkSettings"]["Networks"]["bridge1"] = None


def _edit_gw_priority_string(d):
    _c1(d)["NetworkSettings"]["Networks"]["bridge1"]["GwPriority"] = "1"


def _edit_option_number(d):
    _bridge1(d)["Options"]["com.docker.network.bridge.enable_icc"] = 0


def _index(d, pred, kind):
    return next(i for i, o in enumerate(d[kind]) if pred(o))


@pytest.mark.parametrize("edit, key, problem", [
    (_edit_ports_string, "NetworkSettings.Ports", "expected an object, got string 'x'"),
    (_edit_internal_yes, "Internal", "expected a boolean, got string 'yes'"),
    (_edit_settings_null, "NetworkSettings", "expected an object, got null"),
    (_edit_no_networks, "NetworkSettings.Networks", "required key is missing"),
    (_edit_networks_null, "NetworkSettings.Networks", "expected an object, got null"),
    (_edit_hostport_99999, "NetworkSettings.Ports.80/tcp[0].HostPort", "'99999' is not a port 0-65535"),
    (_edit_requested_hostport_70000, "HostConfig.PortBindings.80/tcp[0].HostPort", "'70000' is not a port 0-65535"),
    (_edit_hostip_garbage, "NetworkSettings.Ports.80/tcp[0].HostIp", "'x' is not an IP address"),
    (_edit_endpoint_null, "NetworkSettings.Networks.bridge1", "expected an object, got null"),
    (_edit_gw_priority_string, "NetworkSettings.Networks.bridge1.GwPriority", "expected an integer, got string '1'"),
    (_edit_option_number, "Options.com.docker.network.bridge.enable_icc", "expected a string, got number 0"),
])
def test_a_wrong_value_in_a_dump_is_one_located_line(tmp_path, edit, key, problem):
    d = _portmap()
    edit(d)
    if key in ("Internal", "Options.com.docker.network.bridge.enable_icc"):
        where = f"networks[{_index(d, lambda n: n['Name'] == 'bridge1', 'networks')}]"
    else:
        where = f"containers[{_index(d, lambda c: c['Name'] == '/c1', 'containers')}]"
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(d))
    s = tmp_path / "s.toml"
    s.write_text('docker-inspect = "dump.json"\n')
    _one_line_exit_2(run("compat", s), f"nftdocker: {dump}: {where}.{key}: {problem}\n")


def test_a_container_sharing_anothers_network_has_no_networks_and_is_valid():
    # `docker run --network container:c1` lists no endpoint of its own: Networks is an empty object
    d = _portmap()
    other = json.loads(json.dumps(_c1(d)))
    other.update(Name="/c2", Id="f" * 64)
    other["HostConfig"].update(NetworkMode="container:" + _c1(d)["Id"], PortBindings={})
    other["NetworkSettings"].update(Networks={}, Ports={})
    d["containers"].append(other)
    sc = _load_dump(d)
    assert [(c.name, c.networks) for c in sc.containers] == [("c1", ("bridge1",)), ("c2", ())]


def _paths(v, path=""):
    """Every (path, value) under v, in the loader's key notation: a.b, a[0]."""
    if isinstance(v, dict):
        for k, x in v.items():
            p = f"{path}.{k}" if path else k
            yield p, x
            yield from _paths(x, p)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            p = f"{path}[{i}]"
            yield p, x
            yield from _paths(x, p)


def _set(doc, path, value):
    import re

    parts = re.findall(r"\[(\d+)\]|\.?([^.\[]+)", path)
    # map keys may hold dots ("com.docker.network.bridge.name", "80/tcp" does not): walk by what exists
    node, i = doc, 0
    tokens = [(int(a) if a else b) for a, b in parts]
    while True:
        t = tokens[i]
        if isinstance(t, str):
            j = i + 1
            while t not in node:
                t = f"{t}.{tokens[j]}"
                j += 1
            i = j
        else:
            i += 1
        if i == len(tokens):
            if value is DELETE:
                del node[t]
            else:
                node[t] = value
            return
        node = node[t]


#: The keys the loader reads (as regular expressions over the path) and the JSON types it takes there.
#: A value of another type at one of them must be refused naming exactly that key.
_O, _L, _S, _B, _I, _N = dict, list, str, bool, int, type(None)
READ = [
    (r"networks\[\d+\]", (_O,)),
    (r"networks\[\d+\]\.(Name|Driver|Id|Created)", (_S,)),
    (r"networks\[\d+\]\.(Ingress|Internal|EnableIPv6)", (_B,)),
    (r"networks\[\d+\]\.Options", (_O, _N)),
    (r"networks\[\d+\]\.Options\..+", (_S,)),
    (r"networks\[\d+\]\.IPAM", (_O,)),
    (r"networks\[\d+\]\.IPAM\.Config", (_L, _N)),
    (r"networks\[\d+\]\.IPAM\.Config\[\d+\]", (_O,)),
    (r"networks\[\d+\]\.IPAM\.Config\[\d+\]\.(Subnet|Gateway)", (_S,)),
    (r"containers\[\d+\]", (_O,)),
    (r"containers\[\d+\]\.(Name|Created)", (_S,)),
    (r"containers\[\d+\]\.(NetworkSettings|HostConfig|Config)", (_O,)),
    (r"containers\[\d+\]\.NetworkSettings\.Networks", (_O,)),
    (r"containers\[\d+\]\.NetworkSettings\.Networks\.[^.]+", (_O,)),
    (r"containers\[\d+\]\.NetworkSettings\.Networks\.[^.]+\.(IPAddress|GlobalIPv6Address)", (_S,)),
    (r"containers\[\d+\]\.NetworkSettings\.Networks\.[^.]+\.GwPriority", (_I,)),
    (r"containers\[\d+\]\.(NetworkSettings\.Ports|HostConfig\.PortBindings)", (_O, _N)),
    (r"containers\[\d+\]\.(NetworkSettings\.Ports|HostConfig\.PortBindings)\.[^.\[]+", (_L, _N)),
    (r"containers\[\d+\]\.(NetworkSettings\.Ports|HostConfig\.PortBindings)\.[^.\[]+\[\d+\]", (_O,)),
    (r"containers\[\d+\]\.(NetworkSettings\.Ports|HostConfig\.PortBindings)\.[^.\[]+\[\d+\]\.(HostIp|HostPort)", (_S,)),
    (r"containers\[\d+\]\.HostConfig\.NetworkMode", (_S,)),
    (r"containers\[\d+\]\.HostConfig\.Links", (_L, _N)),
    (r"containers\[\d+\]\.HostConfig\.Links\[\d+\]", (_S,)),
    (r"containers\[\d+\]\.Config\.ExposedPorts", (_O, _N)),
]
#: Not a value: the key (or array element) is taken out.
DELETE = type("Delete", (), {"__repr__": lambda self: "DELETE"})()
OTHER_VALUES = [None, True, False, 0, -1, 99999, 1.5, "", "x", "99999", "192.0.2.300", [], ["x"], [{}], {}, {"x": 1}]


def _reads(path):
    import re

    for pattern, types in READ:
        if re.fullmatch(pattern, path):
            return types
    return None


def _dump_and_path():
    def pick(p):
        d = json.loads(p.read_text())
        return st.sampled_from(list(_paths(d))).map(lambda pv: (p, pv[0], pv[1]))

    return st.sampled_from(DUMPS).flatmap(pick)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dump_and_path(), st.sampled_from(OTHER_VALUES + [DELETE]))
def test_fuzz_a_wrong_type_at_any_key_of_the_real_dumps(target, value):
    """A value of another type (or none) anywhere in a real dump: a valid model, or a ScenarioError
    naming the file and key (exactly that key where the loader reads it); never another exception."""
    path_of_dump, path, old = target
    assume(type(value) is not type(old))
    d = json.loads(path_of_dump.read_text())
    _set(d, path, value)
    types = _reads(path) if value is not DELETE else None
    try:
        sc = _load_dump(d, "d.json")
    except ScenarioError as e:
        assert str(e).startswith("d.json: ") and e.key, str(e)
        if types is not None and type(value) not in types:
            assert e.key == path, (path, str(e))
        return
    assert types is None or type(value) in types, f"{path} = {value!r} was taken without a word"
    try:
        generate(sc)
    except GenerationError as e:
        assert "d.json" in str(e)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-70000, 140000).map(str), st.text(alphabet="0123456789-x ", max_size=7)))
def test_fuzz_host_ports(text):
    d = _portmap()
    _c1(d)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] = text
    try:
        sc = _load_dump(d)
    except ScenarioError as e:
        assert e.key.endswith(".NetworkSettings.Ports.80/tcp[0].HostPort"), str(e)
        assert not (text.isdigit() and int(text) <= 65535) or text == ""
        return
    assert text == "" or (text.isdigit() and 0 <= int(text) <= 65535) or "-" in text
    ports = {p.host_port for p in sc.containers[0].publish}
    assert all(0 <= p <= 65535 for p in ports)


def test_every_key_of_a_real_dump_with_every_other_type():
    """The fuzz test's property, exhaustively over one dump: every path, every other type, and deletion."""
    base = _portmap()
    cases = 0
    for path, old in list(_paths(base)):
        for value in OTHER_VALUES + [DELETE]:
            if type(value) is type(old):
                continue
            d = json.loads(json.dumps(base))
            _set(d, path, value)
            types = _reads(path) if value is not DELETE else None
            cases += 1
            try:
                _load_dump(d, "d.json")
            except ScenarioError as e:
                assert str(e).startswith("d.json: ") and e.key, str(e)
                assert types is None or type(value) in types or e.key == path, (path, value, str(e))
                continue
            assert types is None or type(value) in types, f"{path} = {value!r} was taken without a word"
    assert cases > 1500
