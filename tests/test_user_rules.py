"""``--user-rules FILE``: the user's own rules for filter-DOCKER-USER, loaded with every apply.

Kernel tests (each in a namespace of its own): the file's rules lead filter-DOCKER-USER after an
apply, a ``--replace``, an ``nft flush ruleset`` and a re-apply, a watch-style applier and a
self-healing restore; a re-apply with the same file is a noop; rules added by hand are kept after
them; a bad line is one message naming FILE:LINE, exit 2, and the table stays byte-identical; a
line trying to leave the chain is refused before the kernel sees it.

Packet tests: the two recipes of README's "Your own rules, from a file", read from README itself,
in a small host (see :class:`Host`); each also runs without the file and must then fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, RULESETS, needs_netns, run_cli
from nftdocker.live import heal
from nftdocker.apply.applier import IncrementalApplier
from nftdocker.nft import table
from nftdocker.host import user_rules as ur
from nftdocker.errors import ScenarioError
from nftdocker.docker.generate import generate
from nftdocker.scenario.load import load

SEED = RULESETS / "usernet-portmap-noproxy" / "scenario.toml"
V6 = RULESETS / "ipv6" / "scenario.toml"
USER = table.USER_CHAIN
RULES = textwrap.dedent("""\
    # the file's rules, in file order
    ip: ip saddr 198.18.0.0/15 drop

    tcp dport 2222 drop
    \tip6: ip6 saddr 2001:db8:ff::/48 drop
    """)


def nft(ns: str, *args: str, check: bool = True) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True, timeout=20)
    if check:
        assert r.returncode == 0, r.stderr
    return r.stdout


def user_chain(ns: str, fam: str = "ip") -> list[str]:
    """filter-DOCKER-USER's rules as nft lists them (comments left on)."""
    text = nft(ns, "list", "chain", fam, "nftdocker", USER)
    return [l.strip() for l in text.splitlines() if l.startswith("\t\t")]


def tagged(stmt: str, fam: str) -> str:
    return ur.UserRule("f", 1, fam, stmt).command_text


WANT_IP = [tagged("ip saddr 198.18.0.0/15 drop", "ip"), tagged("tcp dport 2222 drop", "ip"), "return"]
WANT_IP6 = [tagged("tcp dport 2222 drop", "ip6"), tagged("ip6 saddr 2001:db8:ff::/48 drop", "ip6"), "return"]


