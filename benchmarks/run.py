#!/usr/bin/env python3
"""nftdocker's costs against the size of the host, and against Docker's own way: one command.

    sudo .venv/bin/python benchmarks/run.py [--quick] [--sizes 10,100,1000] [--runs 5]

Writes benchmarks/results.json, benchmarks/results.md and benchmarks/costs.png. Every figure is
the median of several runs (fewer when one run alone exceeds the per-measurement time budget; the
run count is reported), and every ratio is taken between figures measured in the same run of this
script. All kernel work happens in network namespaces made here and removed at the end. Hosts are
synthetic (benchmarks/synthetic.py): N networks x M containers x K published ports, M=2, K=3.

What is measured, per N:

render     load the scenario file + generate + render the nft text (``nftdocker render``'s work,
           in-process), and the peak RSS of that process
apply      a fresh apply in-process (``apply.engine.apply``: one transaction, table empty) against
           ``nft -f`` of the same rendered text (a process, in the namespace), and against
           ``apply(..., replace=True)`` (the full-replace path), on an empty namespace each time
add-one    adding one container with one published port to the loaded host:
           process to process (``python -m nftdocker apply``, for the fresh load and for the
           change), and in-process through the long-running path (``IncrementalApplier.replay`` of
           Docker's run of the container, the path watch's events take),
           with the part spent in libnftables and the kernel
docker     the compat (iptables-save) output replayed one ``iptables-legacy``/``ip6tables-legacy`` call
           per rule (plus one per chain and policy) from a process inside the namespace, and
           ``iptables-legacy-restore`` of the same text. Above --replay-full calls, the replay is
           sampled: the table is filled to 0, 25, 50, 75 and 95 % with iptables-legacy-restore, the
           next --replay-sample calls are timed at each level, and the total is the number of calls
           times the mean per-call time over the levels (trapezoid); results say so.

And once, at N = --ir-size (300): comparing two hosts (as ``watch`` and ``export`` do) and
translating one to iptables-save (``compat``), on the rule IR, against the same work done through
the hosts' libnftables JSON rendering (how both were done before), in the same run.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import synthetic  # noqa: E402

PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
M, K = 2, 3

# ---------------------------------------------------------------------- namespaces

_made: list[str] = []


def make_ns() -> str:
    name = f"nftdb-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    _made.append(name)
    return name


def flush_ns(ns: str, legacy: bool = False) -> None:
    """Empty the namespace's nftables (``legacy``: its x_tables instead)."""
    if not legacy:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
        return
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        for table in ("raw", "mangle", "filter", "nat"):
            subprocess.run(["ip", "netns", "exec", ns, tool, "-t", table, "-F"], capture_output=True)
            subprocess.run(["ip", "netns", "exec", ns, tool, "-t", table, "-X"], capture_output=True)


