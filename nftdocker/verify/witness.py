"""Witness packets of ``diff --semantic`` as probes ``verify`` can send.

A witness is a packet as one table's chain sees it (``tcp 203.0.113.9:40000 -> 192.0.2.2:80 in
eth0 out bridge1`` at filter FORWARD). verify's namespaces can only open connections from a node
(the outside peer, the host, a container) to an address and port, so each witness becomes the
connection attempts whose packets take that shape on the way: from the node the source address or
input interface names, straight to the destination, and, when the destination is a container's
published port, to the host port that DNAT sends there (the way such a packet really arrives).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nftdocker.compat.semantic_diff import Witness
from nftdocker.verify.plan import ECHO_PORT, Plan, Probe


@dataclass
class WitnessProbes:
    family: str
    witness: Witness
    probes: list[Probe] = field(default_factory=list)
    reason: str = ""  # why no probe can send it


def _node_of(w: Witness, plan: Plan, addrs: dict[str, str], bridges: set[str]) -> str:
    p = w.packet
    if str(p.src) in addrs:
        return addrs[str(p.src)]
    if p.iif in bridges:
        node = next((l.node for l in plan.links if l.bridge == p.iif and any(a.version == p.src.version for a in l.addrs)), None)
        if node:
            return node
    if p.iif is None or p.iif == "lo" or p.src_local:
        return "host"
    return "outside"


def plan_witnesses(witnesses: list[tuple[str, Witness]], plan: Plan, gen: Any) -> list[WitnessProbes]:
    """Append probes for each witness to ``plan`` (and the servers they need); what was added, per witness."""
    addrs = {str(a.ip): l.node for l in plan.links for a in l.addrs}
    bridges = {b for b, _ in plan.bridges}
    host_addrs = {str(a.ip) for _, xs in plan.bridges for a in xs} | {str(plan.uplink4[0].ip), str(plan.uplink6[0].ip)}
    host_addrs |= {str(a.ip) for a in plan.extra_host_addrs} | {"127.0.0.1", "::1"}
    out: list[WitnessProbes] = []
    keys = {(pr.src, pr.addr, pr.port, pr.proto): pr for pr in plan.probes}
    for fam, w in witnesses:
        p = w.packet
        wp = WitnessProbes(fam, w)
        out.append(wp)
        if p.proto not in ("tcp", "udp"):
            wp.reason = f"verify sends TCP and UDP only, not {p.proto}"
            continue
        if p.state != "NEW":
            wp.reason = f"a probe opens a new connection; the witness is ctstate {p.state}"
            continue
        node = _node_of(w, plan, addrs, bridges)
        v = p.dst.version
        public = str((plan.uplink4 if v == 4 else plan.uplink6)[0].ip)
        dst = str(p.dst)
        targets: list[tuple[str, str, int]] = []  # (what, addr, port)
        if dst in addrs:
            targets.append((addrs[dst], dst, p.dport))
            for ctr, bs in gen.bindings.items():
                for b in bs:
                    if str(b.container_ip) == dst and b.container_port == p.dport and b.proto == p.proto and b.host_port:
                        hip = public if b.host_ip.is_unspecified else str(b.host_ip)
                        targets.append(("host", hip, b.host_port))
        elif dst in host_addrs:
            targets.append(("host", dst, p.dport))
        elif p.dst_local:
            targets.append(("host", public, p.dport))
        elif node in plan.containers and p.oif not in bridges:
            peer = str((plan.uplink4 if v == 4 else plan.uplink6)[1].ip)
            targets.append(("outside", peer, ECHO_PORT))
        elif p.oif in bridges:
            ctr = next((l for l in plan.links if l.bridge == p.oif and any(a.version == v for a in l.addrs)), None)
            if ctr is not None:
                a = next(str(x.ip) for x in ctr.addrs if x.version == v)
                targets.append((ctr.node, a, p.dport))
        if not targets:
            wp.reason = f"no node of verify's topology can send {p.text()}"
            continue
        for what, addr, port in targets:
            pr = keys.get((node, addr, port, p.proto))
            if pr is None:
                pr = keys[(node, addr, port, p.proto)] = Probe(len(plan.probes) + 1, "witness", node, what, addr, port, p.proto)
                plan.probes.append(pr)
            if pr not in wp.probes:
                wp.probes.append(pr)
            if what in plan.containers and (p.proto, addr, port) not in plan.servers.setdefault(what, []):
                plan.servers[what].append((p.proto, addr, port))
    return out
