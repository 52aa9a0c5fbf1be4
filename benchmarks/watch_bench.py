#!/usr/bin/env python3
"""``nftdocker watch`` against a real dockerd, one command (root):

    sudo .venv/bin/python benchmarks/watch_bench.py [--sizes 10,100] [--samples 5] [--burst 100]

Starts a private dockerd in a network namespace of its own (tests/dockerd.py ``TestDaemon``,
``--userland-proxy=false``, iptables off), creates 10 user networks and runs the watcher as users
run it: ``python -m nftdocker watch --docker-host unix://PROXY --netns NS --daemon-config CFG``, a
process of its own. PROXY is a counting unix socket in front of the daemon's socket: every HTTP
request the watcher makes passes through it and is recorded (time, method, path); the docker CLI
used by the benchmark talks to the daemon's own socket and is not counted.

The kernel is watched by ``nft -a monitor rules`` inside the namespace (a netlink notification per
rule added or deleted, timestamped when read): no polling of the table.

Per N (containers running, busybox ``sleep 3600``, 3 published TCP ports each, spread over the
networks), --samples times:

run     time from ``docker run -d`` returning until the container's 3 DNAT rules in
        ``nat-DOCKER`` are in the kernel (negative: they were there before the CLI returned)
rm      the same for ``docker rm -f`` (the 3 rules gone)
api     the watcher's requests between ``docker run`` starting and its rules being in (start), and
        between ``docker rm -f`` starting and its rules being gone plus 0.5 s (removal)

At the first N above 100 (or the largest N) base: a burst of --burst parallel ``docker run``s; the
time from the last one returning until the table last changed, and the check that it then equals
a fresh full apply of the daemon's state (``nftdocker compat --docker-host`` against
``nftdocker show --netns NS --format iptables``). The watcher's RSS (VmRSS, VmHWM) at each N, and
the full re-syncs it logged (lines ``sync (...)`` other than the first).

Writes benchmarks/watch-results.json and benchmarks/watch-results.md.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from dockerd import IMAGE, TestDaemon  # noqa: E402

PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
NETWORKS = 10
PORTS = 3
TABLE = "nftdocker"
WAIT = 20.0  # seconds a single rule change may take before the sample counts as lost


# ---------------------------------------------------------------------- counting proxy

class CountingProxy:
    """A unix socket that forwards to the daemon's socket and records each HTTP request line."""

    _REQ = re.compile(rb"(GET|POST|PUT|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")

    def __init__(self, upstream: str, path: str) -> None:
        self.upstream, self.path = upstream, path
        self.requests: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(path)
        self._srv.listen(64)
        threading.Thread(target=self._accept, daemon=True, name="proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                u.connect(self.upstream)
            except OSError:
                c.close()
                continue
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        carry = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if count:
                    buf = carry + data
                    now = time.monotonic()
                    for m in self._REQ.finditer(buf):
                        with self._lock:
                            self.requests.append((now, m.group(1).decode(), m.group(2).decode(errors="replace")))
                    carry = buf[-200:] if not buf.endswith(b"\r\n\r\n") else b""
                    if self._REQ.search(carry):  # already counted
                        carry = b""
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def between(self, t0: float, t1: float) -> list[tuple[str, str]]:
        with self._lock:
            return [(m, p) for t, m, p in self.requests if t0 <= t <= t1 and "/events" not in p]

    def close(self) -> None:
        self._srv.close()


# ---------------------------------------------------------------------- kernel notifications

class RuleMonitor:
    """``nft -a monitor rules`` in the namespace: the DNAT rules by host port, with times."""

    _ADD = re.compile(r"^add rule ip nftdocker nat-DOCKER .*dport (\d+) .*# handle (\d+)")
    _DEL = re.compile(r"^delete rule ip nftdocker nat-DOCKER handle (\d+)")

    def __init__(self, netns_path: str) -> None:
        self.proc = subprocess.Popen(["nsenter", f"--net={netns_path}", "nft", "-a", "monitor", "rules"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.cond = threading.Condition()
        self.added: dict[int, float] = {}    # host port -> time its DNAT rule appeared
        self.removed: dict[int, float] = {}  # host port -> time its DNAT rule went
        self.handle_port: dict[int, int] = {}
        self.last_change = 0.0
        self.changes = 0
        threading.Thread(target=self._read, daemon=True, name="monitor").start()
        time.sleep(0.3)  # let it subscribe

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            with self.cond:
                if "rule ip" in line and f" {TABLE} " in line:
                    self.last_change, self.changes = now, self.changes + 1
                m = self._ADD.match(line)
                if m:
                    port, h = int(m.group(1)), int(m.group(2))
                    self.handle_port[h] = port
                    self.added[port] = now
                    self.removed.pop(port, None)
                m = self._DEL.match(line)
                if m and int(m.group(1)) in self.handle_port:
                    self.removed[self.handle_port.pop(int(m.group(1)))] = now
                self.cond.notify_all()

    def wait(self, ports: list[int], gone: bool, timeout: float = WAIT) -> float | None:
        """The time the last of ports appeared (or went), or None after timeout."""
        table = self.removed if gone else self.added
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(p in table for p in ports):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return max(table[p] for p in ports)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------- the daemon's events

class EventClock:
    """The daemon's container events as the benchmark receives them (its own stream, on the daemon's
    socket, not counted): when each container's start and die arrived, to split the latency."""

    def __init__(self, host: str) -> None:
        import docker

        self.client = docker.APIClient(base_url=host, version="auto", timeout=None)
        self.seen: dict[tuple[str, str], float] = {}
        self.cond = threading.Condition()
        self._stream = self.client.events(decode=True, filters={"type": ["container"], "event": ["start", "die"]})
        threading.Thread(target=self._read, daemon=True, name="events").start()

    def _read(self) -> None:
        try:
            for ev in self._stream:
                name = ((ev.get("Actor") or {}).get("Attributes") or {}).get("name", "")
                with self.cond:
                    self.seen[(name, ev.get("Action") or ev.get("status"))] = time.monotonic()
                    self.cond.notify_all()
        except Exception:  # noqa: BLE001 - closed at the end
            pass

    def at(self, name: str, action: str, timeout: float = 5.0) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while (name, action) not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[(name, action)]

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception:  # noqa: BLE001
            pass


# ---------------------------------------------------------------------- the watcher process

class WatchProcess:
    def __init__(self, d: TestDaemon, proxy_path: str, cfg: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([PY, "-m", "nftdocker", "watch", "--docker-host", f"unix://{proxy_path}",
                                      "--netns", d.netns, "--daemon-config", cfg],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def syncs(self) -> list[str]:
        return [l for l in self.lines() if re.match(r"\S+ sync \(", l)]

    def wait_sync(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.syncs():
            if self.proc.poll() is not None:
                raise RuntimeError("watch exited:\n" + "\n".join(self.lines()[-20:]))
            if time.monotonic() > deadline:
                raise RuntimeError("watch did not sync within %g s" % timeout)
            time.sleep(0.1)

    def rss(self) -> dict[str, float]:
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
        return out

    def cpu(self) -> float:
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# ---------------------------------------------------------------------- helpers

def run_args(name: str, net: str, base_port: int) -> list[str]:
    args = ["run", "-d", "--name", name, "--network", net]
    for k in range(PORTS):
        args += ["-p", f"{base_port + k}:{80 + k}"]
    return args + [IMAGE, "sleep", "3600"]


def ports_of(base_port: int) -> list[int]:
    return [base_port + k for k in range(PORTS)]


def fill(d: TestDaemon, start: int, stop: int, parallel: int) -> None:
    """Containers c<start>..c<stop-1>, round-robin over the networks, host ports 20000 + 3 i."""
    def one(i: int) -> None:
        d.docker(*run_args(f"c{i}", f"net{i % NETWORKS}", 20000 + PORTS * i), timeout=120)

    with ThreadPoolExecutor(parallel) as ex:
        list(ex.map(one, range(start, stop)))


def remove_all(d: TestDaemon) -> None:
    """Remove the containers in chunks (bounded), so that the daemon's own cleanup finds few left."""
    from dockerd import DaemonError

    def rm(ids: list[str]) -> None:
        try:
            d.docker("rm", "-f", *ids, check=False, timeout=120)
        except DaemonError as e:  # the daemon's own cleanup kills what is left
            print(e, file=sys.stderr)

    try:
        ids = d.docker("ps", "-aq", check=False, timeout=60).stdout.split()
    except DaemonError:
        return
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(rm, [ids[i:i + 50] for i in range(0, len(ids), 50)]))


def api_summary(reqs: list[tuple[str, str]]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for m, p in reqs:
        key = f"{m} " + re.sub(r"/v[\d.]+", "", re.sub(r"/[0-9a-f]{12,}", "/ID", p.split("?")[0]))
        kinds[key] = kinds.get(key, 0) + 1
    return {"calls": len(reqs), "by_path": kinds}


def measure(d: TestDaemon, mon: RuleMonitor, proxy: CountingProxy, clock: EventClock, w: "WatchProcess",
            n: int, samples: int, tag: int) -> dict[str, Any]:
    run_ms, rm_ms, run_api, rm_api, lost = [], [], [], [], 0
    start_ev_ms, die_ev_ms, logged_run, logged_rm = [], [], [], []
    for s in range(samples):
        base = 40000 + 100 * tag + PORTS * s
        name = f"probe{tag}-{s}"
        time.sleep(0.5)  # quiet: nothing of the previous sample still in flight
        t_start = time.monotonic()
        d.docker(*run_args(name, f"net{s % NETWORKS}", base), timeout=60)
        t_ret = time.monotonic()
        t_in = mon.wait(ports_of(base), gone=False)
        if t_in is None:
            lost += 1
            d.docker("rm", "-f", name, check=False)
            continue
        run_ms.append((t_in - t_ret) * 1000)
        t_ev = clock.at(name, "start")
        if t_ev is not None:
            start_ev_ms.append((t_in - t_ev) * 1000)
        run_api.append(api_summary(proxy.between(t_start, max(t_in, t_ret))))
        time.sleep(0.5)
        t_start = time.monotonic()
        d.docker("rm", "-f", name, timeout=60)
        t_ret = time.monotonic()
        t_out = mon.wait(ports_of(base), gone=True)
        if t_out is None:
            lost += 1
            continue
        rm_ms.append((t_out - t_ret) * 1000)
        t_ev = clock.at(name, "die")
        if t_ev is not None:
            die_ev_ms.append((t_out - t_ev) * 1000)
        time.sleep(0.5)
        rm_api.append(api_summary(proxy.between(t_start, time.monotonic())))
        for line in w.lines()[-40:]:
            m = re.search(r"container (start|die) " + re.escape(name) + r": .*\((\d+) ms\)", line)
            if m:
                (logged_run if m.group(1) == "start" else logged_rm).append(float(m.group(2)))
    return {"n": n, "run_ms": run_ms, "rm_ms": rm_ms, "run_median_ms": med(run_ms), "rm_median_ms": med(rm_ms),
            "start_event_to_kernel_ms": start_ev_ms, "die_event_to_kernel_ms": die_ev_ms,
            "start_event_median_ms": med(start_ev_ms), "die_event_median_ms": med(die_ev_ms),
            "watch_logged_start_ms": logged_run, "watch_logged_die_ms": logged_rm,
            "run_api": run_api, "rm_api": rm_api, "lost": lost}


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def compat_equal(d: TestDaemon, cfg: str, save: Path | None = None) -> tuple[bool, float]:
    """nftdocker compat --docker-host (a fresh generation) vs the live table's compat; and the seconds it took."""
    t0 = time.monotonic()
    cli = [PY, "-m", "nftdocker"]
    want = subprocess.run(cli + ["compat", "--docker-host", d.host, "--daemon-config", cfg],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    got = subprocess.run(cli + ["show", "--netns", d.netns, "--format", "iptables"],
                         capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    if want.returncode or got.returncode:
        raise RuntimeError(f"compat exit {want.returncode}: {want.stderr[-300:]}; show exit {got.returncode}: {got.stderr[-300:]}")
    equal = want.stdout == got.stdout and bool(want.stdout.strip())
    if not equal and save is not None:
        save.with_suffix(".want").write_text(want.stdout)
        save.with_suffix(".got").write_text(got.stdout)
    return equal, time.monotonic() - t0


def same_lines(save: Path) -> bool:
    """Do the saved fresh and live compat texts hold the same lines, in another order?"""
    return sorted(save.with_suffix(".want").read_text().splitlines()) == sorted(save.with_suffix(".got").read_text().splitlines())


def burst(d: TestDaemon, mon: RuleMonitor, proxy: CountingProxy, cfg: str, count: int, parallel: int,
          save: Path) -> dict[str, Any]:
    def one(i: int) -> float:
        d.docker(*run_args(f"burst{i}", f"net{i % NETWORKS}", 50000 + PORTS * i), timeout=300)
        return time.monotonic()

    ports = [p for i in range(count) for p in ports_of(50000 + PORTS * i)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(parallel) as ex:
        returned = list(ex.map(one, range(count)))
    last = max(returned)
    t_all = mon.wait(ports, gone=False, timeout=60)
    # Converged when the table equals a fresh full apply; the time is the table's last change.
    checks, equal = 0, False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        checks += 1
        equal, _ = compat_equal(d, cfg, save)
        with mon.cond:
            quiet = time.monotonic() - mon.last_change
        if equal or (checks >= 3 and quiet > 5):  # equal, or the table has stopped changing
            break
        time.sleep(0.2)
    with mon.cond:
        last_change = mon.last_change
    order_only = None if equal else same_lines(save)
    full = [] if equal else list(difflib.unified_diff(save.with_suffix(".want").read_text().splitlines(),
                                                      save.with_suffix(".got").read_text().splitlines(), lineterm="", n=0))
    moved = sum(1 for l in full if l.startswith("+") and not l.startswith("+++"))
    diff = [] if equal else list(difflib.unified_diff(save.with_suffix(".want").read_text().splitlines(),
                                                      save.with_suffix(".got").read_text().splitlines(),
                                                      "fresh full apply", "live table", lineterm="", n=1))[:60]
    return {"count": count, "parallel": parallel, "runs_s": last - t0, "all_dnat_in_ms": None if t_all is None else (t_all - last) * 1000,
            "last_change_after_last_run_ms": (last_change - last) * 1000, "equal": equal, "order_only": order_only, "moved_rules": moved, "diff": diff, "checks": checks,
            "api": api_summary(proxy.between(t0, time.monotonic()))}


# ---------------------------------------------------------------------- report

def fmt(x: float | None, unit: str = "ms") -> str:
    return "-" if x is None else f"{x:.1f} {unit}"


def markdown(res: dict[str, Any]) -> str:
    L = ["# watch benchmark", "",
         f"`benchmarks/watch_bench.py` on {res['machine']}, {res['date']}; dockerd {res['dockerd']} in its own network "
         f"namespace (`--userland-proxy=false`, iptables off), {NETWORKS} user networks, busybox `sleep 3600` "
         f"containers with {PORTS} published TCP ports each; `nftdocker watch` as its own process. "
         "Latency: from the docker CLI returning until `nft monitor` in the namespace reported the container's "
         "DNAT rules added (run) or deleted (rm); negative means the kernel had them before the CLI returned. "
         "API calls: the HTTP requests the watcher made through a counting proxy socket in front of the daemon's "
         "(the event stream itself not counted).", ""]
    L += ["| N | start event to kernel | die event to kernel | watch's own log, start / die |", "|---|---|---|---|"]
    for m in res["sizes"]:
        L.append(f"| {m['n']} | {fmt(m['start_event_median_ms'])} | {fmt(m['die_event_median_ms'])} | "
                 f"{fmt(med(m['watch_logged_start_ms']))} / {fmt(med(m['watch_logged_die_ms']))} |")
    L += ["", "(medians; the event times are when the benchmark's own event stream delivered the daemon's "
          "`start`/`die`; watch's log times run from its receiving the batch's first event to the kernel's commit)", ""]
    L += ["| N | run median | run samples | rm median | rm samples | API calls, start | API calls, rm | watch RSS (peak) |",
          "|---|---|---|---|---|---|---|---|"]
    for m in res["sizes"]:
        ra = sorted({a["calls"] for a in m["run_api"]})
        rma = sorted({a["calls"] for a in m["rm_api"]})
        L.append(f"| {m['n']} | {fmt(m['run_median_ms'])} | {', '.join(f'{x:.0f}' for x in m['run_ms'])} | "
                 f"{fmt(m['rm_median_ms'])} | {', '.join(f'{x:.0f}' for x in m['rm_ms'])} | {ra} | {rma} | "
                 f"{m['rss']['VmRSS']:.0f} MiB ({m['rss']['VmHWM']:.0f}) |")
    if res["sizes"]:
        ex = res["sizes"][0]
        if ex["run_api"]:
            L += ["", f"What a container start costs in requests (N={ex['n']}, first sample): "
                  + ", ".join(f"`{k}` x{v}" for k, v in ex["run_api"][0]["by_path"].items())]
        if ex["rm_api"]:
            L += [f"and a `docker rm -f`: " + (", ".join(f"`{k}` x{v}" for k, v in ex["rm_api"][0]["by_path"].items()) or "none")]
    L += ["", "Ratios (same run): " + ", ".join(f"{k} = {v:.2f}" for k, v in res["ratios"].items()), ""]
    b = res.get("burst")
    if b:
        L += [f"Burst: {b['count']} `docker run`s, {b['parallel']} at a time, on the N={b['base']} host, took "
              f"{b['runs_s']:.1f} s to return. All their DNAT rules were in {fmt(b['all_dnat_in_ms'])} after the last "
              f"returned; the table last changed {fmt(b['last_change_after_last_run_ms'])} after it, and then "
              f"{'equalled' if b['equal'] else 'did NOT equal'} a fresh full apply (`compat --docker-host` vs "
              f"`show --format iptables`, {b['checks']} check(s)). Watcher requests during the burst: {b['api']['calls']}.", ""]
        if not b["equal"]:
            L += [("The two hold the same lines in another order: " if b["order_only"] else "They differ in content: ")
                  + f"{b['moved_rules']} rule(s) of the live table sit elsewhere in the fresh generation. "
                  "Start of the diff (fresh full apply `-`, live table `+`):", "", "```", *b["diff"][:24], "```", ""]
    L += [f"Full re-syncs logged after the first: {res['resyncs']}" + (": " + "; ".join(res["resync_lines"]) if res["resync_lines"] else ""), ""]
    L += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    for t in res["targets"]:
        L.append(f"| {t[0]} | {t[1]} | {t[2]} |")
    if res.get("notes"):
        L += ["", *res["notes"]]
    return "\n".join(L) + "\n"


def targets(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    by = {m["n"]: m for m in res["sizes"]}
    out = []
    top = max(by)
    lo = min(by)
    r = by[top]["run_median_ms"] / by[lo]["run_median_ms"] if by[lo]["run_median_ms"] else None
    out.append((f"run latency at N=1000 at most 1.5 x N=10", f"N={top}/N={lo}: {r:.2f} x" if r is not None else "-",
                ("met" if r <= 1.5 else "not met") + ("" if top == 1000 else f" (at N={top}; 1000 not run)")))
    out.append(("run latency at N=1000 under 50 ms", f"N={top}: {fmt(by[top]['run_median_ms'])}",
                ("met" if by[top]["run_median_ms"] < 50 else "not met") + ("" if top == 1000 else f" (at N={top}; 1000 not run)")))
    calls = max(a["calls"] for m in res["sizes"] for a in m["run_api"])
    out.append(("at most 3 API calls for a container start", f"at most {calls}", "met" if calls <= 3 else "not met"))
    b = res.get("burst")
    if b:
        conv = b["last_change_after_last_run_ms"]
        out.append(("burst of 100 converged within 1 s of the last docker run",
                    f"last change {fmt(conv)} after it; equal to a fresh full apply: {b['equal']}"
                    + ("" if b["equal"] else f" (same rules, {b['moved_rules']} in another order)" if b["order_only"]
                       else " (different rules)"),
                    "met" if b["equal"] and conv <= 1000 else "not met"))
    rss = by[top]["rss"]["VmHWM"]
    out.append(("watch RSS under 200 MiB at N=1000", f"N={top}: {rss:.0f} MiB peak",
                ("met" if rss < 200 else "not met") + ("" if top == 1000 else f" (at N={top}; 1000 not run)")))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000", help="containers running at each measurement (default 10,100,1000)")
    p.add_argument("--samples", type=int, default=5, help="docker run / rm -f pairs timed per size (default 5)")
    p.add_argument("--burst", type=int, default=100, help="parallel docker runs in the burst (0: none)")
    p.add_argument("--parallel", type=int, default=8, help="docker CLIs at once when filling and in the burst")
    p.add_argument("--out", default=str(HERE), help="directory for watch-results.md and watch-results.json")
    args = p.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    reason = TestDaemon.unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 3
    res: dict[str, Any] = {"machine": f"{platform.node()} Linux {platform.release()}, {os.cpu_count()} CPUs",
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sizes": [], "notes": []}
    tmp = Path(tempfile.mkdtemp(prefix="nftdwb-"))
    cfg = tmp / "daemon.json"
    cfg.write_text(json.dumps({"userland-proxy": False, "iptables": False, "ip6tables": False}))
    mon = proxy = w = clock = None
    out = Path(args.out)
    with TestDaemon("--userland-proxy=false", start_timeout=120) as d:
        try:
            res["dockerd"] = d.docker("version", "-f", "{{.Server.Version}}").stdout.strip()
            for i in range(NETWORKS):
                d.docker("network", "create", "--subnet", f"198.18.{i}.0/24", f"net{i}")
            proxy = CountingProxy(str(d.socket_path), str(tmp / "proxy.sock"))
            mon = RuleMonitor(str(d.netns_path))
            clock = EventClock(d.host)
            running = 0
            burst_base = next((n for n in sizes if n >= 100), sizes[-1])
            for tag, n in enumerate(sizes):
                t = time.monotonic()
                fill(d, running, n, args.parallel)
                print(f"N={n}: filled in {time.monotonic() - t:.0f} s", flush=True)
                running = n
                if w is None:
                    w = WatchProcess(d, str(tmp / "proxy.sock"), str(cfg), tmp / "watch.log")
                    w.wait_sync()
                    res["first_sync"] = w.syncs()[0]
                    # The comparison itself: right after the first sync the table is a fresh full apply.
                    res["equal_after_first_sync"] = compat_equal(d, str(cfg))[0]
                else:  # the watcher followed the fill: wait until the last container's rules are in
                    if mon.wait(ports_of(20000 + PORTS * (n - 1)), gone=False, timeout=120) is None:
                        res["notes"].append(f"N={n}: the last filled container's rules were not in within 120 s")
                m = measure(d, mon, proxy, clock, w, n, args.samples, tag)
                m["rss"] = w.rss()
                m["watch_cpu_s"] = w.cpu()
                res["sizes"].append(m)
                print(f"N={n}: run {fmt(m['run_median_ms'])} rm {fmt(m['rm_median_ms'])} "
                      f"api {[a['calls'] for a in m['run_api']]} / {[a['calls'] for a in m['rm_api']]} rss {m['rss']}", flush=True)
                if n == burst_base and args.burst:
                    b = burst(d, mon, proxy, str(cfg), args.burst, args.parallel, tmp / "burst-diff")
                    b["base"] = n
                    res["burst"] = b
                    print(f"burst: {b}", flush=True)
                    d.docker("rm", "-f", *[f"burst{i}" for i in range(args.burst)], timeout=300)
                    ports = [p for i in range(args.burst) for p in ports_of(50000 + PORTS * i)]
                    mon.wait(ports, gone=True, timeout=120)
            syncs = w.syncs()
            res["resyncs"] = len(syncs) - 1
            res["resync_lines"] = syncs[1:]
            res["watch_log_lines"] = len(w.lines())
        finally:
            if w is not None:
                w.close()
            remove_all(d)
            if mon is not None:
                mon.close()
            if clock is not None:
                clock.close()
            if proxy is not None:
                proxy.close()
    by = {m["n"]: m for m in res["sizes"]}
    lo = min(by)
    res["ratios"] = {f"run N={n}/N={lo}": by[n]["run_median_ms"] / by[lo]["run_median_ms"]
                     for n in by if n != lo and by[lo]["run_median_ms"]}
    # docker rm -f returns after the die (often after the rules went: negative latencies), so its
    # ratio is taken on the die event's arrival to the kernel instead.
    for key, label in (("start_event_median_ms", "start event"), ("die_event_median_ms", "die event")):
        res["ratios"].update({f"{label} N={n}/N={lo}": by[n][key] / by[lo][key]
                              for n in by if n != lo and by[lo][key] and by[n][key] is not None})
    res["targets"] = targets(res)
    (out / "watch-results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "watch-results.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
