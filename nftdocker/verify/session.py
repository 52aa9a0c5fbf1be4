"""verify's session: both sides' namespaces, veths, bridges and agents; the rules loaded into each.

Layout of one side (``nftdv-<pid>-<L|N>-...``)::

    outside (eth0 203.0.113.2) --- (nftdvup 203.0.113.1) host [bridges with gateway addresses]
                                                              |  one veth per endpoint
                                                      container namespaces (eth0, eth1, ...)

The legacy side's host gets the iptables rules through iptables-legacy-restore, the nft side's the
generated table through libnftables. br_netfilter is on for every bridge (this kernel has it built
in, and a new namespace starts with ``bridge-nf-call-iptables=1``), so same-bridge traffic always
passes the rules, on both sides. Needs root; pyroute2 is imported lazily.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any, Sequence

from nftdocker.errors import EnvironmentProblem, ReferenceError_
from nftdocker.nft.render import DEFAULT_TABLE
from nftdocker.verify.agent import DEFAULT_JOBS, DEFAULT_TIMEOUT, Agent
from nftdocker.verify.env import tool
from nftdocker.verify.plan import PREFIX, Link, Probe, plan
from nftdocker.verify.report import Outcome

SIDES = ("legacy", "nft")
SIDE_TAG = {"legacy": "L", "nft": "N"}
UPLINK_IF = "nftdvup"
IFA_F_NODAD = 0x02
BRIDGE_MODE_HAIRPIN = 1


def _run_in(ns: str, argv: list[str], stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([tool("ip"), "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True, timeout=timeout)


def _load_legacy(ns: str, text4: str, text6: str) -> None:
    """The iptables rules into ``ns`` through iptables-legacy-restore / ip6tables-legacy-restore."""
    for restore, text in (("iptables-legacy-restore", text4), ("ip6tables-legacy-restore", text6)):
        if not text.strip():
            continue
        p = _run_in(ns, [tool(restore), "-w", "10"], stdin=text)
        if p.returncode != 0:
            raise ReferenceError_(f"{restore} refused the rules: {(p.stderr or p.stdout).strip()}")


def _load_nft(ns: str, gen: Any, table: str) -> None:
    """The generated nft table into ``ns``, replacing any earlier one, in one libnftables transaction."""
    from nftdocker.nft import kernel

    kernel.apply(gen, netns_name=ns, table=table)


class Session:
    """Both sides' namespaces, agents and servers; load rules, run probes, clean up.

    Use as a context manager: namespaces are removed on leaving it (also on errors and Ctrl-C)
    unless ``keep`` is set.
    """

    def __init__(self, gen: Any, table: str = DEFAULT_TABLE, timeout: float = DEFAULT_TIMEOUT, jobs: int = DEFAULT_JOBS,
                 keep: bool = False, sides: Sequence[str] = SIDES, tag: str | None = None) -> None:
        self.gen = gen
        self.plan = plan(gen)
        self.table = table
        self.timeout = timeout
        self.jobs = jobs
        self.keep = keep
        self.sides = list(sides)
        self.tag = tag or _next_tag()
        self.created: list[str] = []
        self.agents: dict[tuple[str, str], Agent] = {}
        self.timings: dict[str, float] = {}

    def ns(self, side: str, node: str) -> str:
        short = {"host": "host", "outside": "out"}.get(node, f"c-{node}")
        return f"{self.tag}-{SIDE_TAG[side]}-{short}"

    def __enter__(self) -> "Session":
        try:
            t = time.monotonic()
            # pyroute2 forks short-lived helpers; a signal must not reach one of them (it would run
            # our cleanup as a second process), so it waits here until they are gone.
            blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
            old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
            try:
                for side in self.sides:
                    self._build(side)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            self.timings["build"] = time.monotonic() - t
            t = time.monotonic()
            for side in self.sides:
                for node in self.plan.nodes():
                    self.agents[(side, node)] = Agent(self.ns(side, node), node)
            deadline = time.monotonic() + 30
            for a in self.agents.values():
                if a.recv(deadline).get("ready") is not True:
                    raise EnvironmentProblem(f"the agent in {a.ns} did not start")
            self._configure()
            self.timings["agents"] = time.monotonic() - t
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _build(self, side: str) -> None:
        from pyroute2 import IPRoute, netns

        p = self.plan
        for node in p.nodes():
            name = self.ns(side, node)
            try:
                netns.create(name)
            except Exception as e:
                raise EnvironmentProblem(f"cannot create network namespace {name}: {e}") from None
            self.created.append(name)
        try:
            host = self.ns(side, "host")
            with IPRoute(netns=host) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                for br, addrs in p.bridges:
                    ipr.link("add", ifname=br, kind="bridge")
                    idx = ipr.link_lookup(ifname=br)[0]
                    for a in addrs:
                        _addr(ipr, idx, a)
                    ipr.link("set", index=idx, state="up")
                ipr.link("add", ifname=UPLINK_IF, kind="veth", peer={"ifname": "eth0", "net_ns_fd": self.ns(side, "outside")})
                idx = ipr.link_lookup(ifname=UPLINK_IF)[0]
                for a in (p.uplink4[0], p.uplink6[0], *p.extra_host_addrs):
                    _addr(ipr, idx, a)
                ipr.link("set", index=idx, state="up")
                for l in p.links:
                    ipr.link("add", ifname=l.host_if, kind="veth", peer={"ifname": l.peer_if, "net_ns_fd": self.ns(side, l.node)})
                    idx = ipr.link_lookup(ifname=l.host_if)[0]
                    ipr.link("set", index=idx, master=ipr.link_lookup(ifname=l.bridge)[0], state="up")
                    if l.hairpin:
                        ipr.brport("set", index=idx, mode=BRIDGE_MODE_HAIRPIN)
            peers: dict[str, list[Link]] = {}
            for l in p.links:
                peers.setdefault(l.node, []).append(l)
            for node in ["outside", *p.containers]:
                with IPRoute(netns=self.ns(side, node)) as ipr:
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                    ifs = [("eth0", (p.uplink4[1], p.uplink6[1]))] if node == "outside" else [(l.peer_if, l.addrs) for l in peers[node]]
                    for ifname, addrs in ifs:
                        idx = ipr.link_lookup(ifname=ifname)[0]
                        for a in addrs:
                            _addr(ipr, idx, a)
                        ipr.link("set", index=idx, state="up")
                    for g in p.routes.get(node, []):
                        ipr.route("add", dst="default", gateway=g, family=10 if ":" in g else 2)
        except EnvironmentProblem:
            raise
        except Exception as e:
            raise EnvironmentProblem(f"cannot build the {side} side's namespaces: {e}") from None

    def _configure(self) -> None:
        p = self.plan
        msgs: list[tuple[Agent, dict[str, Any]]] = []
        for side in self.sides:
            msgs.append((self.agents[(side, "host")], {"op": "sysctl", "set": p.host_sysctls}))
            for node, listen in p.servers.items():
                msgs.append((self.agents[(side, node)], {"op": "serve", "name": node, "listen": listen}))
        for a, m in msgs:
            a.send(m)
        deadline = time.monotonic() + 30
        for a, m in msgs:
            r = a.recv(deadline)
            if r.get("errors"):
                raise EnvironmentProblem(f"{a.ns}: {m['op']}: {'; '.join(r['errors'])}")

    def load_legacy(self, text4: str, text6: str) -> None:
        _load_legacy(self.ns("legacy", "host"), text4, text6)

    def load_nft(self, gen: Any | None = None) -> None:
        _load_nft(self.ns("nft", "host"), gen or self.gen, self.table)

    def probe(self, sides: Sequence[str] | None = None, probes: Sequence[Probe] | None = None,
              timeout: float | None = None) -> dict[str, dict[int, Outcome]]:
        """Run the probes through the given sides at once; every agent runs its share in parallel."""
        sides = list(sides or self.sides)
        timeout = timeout or self.timeout
        probes = list(self.plan.probes if probes is None else probes)
        by_src: dict[str, list[Probe]] = {}
        for pr in probes:
            by_src.setdefault(pr.src, []).append(pr)
        calls: list[tuple[str, Agent]] = []
        for side in sides:
            for src, prs in by_src.items():
                a = self.agents[(side, src)]
                a.send({"op": "probe", "timeout": timeout, "jobs": self.jobs,
                        "probes": [{"id": x.id, "proto": x.proto, "addr": x.addr, "port": x.port} for x in prs]})
                calls.append((side, a))
        longest = max((len(v) for v in by_src.values()), default=0)
        deadline = time.monotonic() + (timeout * 2 + 0.5) * (longest // max(self.jobs, 1) + 1) + 15
        out: dict[str, dict[int, Outcome]] = {s: {} for s in sides}
        for side, a in calls:
            r = a.recv(deadline)
            for k, v in r.get("results", {}).items():
                out[side][int(k)] = Outcome.from_json(v)
        return out

    def close(self) -> None:
        for a in self.agents.values():
            try:
                a.close()
            except Exception:
                pass
        self.agents.clear()
        if self.keep or not self.created:
            return
        from pyroute2 import netns

        for name in self.created:
            try:
                netns.remove(name)
            except Exception:
                subprocess.run([tool("ip"), "netns", "delete", name], capture_output=True)
        self.created = []


_sessions = itertools.count()


def _next_tag() -> str:
    """``nftdv-<pid>`` for a process's first session, ``nftdv-<pid>.<n>`` after it."""
    n = next(_sessions)
    return f"{PREFIX}-{os.getpid()}" + (f".{n}" if n else "")


def _addr(ipr: Any, idx: int, a: IPv4Interface | IPv6Interface) -> None:
    kw: dict[str, Any] = {"index": idx, "address": str(a.ip), "prefixlen": a.network.prefixlen}
    if a.version == 6:
        kw["flags"] = IFA_F_NODAD
    ipr.addr("add", **kw)