def apply(ns: str, scenario: Path, *args) -> dict:
    r = run_cli("apply", scenario, "--netns", ns, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def rules_file(tmp_path):
    p = tmp_path / "docker-user.nft"
    p.write_text(RULES)
    return p


# ---------------------------------------------------------------------- parsing (no kernel)


@pytest.mark.parametrize("line, what", [
    ("accept; add table ip pwned", "';'"),
    ("} chain x {", "'}'"),
    ("ip saddr { 192.0.2.1 } drop", "'{'"),
    ('iifname "eth0 drop', "unbalanced quotes"),
    ("drop # why", "'#'"),
    ("drop \\", "backslash"),
    ("accept\rflush ruleset", "control character"),
    ('drop comment "mine"', "'comment'"),
    ("inet: drop", "'inet:'"),
    ("ip6:", "no rule"),
    ("index 0 drop", "'index'"),
    ("ip: position 1 drop", "'position'"),
])
def test_a_line_that_could_leave_the_chain_is_refused_naming_file_and_line(line, what):
    with pytest.raises(ScenarioError) as e:
        ur.parse("rules.nft", f"# first\ntcp dport 1 drop\n{line}\n".encode())
    assert e.value.message.startswith("rules.nft:3: ") and what in e.value.message, e.value.message


def test_families_blank_lines_and_comments():
    got = ur.parse("r", RULES.encode())
    assert [(r.lineno, r.family, r.text) for r in got.rules] == [
        (2, "ip", "ip saddr 198.18.0.0/15 drop"), (4, "ip", "tcp dport 2222 drop"),
        (4, "ip6", "tcp dport 2222 drop"), (5, "ip6", "ip6 saddr 2001:db8:ff::/48 drop")]
    assert len({r.comment for r in got.rules}) == 4  # the same text in two families: two tags
    spaced = ur.parse("r", b'  ip6:\t meta  secmark "a  b"   accept \n')  # blanks inside kept as written
    assert [(r.family, r.text) for r in spaced.rules] == [("ip6", 'meta  secmark "a  b"   accept')]


# ---------------------------------------------------------------------- the kernel


@pytest.mark.netns
@needs_netns
def test_the_files_rules_lead_the_chain_after_apply_replace_and_flush(netns, rules_file):
    first = apply(netns, V6, "--user-rules", rules_file)
    assert first["mode"] == "full" and (user_chain(netns), user_chain(netns, "ip6")) == (WANT_IP, WANT_IP6)
    assert first["kept_user_rules"] in ({}, {"ip": 0, "ip6": 0})  # the file's rules are not "kept" hand rules
    assert apply(netns, V6, "--user-rules", rules_file)["mode"] == "noop"
    assert apply(netns, V6, "--user-rules", rules_file, "--replace")["mode"] == "full"
    assert (user_chain(netns), user_chain(netns, "ip6")) == (WANT_IP, WANT_IP6)
    assert apply(netns, V6, "--user-rules", rules_file)["mode"] == "noop"
    nft(netns, "flush", "ruleset")
    apply(netns, V6, "--user-rules", rules_file)
    assert (user_chain(netns), user_chain(netns, "ip6")) == (WANT_IP, WANT_IP6)
    assert apply(netns, V6, "--user-rules", rules_file)["mode"] == "noop"


@pytest.mark.netns
@needs_netns
def test_rules_added_by_hand_stay_after_the_files_and_a_changed_file_converges(netns, rules_file):
    apply(netns, V6, "--user-rules", rules_file)
    nft(netns, "insert", "rule", "ip", "nftdocker", USER, "udp", "dport", "53", "drop")  # at the head, by hand
    mine = "udp dport 53 drop"
    for args in ([], ["--replace"], []):
        res = apply(netns, V6, "--user-rules", rules_file, *args)
        assert user_chain(netns) == WANT_IP[:2] + [mine, "return"], args
        assert res["kept_user_rules"].get("ip") == 1
    assert apply(netns, V6, "--user-rules", rules_file)["mode"] == "noop"
    rules_file.write_text("tcp dport 2223 drop\n" + RULES)  # one line more, at the top
    assert apply(netns, V6, "--user-rules", rules_file)["mode"] == "incremental"
    assert user_chain(netns) == [tagged("tcp dport 2223 drop", "ip")] + WANT_IP[:2] + [mine, "return"]
    assert apply(netns, V6, "--user-rules", rules_file)["mode"] == "noop"
    apply(netns, V6)  # without the file: its rules go, the hand rule stays
    assert user_chain(netns) == [mine, "return"] and user_chain(netns, "ip6") == ["return"]


@pytest.mark.netns
@needs_netns
def test_appended_containers_are_resumed_only_while_the_files_rules_are_in_place(netns, rules_file, tmp_path):
    host = tmp_path / "host.toml"
    text = SEED.read_text()
    host.write_text(text)
    apply(netns, host, "--user-rules", rules_file)
    late = '\n[[containers]]\nname = "late{n}"\nnetworks = ["bridge1"]\npublish = ["{port}:81"]\n'
    host.write_text(text + late.format(n=1, port=8081))
    second = apply(netns, host, "--user-rules", rules_file)
    assert (second["generation"], second["replayed_containers"], second["commands"]) == ("resumed", 1, 4)
    assert user_chain(netns) == WANT_IP
    rules_file.write_text("tcp dport 2223 drop\n")  # another file: the host is generated and diffed
    host.write_text(text + late.format(n=1, port=8081) + late.format(n=2, port=8082))
    third = apply(netns, host, "--user-rules", rules_file)
    assert (third["generation"], third["mode"]) == ("full", "incremental")
    assert user_chain(netns) == [tagged("tcp dport 2223 drop", "ip"), "return"]
    def docker_part(text: str) -> list[str]:
        return [l for l in text.splitlines() if not l.startswith("-A DOCKER-USER")]

    assert docker_part(run_cli("compat", "--netns", netns).stdout) == docker_part(run_cli("compat", host).stdout)
    assert apply(netns, host, "--user-rules", rules_file)["mode"] == "noop"


@pytest.mark.parametrize("line, message", [
    ("tcp dport 22 dorp", "unexpected newline (at the end of the line)"),
    ("jump no-such-chain", "(at 'no-such-chain')"),
    ("ip6: ip saddr 192.0.2.1 drop", "for ip6 filter-DOCKER-USER: conflicting protocols"),
    ("accept; add table ip pwned", "';'"),
    ("} chain x {", "'}'"),
])
@pytest.mark.netns
@needs_netns
def test_a_bad_line_exits_2_naming_it_and_changes_nothing(netns, rules_file, line, message):
    apply(netns, V6, "--user-rules", rules_file)
    before = nft(netns, "list", "ruleset")
    bad = rules_file.parent / "bad.nft"
    bad.write_text(RULES + f"\n{line}\n")
    for args in ([], ["--replace"]):
        r = run_cli("apply", SEED, "--netns", netns, "--user-rules", bad, *args)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"nftdocker: {bad}:7: ") and message in lines[0], r.stderr
        assert nft(netns, "list", "ruleset") == before  # byte-identical: nothing applied
    assert "pwned" not in nft(netns, "list", "tables")