@atexit.register
def _remove_ns() -> None:
    from nftdocker.nft.state import forget

    for name in _made:
        forget(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


# ---------------------------------------------------------------------- helpers


def runs_of(fn: Callable[[], Any], runs: int, budget: float) -> list[Any]:
    """Call ``fn`` ``runs`` times, or fewer once ``budget`` seconds are spent (at least once)."""
    out: list[Any] = []
    t0 = time.monotonic()
    while len(out) < runs:
        out.append(fn())
        if time.monotonic() - t0 > budget:
            break
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(cmd: list[str], **kw: Any) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall time of a command, its CPU time (user + system, children included), and its result."""
    c = cpu_children()
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, **kw)
    dt = time.perf_counter() - t
    cpu = cpu_children() - c
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()[:400]}")
    return dt, cpu, r


def scenario_files(tmp: Path, n: int) -> tuple[Path, Path]:
    base = tmp / f"host-{n}.toml"
    plus = tmp / f"host-{n}-plus1.toml"
    text = synthetic.scenario_toml(n, M, K)
    base.write_text(text)
    plus.write_text(text + synthetic.added_container_toml(0, "net0"))
    return base, plus


# ---------------------------------------------------------------------- render

RENDER_CHILD = r"""
import gc, json, resource, sys, time
gc.disable()  # as nftdocker's one-shot commands run (nftdocker.cli.main.ONE_SHOT)
from nftdocker.scenario.load import load
from nftdocker.docker.generate import generate
from nftdocker.nft.replace import render_nft
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ru = resource.getrusage(resource.RUSAGE_SELF)
c0 = ru.ru_utime + ru.ru_stime
t0 = time.perf_counter()
sc = load(sys.argv[1])
t1 = time.perf_counter()
g = generate(sc)
t2 = time.perf_counter()
text = render_nft(g.rulesets)
t3 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
peak = ru.ru_maxrss
print(json.dumps({"cpu": ru.ru_utime + ru.ru_stime - c0, "load": t1 - t0, "generate": t2 - t1, "render_text": t3 - t2, "total": t3 - t0,
                  "peak_rss_mib": peak / 1024, "rss_increase_mib": (peak - base) / 1024, "bytes": len(text),
                  "rules": sum(len(c.rules) for f in g.families() for c in g.rulesets[f].chains.values())}))
"""


def bench_render(path: Path, runs: int, budget: float) -> dict[str, Any]:
    res = runs_of(lambda: json.loads(timed([PY, "-c", RENDER_CHILD, str(path)])[2].stdout), runs, budget)
    out = {k: med([r[k] for r in res]) for k in ("load", "generate", "render_text", "total", "cpu", "peak_rss_mib", "rss_increase_mib")}
    out.update(runs=len(res), rules=res[0]["rules"], bytes=res[0]["bytes"])
    return out


# ---------------------------------------------------------------------- fresh apply vs nft -f


def bench_apply(n: int, ns: str, tmp: Path, runs: int, budget: float) -> dict[str, Any]:
    from nftdocker.apply.engine import apply
    from nftdocker.docker.generate import generate
    from nftdocker.nft.replace import render_nft

    sc = synthetic.host(n, M, K)
    gen = generate(sc)
    gen1 = generate(synthetic.with_container(sc, synthetic.new_container(sc, 0)))
    text = render_nft(gen.rulesets)
    nft_file = tmp / f"host-{n}.nft"
    nft_file.write_text(text)

    def one() -> tuple[float, ...]:
        flush_ns(ns)
        c = cpu_self()
        t = time.perf_counter()
        res = apply(gen, ns)
        ours = time.perf_counter() - t
        ours_cpu = cpu_self() - c
        assert res.mode == "full", res
        t = time.perf_counter()
        res = apply(gen1, ns)
        add = time.perf_counter() - t
        assert (res.mode, res.commands) == ("incremental", 3), res
        flush_ns(ns)
        nft_f, nft_f_cpu, _ = timed(["ip", "netns", "exec", ns, "nft", "-f", str(nft_file)])
        flush_ns(ns)
        t = time.perf_counter()
        apply(gen, ns, replace=True, store=False)
        full = time.perf_counter() - t
        return ours, nft_f, full, add, ours_cpu, nft_f_cpu

    res = runs_of(one, runs, budget)
    ours, nft_f, full, add, ours_cpu, nft_f_cpu = (med([r[i] for r in res]) for i in range(6))
    return {"apply": ours, "nft_f": nft_f, "kernel_apply": full, "ratio_apply_to_nft_f": ours / nft_f,
            "apply_cpu": ours_cpu, "nft_f_cpu": nft_f_cpu, "ratio_apply_to_nft_f_cpu": med([r[4] / r[5] for r in res]),
            "ratios_per_run": [r[0] / r[1] for r in res], "runs": len(res),
            "add_one_apply_step": add, "ratio_add_to_fresh_apply_step": med([r[3] / r[0] for r in res])}


# ---------------------------------------------------------------------- add one container


def bench_add_process(n: int, ns: str, tmp: Path, runs: int, budget: float) -> dict[str, Any]:
    entry, label = [PY, "-m", "nftdocker", "apply"], "python -m nftdocker apply"
    base, plus = scenario_files(tmp, n)

    def one() -> tuple[float, float, str, float, float]:
        flush_ns(ns)
        fresh, fresh_cpu, _ = timed(entry + [str(base), "--netns", ns], cwd=ROOT)
        add, add_cpu, r = timed(entry + [str(plus), "--netns", ns, "--json"], cwd=ROOT)
        return fresh, add, r.stdout, fresh_cpu, add_cpu

    res = runs_of(one, runs, budget)
    fresh, add = med([r[0] for r in res]), med([r[1] for r in res])
    last = res[-1][2]
    try:
        info = json.loads(last.strip().splitlines()[-1])
    except (ValueError, IndexError):
        info = {"output": last.strip()[-300:]}
    return {"entry": label, "fresh": fresh, "add_one": add, "ratio_add_to_fresh": add / fresh,
            "fresh_cpu": med([r[3] for r in res]), "add_one_cpu": med([r[4] for r in res]),
            "ratio_add_to_fresh_cpu": med([r[4] / r[3] for r in res]),
            "ratios_per_run": [r[1] / r[0] for r in res], "runs": len(res), "last_add": info}


def run_container(fw: Any, ctr: Any) -> None:
    """Docker's ``docker run`` of ``ctr`` on the kept model (what watch replays for a start event)."""
    fw.add_containers(synthetic.with_container(fw.sc, ctr), [ctr])


def bench_add_long_running(n: int, ns: str, adds: int) -> dict[str, Any]:
    from nftdocker.apply.applier import IncrementalApplier

    flush_ns(ns)
    sc = synthetic.host(n, M, K)
    with IncrementalApplier(ns) as ap:
        t = time.perf_counter()
        ap.load(sc)
        load_s = time.perf_counter() - t
        stats = []
        for i in range(adds):
            ctr = synthetic.new_container(ap.scenario, i + 1, network=f"net{i % n}")
            stats.append(ap.replay(lambda fw: run_container(fw, ctr)))
    modes = sorted({s.mode for s in stats})
    return {"load": load_s, "add_one": med([s.seconds for s in stats]), "kernel": med([s.kernel_seconds for s in stats]),
            "python": med([s.seconds - s.kernel_seconds for s in stats]), "commands": med([s.commands for s in stats]),
            "modes": modes, "runs": len(stats)}


def bench_replay_only(n: int, adds: int) -> float:
    """The long-running path's own work for one added container (Docker's calls replayed on the kept
    model, no kernel): median seconds per container."""
    from nftdocker.docker.record import RecordingFirewall

    sc = synthetic.host(n, M, K)
    fw = RecordingFirewall(sc)
    fw.run()
    ctrs = [synthetic.new_container(sc, i + 1, network=f"net{(7 * i) % n}") for i in range(adds)]
    plus = synthetic.dataclasses.replace(sc, containers=sc.containers + tuple(ctrs))
    times = []
    for c in ctrs:
        t = time.perf_counter()
        with fw.recording():
            fw.add_containers(plus, [c])
        times.append(time.perf_counter() - t)
    return med(times)


KERNEL_CASES = [  # (label, chain, rule): what one commit of one rule costs the kernel
    ("counter, small chain", "small", "counter"),
    ("accept, small chain", "small", "accept"),
    ("counter, big chain", "big", "counter"),
    ("accept, big chain", "big", "accept"),
]


def bench_kernel_commit(ns: str, rules: int, reps: int = 15) -> dict[str, float]:
    """One rule added to a table of ``rules`` rules, by what it holds and where it goes.

    The table: a base chain jumping to ``big`` (``rules`` Docker-like rules), and ``small``
    (empty, not reachable). A verdict (``accept``) makes Linux validate every rule reachable from
    a base chain at commit; any rule added to a chain makes it rebuild that chain's rule blob.
    """
    import nftables  # type: ignore[import-not-found]

    from nftdocker.nft.netns import netns

    flush_ns(ns)
    out: dict[str, float] = {}
    with netns(ns):
        ctx = nftables.Nftables()

        def run(cmd: str) -> None:
            rc, _, err = ctx.cmd(cmd)
            if rc:
                raise RuntimeError(err)

        lines = ["table ip bench {", "chain fw { type filter hook forward priority 0; policy accept; jump big; }", "chain big {"]
        lines += [f'iifname "br{i}" oifname != "br{i}" accept' for i in range(rules)]
        lines += ["}", "chain small { }", "}"]
        run("\n".join(lines))
        for label, chain, what in KERNEL_CASES:
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                run(f"add rule ip bench {chain} {what}")
                times.append(time.perf_counter() - t)
            out[label] = med(times)
        run("delete table ip bench")
    return out


# ---------------------------------------------------------------------- comparing and translating


def bench_ir(n: int, runs: int, budget: float) -> dict[str, Any]:
    """Two equal hosts of ``n`` networks (generated apart, so every rule is compared), compared and
    translated to iptables-save: on the IR (``Ruleset`` equality, ``compat_of``), and through their
    JSON rendering (``render_json_objects`` of both compared; ``compat_text`` of one's rendering), the
    way watch, export and compat did it before. Caches are cleared before each run, as in a fresh
    ``nftdocker compat``."""
    from nftdocker.compat import translate
    from nftdocker.docker.generate import generate
    from nftdocker.nft import render

    a, b = generate(synthetic.host(n, M, K)), generate(synthetic.host(n, M, K))

    def cold() -> None:
        for f in (translate.match_args, translate.action_args, render.nft_ifname):
            f.cache_clear()

    ways: dict[str, Callable[[], Any]] = {
        "compare_json": lambda: render.render_json_objects(a.rulesets) == render.render_json_objects(b.rulesets),
        "compare_ir": lambda: a.rulesets == b.rulesets,
        "translate_json": lambda: translate.compat_text(render.render_json_objects(a.rulesets), "ip"),
        "translate_ir": lambda: translate.compat_of(a, "ip"),
    }
    if not (ways["compare_json"]() and ways["compare_ir"]() and ways["translate_json"]() == ways["translate_ir"]()):
        raise RuntimeError("the IR and JSON ways disagree")

    def one(fn: Callable[[], Any]) -> tuple[float, float]:
        cold()
        c, t = cpu_self(), time.perf_counter()
        fn()
        return time.perf_counter() - t, cpu_self() - c

    out: dict[str, Any] = {"n": n, "rules": sum(len(c.rules) for rs in a.rulesets.values() for c in rs.chains.values())}
    for name, fn in ways.items():
        got = runs_of(lambda: one(fn), runs, budget)
        out[name] = med([w for w, _ in got])
        out[name + "_cpu"] = med([c for _, c in got])
        out["runs"] = len(got)
    for what in ("compare", "translate"):
        out[f"ratio_{what}"] = out[f"{what}_json"] / out[f"{what}_ir"]
        out[f"ratio_{what}_cpu"] = out[f"{what}_json_cpu"] / out[f"{what}_ir_cpu"]
    return out


# ---------------------------------------------------------------------- Docker's way

REPLAY_CHILD = r"""
import json, subprocess, sys, time
cmds = json.load(open(sys.argv[1]))
t = time.perf_counter()
for c in cmds:
    r = subprocess.run(c, capture_output=True)
    if r.returncode:
        sys.exit(f"{' '.join(c)}: {r.stderr.decode()[:300]}")
print(time.perf_counter() - t)
"""


def docker_calls(save_text: str, tool: str) -> tuple[list[list[str]], list[tuple[str, list[str]]]]:
    """iptables-save text -> one iptables call per chain, policy and rule (Docker's -N, -P, -A)."""
    import shlex

    calls: list[list[str]] = []
    structure: list[tuple[str, list[str]]] = []  # (table, line) for building restore prefixes
    table = ""
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if policy == "-":
                calls.append([tool, "-t", table, "-N", name])
                structure.append((table, [f":{name} - [0:0]"]))
            elif policy != "ACCEPT":
                calls.append([tool, "-t", table, "-P", name, policy])
                structure.append((table, [f":{name} {policy} [0:0]"]))
        elif line.startswith("-A "):
            calls.append([tool, "-t", table] + shlex.split(line))
            structure.append((table, [line]))
    return calls, structure


def restore_text(structure: list[tuple[str, list[str]]], upto: int) -> str:
    tables: dict[str, list[str]] = {}
    for table, lines in structure[:upto]:
        tables.setdefault(table, []).extend(lines)
    out = []
    for t, lines in tables.items():
        out.append(f"*{t}")
        out += [l for l in lines if l.startswith(":")] + [l for l in lines if not l.startswith(":")]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def replay(ns: str, tmp: Path, calls: list[list[str]]) -> float:
    f = tmp / "calls.json"
    f.write_text(json.dumps(calls))
    _, _, r = timed(["ip", "netns", "exec", ns, PY, "-c", REPLAY_CHILD, str(f)])
    return float(r.stdout.strip())


def bench_docker(n: int, ns: str, tmp: Path, full_limit: int, sample: int) -> dict[str, Any]:
    from nftdocker.compat.translate import save_text
    from nftdocker.docker.generate import generate

    gen = generate(synthetic.host(n, M, K))
    out: dict[str, Any] = {"tool": "iptables-legacy / ip6tables-legacy (x_tables)", "families": {}}
    total_est = 0.0
    restore_total = 0.0
    for fam, tool, restore in (("ip", "iptables-legacy", "iptables-legacy-restore"),
                               ("ip6", "ip6tables-legacy", "ip6tables-legacy-restore")):
        if fam not in gen.families():
            continue
        text = save_text(gen.rulesets[fam])
        calls, structure = docker_calls(text, tool)
        flush_ns(ns, legacy=True)
        rs, _, _ = timed(["ip", "netns", "exec", ns, restore], input=text)
        restore_total += rs
        flush_ns(ns, legacy=True)
        if len(calls) <= full_limit:
            t = replay(ns, tmp, calls)
            fam_out = {"calls": len(calls), "replay": t, "per_call": t / len(calls), "sampled": False, "restore": rs}
        else:
            levels = [0.0, 0.25, 0.5, 0.75, 0.95]
            per_call = []
            for lv in levels:
                flush_ns(ns, legacy=True)
                upto = int(lv * len(calls))  # a prefix of the calls: every chain a later rule uses is in it
                if upto:
                    timed(["ip", "netns", "exec", ns, restore], input=restore_text(structure, upto))
                chunk = calls[upto:upto + sample]
                per_call.append(replay(ns, tmp, chunk) / len(chunk))
            mean = sum((a + b) / 2 * (y - x) for a, b, x, y in zip(per_call, per_call[1:], levels, levels[1:])) / (levels[-1] - levels[0])
            t = mean * len(calls)
            fam_out = {"calls": len(calls), "replay": t, "per_call_by_fill": dict(zip([f"{int(l * 100)}%" for l in levels], per_call)),
                       "sampled": True, "sample_calls_per_level": sample, "restore": rs}
        out["families"][fam] = fam_out
        total_est += fam_out["replay"]
    flush_ns(ns, legacy=True)
    out["replay"] = total_est
    out["restore"] = restore_total
    out["calls"] = sum(f["calls"] for f in out["families"].values())
    out["sampled"] = any(f["sampled"] for f in out["families"].values())
    return out


# ---------------------------------------------------------------------- report


def environment() -> dict[str, Any]:
    nft_v = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "kernel": platform.release(), "nft": nft_v, "python": platform.python_version(), "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    sizes = sorted(int(n) for n in res["sizes"])
    big, small = str(sizes[-1]), str(sizes[0])
    s = res["sizes"]
    out = []

    def t(name: str, value: float, limit: float, op: str, unit: str = "") -> None:
        ok = value <= limit if op == "<=" else value >= limit
        out.append({"target": name, "value": value, "limit": f"{op} {limit:g}{unit}", "met": ok})

    if "render" in s[big]:
        t(f"render N={big} (load+generate+render)", s[big]["render"]["total"], 1.0, "<=", " s")
        t("  the same, CPU time", s[big]["render"]["cpu"], 1.0, "<=", " s")
    if "apply" in s[big]:
        t(f"fresh apply / nft -f, N={big}", s[big]["apply"]["ratio_apply_to_nft_f"], 1.3, "<=")
        t("  the same, CPU time", s[big]["apply"]["ratio_apply_to_nft_f_cpu"], 1.3, "<=")
    if "add_process" in s[big]:
        t(f"add one container / fresh apply, process to process, N={big}", s[big]["add_process"]["ratio_add_to_fresh"], 0.5, "<=")
        t("  the same, CPU time", s[big]["add_process"]["ratio_add_to_fresh_cpu"], 0.5, "<=")
    if "apply" in s[big]:
        t(f"  the same, the apply step only (in-process, generation excluded), N={big}", s[big]["apply"]["ratio_add_to_fresh_apply_step"], 0.5, "<=")
    if "add_long_running" in s[big] and "add_long_running" in s[small]:
        t(f"long-running add one: N={big} / N={small}",
          s[big]["add_long_running"]["add_one"] / s[small]["add_long_running"]["add_one"], 1.5, "<=")
        t(f"  the same, Python part only (total minus libnftables+kernel): N={big} / N={small}",
          s[big]["add_long_running"]["python"] / s[small]["add_long_running"]["python"], 1.5, "<=")
        t(f"  the same, the replay alone (Docker's calls on the kept model, no kernel): N={big} / N={small}",
          s[big]["add_long_running"]["replay_only"] / s[small]["add_long_running"]["replay_only"], 1.5, "<=")
    if "kernel_commit" in s[big] and "kernel_commit" in s[small]:
        kb, ks = s[big]["kernel_commit"], s[small]["kernel_commit"]
        t(f"  the kernel alone, one accept rule into a big chain (as Docker's rules go): {s[big]['render']['rules']} / "
          f"{s[small]['render']['rules']} rules", kb["accept, big chain"] / ks["accept, big chain"], 1.5, "<=")
    if "docker" in s[big] and "apply" in s[big]:
        t(f"iptables replay / nftdocker fresh apply, N={big}", s[big]["docker"]["replay"] / s[big]["apply"]["apply"], 100, ">=")
    if "ir" in res:
        ir = res["ir"]
        for what, how in (("compare", "comparing two hosts"), ("translate", "translating a host to iptables-save")):
            t(f"{how}, N={ir['n']}: through JSON / on the IR", ir[f"ratio_{what}"], 10, ">=")
            t("  the same, CPU time", ir[f"ratio_{what}_cpu"], 10, ">=")
    return out


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.1f} ms"
    return f"{x * 1e6:.0f} µs"


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    L = [
        "# nftdocker benchmarks",
        "",
        f"Written by `benchmarks/run.py{' --quick' if res['quick'] else ''}` on {env['when']}: Linux {env['kernel']}, "
        f"{env['nft']}, Python {env['python']}, {env['cpus']} CPUs, load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}. Synthetic hosts: N networks x {M} containers x {K} published "
        f"ports (benchmarks/synthetic.py). Medians of the runs shown; ratios between figures of the same run. "
        f"The machine is shared: where the load average is high, wall "
        f"times are noisy, and the CPU time (user + system, the kernel's work for the process included) is the steadier figure.",
        "",
        "![costs against N](costs.png)",
        "",
        "## Targets",
        "",
        "| target | measured | limit | met |",
        "|---|---|---|---|",
    ]
    for t in res["targets"]:
        v = t["value"]
        shown = fmt(v) if t["limit"].endswith(" s") else f"{v:.2f}"
        L.append(f"| {t['target']} | {shown} | {t['limit']} | {'yes' if t['met'] else '**no**'} |")
    L += ["", "## Figures", "",
          "| N | rules | render (load + generate + text) | peak RSS | fresh apply | nft -f | apply --replace (full path) | "
          "fresh apply, process | add one, process | add one, apply step | add one, long-running (of which libnftables+kernel) | "
          "iptables replay | iptables-legacy-restore |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in sorted(res["sizes"], key=int):
        s = res["sizes"][n]
        r, a, p, lr, d = (s.get(k, {}) for k in ("render", "apply", "add_process", "add_long_running", "docker"))
        cell = lambda d, k: fmt(d[k]) if k in d else "–"  # noqa: E731
        L.append(
            f"| {n} | {r.get('rules', '–')} | {cell(r, 'total')} (load {cell(r, 'load')}, generate {cell(r, 'generate')}, text {cell(r, 'render_text')}; {r.get('runs', 0)} runs) "
            f"| {r.get('peak_rss_mib', 0):.0f} MiB | {cell(a, 'apply')} | {cell(a, 'nft_f')} | {cell(a, 'kernel_apply')} | {cell(p, 'fresh')} | {cell(p, 'add_one')} | {cell(a, 'add_one_apply_step')} "
            f"| {cell(lr, 'add_one')} ({cell(lr, 'kernel')}; {lr.get('commands', '–')} commands) "
            f"| {cell(d, 'replay')}{' (sampled)' if d.get('sampled') else ''} ({d.get('calls', '–')} calls) | {cell(d, 'restore')} |")
    if any("kernel_commit" in s for s in res["sizes"].values()):
        L += ["", "## What one commit costs the kernel", "",
              "One rule added (libnftables `cmd`, parse included) to a table holding a base chain that jumps to `big` "
              "(as many Docker-like rules as the host of that N has), and `small` (empty, unreachable). "
              "Linux 6.x validates every rule reachable from a base chain at a commit that adds a verdict, NAT or jump "
              "(nf_tables_validate), and rebuilds the rule blob of each chain a commit touches "
              "(nf_tables_commit_chain_prepare); every rule Docker adds for a container has a verdict or a NAT "
              "statement, into chains (raw PREROUTING, nat DOCKER, filter DOCKER) that grow with the host.", "",
              "| rules | " + " | ".join(lbl for lbl, _, _ in KERNEL_CASES) + " |",
              "|---|" + "---|" * len(KERNEL_CASES)]
        for n in sorted(res["sizes"], key=int):
            kc = res["sizes"][n].get("kernel_commit")
            if kc:
                L.append(f"| {res['sizes'][n]['render']['rules']} | " + " | ".join(fmt(kc[lbl]) for lbl, _, _ in KERNEL_CASES) + " |")
    if "ir" in res:
        ir = res["ir"]
        L += ["", f"## Comparing and translating a host (N={ir['n']}, {ir['rules']} rules)", "",
              "`watch` and `export` compare two hosts' rulesets as IR; `compat` translates the IR to iptables-save. "
              "Before, both went through the hosts' libnftables JSON rendering (both rendered and compared; one "
              "rendered and parsed back): that way is measured beside, in the same run. Medians of "
              f"{ir['runs']} runs, caches cleared before each.", "",
              "| | through JSON (before) | on the IR (now) | ratio (wall, CPU) |", "|---|---|---|---|"]
        for what, how in (("compare", "compare two hosts"), ("translate", "translate one to iptables-save")):
            L.append(f"| {how} | {fmt(ir[what + '_json'])} | {fmt(ir[what + '_ir'])} | "
                     f"{ir['ratio_' + what]:.0f}x, {ir['ratio_' + what + '_cpu']:.0f}x |")
    L += ["", "## Notes", ""]
    L += [f"- {x}" for x in res["notes"]]
    return "\n".join(L) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(res["sizes"], key=int)
    xs = [int(n) for n in ns]
    series = [
        ("render (load+generate+text)", lambda s: s.get("render", {}).get("total")),
        ("fresh apply (nftdocker)", lambda s: s.get("apply", {}).get("apply")),
        ("nft -f, same text", lambda s: s.get("apply", {}).get("nft_f")),
        ("fresh apply, process to process", lambda s: s.get("add_process", {}).get("fresh")),
        ("add one container, process to process", lambda s: s.get("add_process", {}).get("add_one")),
        ("add one container, apply step (in-process)", lambda s: s.get("apply", {}).get("add_one_apply_step")),
        ("add one container, long-running path", lambda s: s.get("add_long_running", {}).get("add_one")),
        ("  of which libnftables + kernel", lambda s: s.get("add_long_running", {}).get("kernel")),
        ("Docker: one iptables-legacy call per rule", lambda s: s.get("docker", {}).get("replay")),
        ("Docker: iptables-legacy-restore", lambda s: s.get("docker", {}).get("restore")),
    ]
    fig, ax = plt.subplots(figsize=(9, 6))
    for label, get in series:
        pts = [(x, get(res["sizes"][n])) for x, n in zip(xs, ns)]
        pts = [(x, y) for x, y in pts if y]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                    linestyle=":" if label.startswith("  ") else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"N networks (x {M} containers x {K} published ports)")
    ax.set_ylabel("seconds (median)")
    ax.set_title("nftdocker costs against the size of the host")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 10, 100 and 3 runs: a smoke run in about a minute or two")
    p.add_argument("--sizes", help="comma-separated N (default 10,100,1000)")
    p.add_argument("--runs", type=int, help="runs per measurement (default 5; --quick 3)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per measurement before fewer runs are taken")
    p.add_argument("--adds", type=int, default=20, help="containers added through the long-running path")
    p.add_argument("--replay-full", type=int, default=600, help="replay every call up to this many, else sample")
    p.add_argument("--replay-sample", type=int, default=20, help="calls timed per fill level when sampling")
    p.add_argument("--ir-size", type=int, default=300, help="N of the hosts compared and translated (once)")
    p.add_argument("--out", default=str(HERE), help="directory for results.json, results.md, costs.png")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/run.py: run as root (it makes network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(x) for x in (args.sizes or ("10,100" if args.quick else "10,100,1000")).split(",")]
    runs = args.runs or (3 if args.quick else 5)
    budget = 20.0 if args.quick else args.budget
    out = Path(args.out)
    res: dict[str, Any] = {"quick": args.quick, "environment": environment(), "M": M, "K": K, "runs": runs, "sizes": {}, "notes": []}
    ns = make_ns()
    ns_docker = make_ns()  # x_tables only: the nftables figures are taken where no legacy table is registered
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nftdocker-bench-") as td:
        tmp = Path(td)
        for n in sizes:
            s: dict[str, Any] = res["sizes"].setdefault(str(n), {})
            base, _ = scenario_files(tmp, n)
            print(f"N={n}: render", file=sys.stderr, flush=True)
            s["render"] = bench_render(base, runs, budget)
            print(f"N={n}: apply", file=sys.stderr, flush=True)
            s["apply"] = bench_apply(n, ns, tmp, runs, budget)
            print(f"N={n}: add one, process to process", file=sys.stderr, flush=True)
            s["add_process"] = bench_add_process(n, ns, tmp, runs, budget * 2)
            print(f"N={n}: add one, long-running", file=sys.stderr, flush=True)
            s["add_long_running"] = bench_add_long_running(n, ns, args.adds)
            s["add_long_running"]["replay_only"] = bench_replay_only(n, max(args.adds, 50))
            s["kernel_commit"] = bench_kernel_commit(ns, s["render"]["rules"])
            print(f"N={n}: Docker's way", file=sys.stderr, flush=True)
            s["docker"] = bench_docker(n, ns_docker, tmp, args.replay_full, args.replay_sample)
    print(f"N={args.ir_size}: comparing and translating", file=sys.stderr, flush=True)
    res["ir"] = bench_ir(args.ir_size, runs, budget)
    res["seconds"] = time.monotonic() - t_all
    res["targets"] = targets(res)
    res["notes"] = [
        "fresh apply: `apply.engine.apply` on an empty namespace (the generated table is given; generation is under render). "
        "nft -f: `ip netns exec NS nft -f FILE` of `render_nft` of the same host, so it includes starting nft (a few ms).",
        "add one, process to process: " + (res["sizes"][str(sizes[-1])]["add_process"]["entry"]) +
        " HOST.toml, then the same with one more container (one published port); both include starting Python and "
        "loading the scenario. The fresh apply generates the host; the change reads the table's view and the generation "
        "checkpoint stored by the previous apply (valid while the ruleset generation, the namespace and the table's "
        "handle are unchanged) and, the host being the same with one container appended, replays only that "
        "container's Docker calls on it (nftdocker/docker/checkpoint.py, sent by nftdocker/apply/replay.py); else it generates the host and diffs.",
        "add one, long-running: `IncrementalApplier.replay` of Docker's run of one container on a loaded host (watch's path): "
        "its calls replayed on the kept model, sent as one transaction (nftdocker/apply/replay.py, as apply's resume); handles learnt from the kernel's notifications. "
        "The replay alone stays flat; the libnftables+kernel part grows with the chains the rules go into "
        "(see 'What one commit costs the kernel'), and with one table whose chains mirror Docker's one for one, "
        "without sets or maps, those chains hold a rule per published port.",
        "Docker's way: " + ("sampled above --replay-full calls (see module docstring); " if any(
            res["sizes"][str(n)]["docker"]["sampled"] for n in sizes) else "") +
        "one exec per call from a process already inside the namespace; Docker itself also runs `-C` before each `-A`/`-I`, "
        "which this replay leaves out (so Docker's real cost is higher).",
        f"whole run: {res['seconds']:.0f} s.",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "results.md").write_text(markdown(res))
    plot(res, out / "costs.png")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
