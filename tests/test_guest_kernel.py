"""nftdocker on a kernel that has nf_tables and no x_tables at all.

Boots Debian's stock cloud kernel in qemu (KVM when it works, TCG otherwise) from an initramfs
that tests/guest/build_guest.py builds from this host's Debian packages, with only the kernel
modules nf_tables needs: x_tables, nft_compat, ip_tables, iptable_*, xt_* and ip_set* are not in
the image at all. Inside, tests/guest/steps.sh applies every case with nftdocker, reads the live
tables back as iptables-save text, removes them, and feeds Docker's own rules for the case to
iptables-nft-restore, which the kernel refuses.

Results: ${NFTDOCKER_GUEST_RESULTS:-/tmp/nftdocker-guest}/console.txt and summary.json.
Cache: ${NFTDOCKER_GUEST_CACHE:-~/.cache/nftdocker/guest} (kernel package, base initramfs).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

GUEST_DIR = Path(__file__).resolve().parent / "guest"


def timeout_for(n_cases: int) -> float:
    """The hard bound on the boot: NFTDOCKER_GUEST_TIMEOUT, else 240 s, more with many cases
    (under TCG a case takes about 9 s, mostly four Python start-ups)."""
    env = os.environ.get("NFTDOCKER_GUEST_TIMEOUT")
    return float(env) if env else max(240.0, 60.0 + 20.0 * n_cases)


def _load_builder():
    spec = importlib.util.spec_from_file_location("nftdocker_build_guest",
                                                  GUEST_DIR / "build_guest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod      # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


bg = _load_builder()


def results_dir() -> Path:
    return Path(os.environ.get("NFTDOCKER_GUEST_RESULTS", "/tmp/nftdocker-guest"))


def _excerpt(text: str, lines: int = 40) -> str:
    rows = text.strip().splitlines()
    return "\n".join(rows[:lines] + ([f"... ({len(rows) - lines} more lines)"]
                                     if len(rows) > lines else []))


def check(guest, run, tr, shared: Path, timeout: float) -> list[str]:
    """Everything the run must show; returns the problems found (empty: all good)."""
    problems = list(tr.problems)
    if run.timed_out:
        problems.append(f"qemu killed after the {timeout:.0f} s timeout")
    elif run.returncode != 0:
        problems.append(f"qemu exited {run.returncode}: {run.attempts[-1].note}")

    # Exactly the closure was loaded, each module by its own insmod, and nothing of x_tables.
    insmods = {n.split("/", 1)[1]: s for n, s in tr.steps.items() if n.startswith("insmod/")}
    if list(insmods) != guest.modules:
        problems.append(f"insmod steps {list(insmods)} are not the closure {guest.modules}")
    for name, s in insmods.items():
        if s.rc != 0:
            problems.append(f"insmod {name} rc={s.rc}: {s.output.strip()}")
    loaded = bg.proc_modules(tr)
    forbidden = sorted(m for m in loaded if bg.is_forbidden(m))
    if forbidden:
        problems.append(f"x_tables modules in /proc/modules: {forbidden}")
    if tr.done_t is not None and sorted(loaded) != sorted(guest.modules):
        problems.append(f"/proc/modules {sorted(loaded)} is not the closure "
                        f"{sorted(guest.modules)}")

    # Every step but Docker's restores succeeded (apply, compat diffs, remove, ...).
    for name, s in tr.steps.items():
        if not name.startswith(("insmod/", "restore")) and s.rc != 0:
            problems.append(f"step {name} rc={s.rc}:\n{_excerpt(s.output)}")

    default_steps = guest.manifest["steps"] == str(GUEST_DIR / "steps.sh")
    for case in guest.manifest["cases"]:
        if default_steps:
            for kind in ("apply", "compat4", "compat6", "remove", "removed"):
                if f"{kind}/{case}" not in tr.steps and tr.done_t is not None:
                    problems.append(f"case {case}: no {kind} step ran")
        if case not in guest.manifest["docker_rules"]:
            continue
        # Docker's own nat rules need x_tables matches and targets: the kernel must say no.
        for fam, fname in (("4", "iptables-save.txt"), ("6", "ip6tables-save.txt")):
            ref = shared / "reference" / case / fname
            if not ref.is_file() or not bg.nat_rule_count(ref.read_text()):
                continue
            s = tr.steps.get(f"restore{fam}/{case}/nat")
            if s is None:
                if tr.done_t is not None:
                    problems.append(f"case {case}: Docker's IPv{fam} nat rules were not tried")
            elif s.rc == 0:
                problems.append(f"case {case}: the kernel accepted Docker's IPv{fam} nat rules "
                                f"without x_tables:\n{_excerpt(s.output)}")
            elif not s.output.strip():
                problems.append(f"case {case}: IPv{fam} nat refused (rc={s.rc}) with no message")
    return problems


@pytest.mark.guest
def test_nftables_only_kernel():
    if os.geteuid() != 0:
        pytest.skip("needs root: fetches Debian's kernel package with apt-get")
    if not shutil.which(bg.QEMU):
        pytest.skip(f"{bg.QEMU} not installed (Debian package qemu-system-x86)")
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nftdocker-guest-") as work:
        try:
            guest = bg.build(Path(work))
        except bg.Unavailable as e:
            pytest.skip(f"guest kernel or tools cannot be had here: {e}")
        timeout = timeout_for(len(guest.manifest["cases"]))
        t0 = time.monotonic()
        run = bg.boot(guest, timeout=timeout)
        wall = time.monotonic() - t0
    (out / "console.txt").write_text(run.transcript)
    tr = bg.parse(run.transcript)
    summary = bg.summarize(guest, run, tr)
    summary["boot_wall_s"] = round(wall, 3)
    problems = check(guest, run, tr, bg.SHARED, timeout)
    summary["result"] = {"ok": not problems, "problems": problems}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(report(summary, out))
    assert not problems, (f"{len(problems)} problem(s) in the guest run "
                          f"(console: {out / 'console.txt'}):\n\n" + "\n\n".join(problems))


def report(summary: dict, out: Path) -> str:
    """A short human summary of summary.json."""
    attempts = ", ".join(f"{a['accel']} {a['seconds']:.1f}s"
                         + (f" ({a['note']})" if a["note"] else "") for a in summary["attempts"])
    init = summary["initrd"]
    refused = {n: r for n, r in summary["restores"].items() if not r["loaded"]}
    lines = [
        f"guest kernel {summary['kernel']['package']} under {summary['accel']} "
        f"[{attempts}]",
        f"initramfs {init['bytes'] / 1e6:.1f} MB (base cached: {init['base_cached']}), "
        f"build {init['build_timings']['total_s']:.1f}s, qemu {summary['qemu_seconds']:.1f}s, "
        f"guest init at {summary['guest']['init_t']}s, done at {summary['guest']['done_t']}s",
        f"modules loaded ({len(summary['modules_loaded'])}): "
        + " ".join(sorted(summary["modules_loaded"])),
        f"Docker's tables refused by the kernel: {len(refused)} of "
        f"{len(summary['restores'])}; loaded: "
        + " ".join(n for n, r in summary["restores"].items() if r["loaded"]),
        "what the kernel said to Docker's refused tables (count, line):",
        *(f"  {n:3d}  {line}" for line, n in summary["refusal_lines"].items()),
        f"results: {out}/summary.json, {out}/console.txt",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the harness itself, no qemu

SAMPLE = """\
[    0.000000] Linux version 6.1.0 (kernel noise before init is ignored)
@@INIT kernel=6.1.0-56-cloud-amd64 t=3.10
@@BEGIN insmod/nfnetlink t=3.20
@@END insmod/nfnetlink rc=0 t=3.25
@@BEGIN apply/c1 t=3.30
applied: table ip nftdocker
@@END apply/c1 rc=0 t=4.80
@@BEGIN compat4/c1 t=4.90
@@END compat4/c1 rc=0 t=6.00
@@BEGIN restore4/c1/nat t=6.10
Warning: Extension addrtype is not supported, missing kernel module?
line 7: RULE_APPEND failed (No such file or directory): rule in chain PREROUTING
@@END restore4/c1/nat rc=4 t=6.40
@@BEGIN modules t=6.50
nfnetlink 20480 0 - Live 0xffffffffc0000000
@@END modules rc=0 t=6.55
@@DONE t=6.60
reboot: Power down
"""

NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\nCOMMIT\n"


def _fake(tmp_path, transcript=SAMPLE):
    from types import SimpleNamespace
    (tmp_path / "reference" / "c1").mkdir(parents=True)
    (tmp_path / "reference" / "c1" / "iptables-save.txt").write_text(NAT)
    guest = SimpleNamespace(modules=["nfnetlink"], manifest={
        "steps": "/elsewhere/steps.sh", "cases": ["c1"], "docker_rules": ["c1"]})
    run = SimpleNamespace(timed_out=False, returncode=0, attempts=[])
    return guest, run, bg.parse(transcript)


def test_transcript_parse():
    tr = bg.parse(SAMPLE)
    assert tr.problems == []
    assert (tr.kernel, tr.init_t, tr.done_t) == ("6.1.0-56-cloud-amd64", 3.10, 6.60)
    assert list(tr.steps) == ["insmod/nfnetlink", "apply/c1", "compat4/c1", "restore4/c1/nat",
                              "modules"]
    nat = tr.steps["restore4/c1/nat"]
    assert nat.rc == 4 and nat.seconds == 0.3 and "RULE_APPEND failed" in nat.output
    assert tr.steps["compat4/c1"].output == ""
    assert bg.proc_modules(tr) == ["nfnetlink"]


def test_transcript_problems():
    stray = SAMPLE.replace("@@BEGIN compat4/c1", "surprise\n@@BEGIN compat4/c1")
    assert bg.parse(stray).problems == ["unexpected console line outside any step: 'surprise'"]
    hung = SAMPLE[:SAMPLE.index("@@END restore4")]
    assert bg.parse(hung).problems == [
        "step restore4/c1/nat never ended (hang or crash inside it)",
        "the guest never reached @@DONE"]
    assert bg.parse("kernel panic\n").problems == ["the guest's init never started (no @@INIT)"]


def test_check_accepts_good_run_and_flags_bad_ones(tmp_path):
    guest, run, tr = _fake(tmp_path)
    assert check(guest, run, tr, tmp_path, 240) == []

    _, _, tr = _fake(tmp_path / "a", SAMPLE.replace("restore4/c1/nat rc=4", "restore4/c1/nat rc=0"))
    assert ["accepted Docker's IPv4 nat rules" in p for p in check(guest, run, tr, tmp_path, 240)] \
        == [True]
    _, _, tr = _fake(tmp_path / "b", SAMPLE.replace("apply/c1 rc=0", "apply/c1 rc=3"))
    assert [p.splitlines()[0] for p in check(guest, run, tr, tmp_path, 240)] == [
        "step apply/c1 rc=3:"]
    _, _, tr = _fake(tmp_path / "c", SAMPLE.replace(
        "@@END modules", "x_tables 57344 0 - Live 0xffffffffc0001000\n@@END modules"))
    assert [p.split(":")[0] for p in check(guest, run, tr, tmp_path, 240)] == [
        "x_tables modules in /proc/modules", "/proc/modules ['nfnetlink', 'x_tables'] is not "
        "the closure ['nfnetlink']"]
    run.timed_out, run.returncode = True, None
    assert check(guest, run, bg.parse(SAMPLE), tmp_path, 240) == [
        "qemu killed after the 240 s timeout"]


def test_forbidden_modules_and_image_paths():
    assert [m for m in ("x_tables", "nft_compat", "ip_tables", "iptable_nat", "ip6table_raw",
                        "xt_conntrack", "ip_set_hash_ip", "nf_tables", "nft_ct", "nft_nat",
                        "br_netfilter", "nf_conntrack") if bg.is_forbidden(m)] == [
        "x_tables", "nft_compat", "ip_tables", "iptable_nat", "ip6table_raw", "xt_conntrack",
        "ip_set_hash_ip"]
    img = bg.Image()
    img.add_symlink("/lib", "usr/lib")
    img.add_data("/lib/modules/6.1/kernel/net/netfilter/nf_tables.ko", b"")
    assert "usr/lib/modules/6.1/kernel/net/netfilter/nf_tables.ko" in img.entries
    assert bg.nat_rule_count(NAT) == 1 and bg.nat_rule_count("*filter\n-A X -j Y\n") == 0