@pytest.mark.netns
@needs_netns
def test_the_file_goes_through_the_shared_reader(netns, tmp_path):
    for path, what in (("/dev/zero", "a character device"), (tmp_path, "a directory"), (tmp_path / "none", "no such file")):
        r = run_cli("apply", SEED, "--netns", netns, "--user-rules", path)
        assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert nft(netns, "list", "ruleset") == ""


@pytest.mark.netns
@needs_netns
def test_watch_applier_and_self_healing_bring_the_files_rules_back(netns, rules_file):
    rules = ur.load(str(rules_file))
    sc = load(V6)
    with IncrementalApplier(netns, user_rules=rules) as app:
        assert app.load(sc).mode == "full"
        assert (user_chain(netns), user_chain(netns, "ip6")) == (WANT_IP, WANT_IP6)
        assert app.replay(lambda fw: None).mode in ("noop", "fast")  # nothing changed: nothing replayed
        assert app.apply(generate(sc)).mode == "noop"
    gen = generate(sc)
    nft(netns, "add", "rule", "ip", "nftdocker", USER, "udp", "dport", "53", "drop")  # by hand, after the return
    nft(netns, "insert", "rule", "ip", "nftdocker", USER, "position",
        str(json.loads(nft(netns, "-j", "-a", "list", "chain", "ip", "nftdocker", USER))["nftables"][4]["rule"]["handle"]),
        "udp", "dport", "54", "drop")  # by hand, before the return (after the file's rules)
    before = nft(netns, "list", "ruleset")
    st = heal.read_user_state(netns, "nftdocker", gen)
    assert st["ip"].count() == (2, 0)  # the file's rules are not the user's state: apply writes them
    nft(netns, "flush", "ruleset")
    done = heal.restore(gen, netns, "nftdocker", None, st, rules)
    assert done is not None and done.mode == "full" and done.user_rules == 2
    assert nft(netns, "list", "ruleset") == before
    with IncrementalApplier(netns, user_rules=rules) as app:
        assert app.apply(gen).mode == "noop"


# ---------------------------------------------------------------------- the README's recipes, with packets


def recipe(title: str) -> str:
    """The rules file of the README recipe whose bold title starts with ``title``."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"\*\*" + re.escape(title) + r".*?\n```\n(.*?)```", text, re.S)
    assert m, f"README has no recipe {title!r}"
    return m.group(1)


SCENARIO = textwrap.dedent("""\
    [[networks]]
    name = "web"
    subnets = ["192.0.2.0/24"]
    gateways = ["192.0.2.1"]
    options = { "com.docker.network.bridge.name" = "br-web" }

    [[containers]]
    name = "c1"
    networks = ["web"]
    publish = ["8080:80"]
    """)

SERVER = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8); s.settimeout(60)
    print("ready", flush=True)
    for _ in range(64):
        try:
            c, _ = s.accept()
        except OSError:
            break
        c.sendall(b"ok"); c.close()
    """)

CLIENT = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(); s.settimeout(1.5)
    if sys.argv[3] != "-": s.bind((sys.argv[3], 0))
    try:
        s.connect((sys.argv[1], int(sys.argv[2]))); print(s.recv(2).decode())
    except OSError as e:
        print("fail", e)
    """)


class Host:
    """A Docker-like host in namespaces: ``host`` (bridge br-web 192.0.2.1/24; ``vout`` 198.51.100.1/24
    to ``out``, the outside, holding 198.51.100.2 and .200; ``vlan`` 203.0.113.1/24 to ``lan``, the
    host's LAN, 203.0.113.2) and ``ctr`` (192.0.2.2 on br-web) publishing 80 as the host's 8080."""

    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = {k: f"nftur-{k}-{tag}" for k in ("host", "ctr", "out", "lan")}
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.scenario = tmp / "scenario.toml"
        self.scenario.write_text(SCENARIO)

    def ip(self, ns: str, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns[ns], *args], check=True)

    def __enter__(self) -> Host:
        try:
            return self._build()
        except BaseException:
            self.__exit__()  # a half-built host is removed too
            raise

    def _build(self) -> Host:
        for n in self.ns.values():
            subprocess.run(["ip", "netns", "add", n], check=True)
        for k in self.ns:
            self.ip(k, "link", "set", "lo", "up")
        h = self.ns["host"]
        self.ip("host", "link", "add", "br-web", "type", "bridge")
        self.ip("host", "addr", "add", "192.0.2.1/24", "dev", "br-web")
        self.ip("host", "link", "set", "br-web", "up")
        for k, dev, peer, addr, peer_addrs in (("ctr", "vc", "eth0", "", ["192.0.2.2/24"]),
                                               ("out", "vout", "eth0", "198.51.100.1/24", ["198.51.100.2/24", "198.51.100.200/24"]),
                                               ("lan", "vlan", "eth0", "203.0.113.1/24", ["203.0.113.2/24"])):
            self.ip("host", "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", self.ns[k])
            if addr:
                self.ip("host", "addr", "add", addr, "dev", dev)
            else:
                self.ip("host", "link", "set", dev, "master", "br-web")
            self.ip("host", "link", "set", dev, "up")
            for a in peer_addrs:
                self.ip(k, "addr", "add", a, "dev", peer)
            self.ip(k, "link", "set", peer, "up")
            gw = {"ctr": "192.0.2.1", "out": "198.51.100.1", "lan": "203.0.113.1"}[k]
            self.ip(k, "route", "add", "default", "via", gw)
        subprocess.run(["ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        self.serve("ctr", 80)
        self.serve("lan", 9000)
        self.serve("out", 9000)
        self.serve("out", 8080)
        return self

    def serve(self, ns: str, port: int) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[ns], sys.executable, "-c", SERVER, str(port)],
                             stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait(timeout=10)
        for n in self.ns.values():
            subprocess.run(["ip", "netns", "del", n], check=False)

    def apply(self, rules: str | None) -> None:
        args = []
        if rules is not None:
            f = self.tmp / "rules.nft"
            f.write_text(rules)
            args = ["--user-rules", f]
        r = run_cli("apply", self.scenario, "--netns", self.ns["host"], "--replace", *args)
        assert r.returncode == 0, r.stderr

    def connect(self, ns: str, addr: str, port: int, source: str = "-") -> bool:
        r = subprocess.run(["ip", "netns", "exec", self.ns[ns], sys.executable, "-c", CLIENT, addr, str(port), source],
                           capture_output=True, text=True, timeout=20)
        return r.stdout.strip() == "ok"


@pytest.mark.netns
@needs_netns
@pytest.mark.parametrize("with_rules", [True, False])
def test_recipe_a_published_port_only_from_one_range(tmp_path, with_rules):
    with Host(tmp_path) as h:
        h.apply(recipe("Allow a published port only from one source range") if with_rules else None)
        allowed = h.connect("out", "198.51.100.1", 8080, "198.51.100.2")
        others = h.connect("out", "198.51.100.1", 8080, "198.51.100.200")
        from_lan = h.connect("lan", "203.0.113.1", 8080)
        ctr_to_8080 = h.connect("ctr", "198.51.100.2", 8080)
        assert allowed, "the allowed range must reach the published port"
        assert ctr_to_8080, "a container's own connection to some port 8080 elsewhere is not concerned"
        if with_rules:
            assert not others and not from_lan, "only 198.51.100.0/25 may reach port 8080"
        else:  # without the file both reach it: the test depends on the rules
            assert others and from_lan


@pytest.mark.netns
@needs_netns
@pytest.mark.parametrize("with_rules", [True, False])
def test_recipe_containers_do_not_reach_the_hosts_lan(tmp_path, with_rules):
    with Host(tmp_path) as h:
        h.apply(recipe("Keep containers from reaching a private range on the host's LAN") if with_rules else None)
        to_lan = h.connect("ctr", "203.0.113.2", 9000)
        to_outside = h.connect("ctr", "198.51.100.2", 9000)
        lan_to_published = h.connect("lan", "203.0.113.1", 8080)
        assert lan_to_published, "the LAN still reaches the published port (its replies are not dropped)"
        assert to_outside, "containers still reach the outside (masqueraded)"
        if with_rules:
            assert not to_lan, "a container must not reach 203.0.113.0/24"
        else:
            assert to_lan


# ---------------------------------------------------------------------- watch, against a fake Engine


@pytest.mark.netns
@needs_netns
def test_watch_loads_the_file_and_restores_it_after_a_flush(netns, rules_file, tmp_path):
    pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")
    import threading
    import time

    from conftest import SHARED_REFERENCE
    from fake_engine import FakeEngine
    from nftdocker.live.watch import Watcher

    dump = json.loads((SHARED_REFERENCE / "multi" / "docker-inspect.json").read_text())
    bad = tmp_path / "bad.nft"
    bad.write_text("drop; flush ruleset\n")
    with FakeEngine(tmp_path / "docker.sock", dump, version="28.0.1") as engine:
        r = run_cli("watch", "--docker-host", engine.host, "--netns", netns, "--user-rules", bad, timeout=60)
        assert r.returncode == 2 and r.stderr.startswith(f"nftdocker: {bad}:1: holds ';'"), r.stderr
        assert nft(netns, "list", "ruleset") == ""
        logs: list[str] = []
        w = Watcher(engine.host, netns, "nftdocker", log=logs.append, user_rules=ur.load(str(rules_file)))
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        try:
            def chain_is(want: list[str]) -> bool:
                for _ in range(300):  # 3 s at most
                    got = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "chain", "ip", "nftdocker", USER],
                                         capture_output=True, text=True).stdout
                    if [l.strip() for l in got.splitlines() if l.startswith("\t\t")] == want:
                        return True
                    time.sleep(0.01)
                return False

            assert chain_is(WANT_IP), logs
            nft(netns, "add", "rule", "ip", "nftdocker", USER, "udp", "dport", "53", "drop")  # by hand
            for _ in range(500):  # the watcher remembers it (5 s at most; a fixed sleep raced a loaded machine)
                kept = w._kept.get("ip")
                if kept is not None and any('"dport"' in json.dumps(r) for r in kept.user_rules or []):
                    break
                time.sleep(0.01)
            nft(netns, "flush", "ruleset")
            assert chain_is(WANT_IP + ["udp dport 53 drop"]), logs  # restored (within chain_is's 3 s bound)
            assert any("deleted by nft" in l and "restored with 1 DOCKER-USER rule," in l for l in logs), logs
        finally:
            w.stop()
            t.join(timeout=10)
        assert not t.is_alive()
