"""A Scenario as a scenario file (TOML), so that a live host can be reviewed, committed and diffed.

``export_scenario(s)`` writes ``[daemon]`` (the keys that differ from dockerd's defaults),
``[host]``, one ``[[networks]]`` per user-defined bridge network and one ``[[containers]]`` per
container, in creation order, in the vocabulary of ../shared/scenario-format.md. Addresses and
host ports are written as allocated (``addresses = {...}``, ``publish = ["8080:80/tcp", ...]``),
so that the file reproduces the host exactly even where Docker's allocation history (released and
reused addresses, ephemeral ports) differs from a fresh allocation.

The promise, checked here on every export: ``generate(loads(export_scenario(s)))`` gives the same
rulesets as ``generate(s)``. Pinning a port can change the order in which Docker would sort a
container's bindings (exact ports sort before ranges), so when the pinned file would not
reproduce the rulesets, that container's ports are written as requested (and, should the whole
file still not reproduce them, all ports, then all addresses); the allocation is deterministic, so
that file reproduces them too.

The writer is a small TOML emitter for this one shape, using only the standard library, so the
output is the same byte for byte on every machine (tomli-w's layout differs between versions and
puts inline tables into sub-tables); tests check it against tomllib and tomli-w.
"""

from __future__ import annotations

import re
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

from nftdocker.errors import NftdockerError
from nftdocker.model import BRIDGE_OPT, DAEMON_KEYS, HOST_KEYS, PROTO_ORDER, Container, Daemon, PortSpec, Scenario, field_of
from nftdocker.nft.ir import Ruleset


def export_scenario(s: Scenario, header: str | None = None) -> str:
    """The scenario file text for ``s``; see the module docstring."""
    if header is None:
        header = f"Exported by nftdocker from {s.source}; see shared/scenario-format.md"
    from nftdocker.docker.generate import generate

    try:
        gen = generate(s)
    except NftdockerError:
        # Docker would refuse this host as described: write it as it is, pin nothing
        return dumps(scenario_document(s, False, False), header)
    if s.events:  # the host as its history left it, everything pinned as allocated: the same rules,
        # in the order a fresh host would have them (a scenario without events cannot say the history's)
        return dumps(scenario_document(gen.scenario, True, True, gen), header)
    want = gen.rulesets
    for pin_ports, pin_addresses in ((True, True), (False, True), (False, False)):
        text = dumps(scenario_document(s, pin_ports, pin_addresses, gen), header)
        if _reproduces(text, want):
            break
    return text  # the last, pinning nothing, if none reproduces the host


def scenario_document(s: Scenario, pin_ports: bool = True, pin_addresses: bool = True, gen: Any = None) -> dict[str, Any]:
    """The TOML document (plain dicts and lists) for ``s``; allocated ports/addresses pinned as asked.

    ``gen``: ``generate(s)``, if the caller has it already.
    """
    endpoints: dict[str, list[Any]] = {}
    bindings: dict[str, list[Any]] = {}
    if pin_ports or pin_addresses:
        if gen is None:
            from nftdocker.docker.generate import generate

            gen = generate(s)
        for ep in gen.endpoints:
            endpoints.setdefault(ep.container, []).append(ep)
        bindings = gen.bindings
    doc: dict[str, Any] = {}
    daemon = daemon_table(s.daemon)
    if daemon:
        doc["daemon"] = daemon
    doc["host"] = {k: getattr(s.host, field_of(k)) for k in HOST_KEYS}
    nets = []
    for n in s.networks:
        if n.default_bridge:
            continue  # comes from [daemon]
        t: dict[str, Any] = {"name": n.name}
        subnets = [*n.subnets4, *n.subnets6]
        t["subnets"] = [str(x) for x in subnets]
        t["gateways"] = [str(g) for g in (*n.gateways4, *n.gateways6)]
        if n.internal:
            t["internal"] = True
        if n.ipv6:
            t["ipv6"] = True
        if not n.subnets4:
            t["ipv4"] = False
        if n.ip_ranges4 or n.ip_ranges6:
            t["ip-ranges"] = [str(r) for r in (*n.ip_ranges4, *n.ip_ranges6)]
        opts = dict(n.options)
        # A network inspected without the option has Docker's br-<id> bridge, which a file cannot derive.
        opts.setdefault(BRIDGE_OPT + "name", n.bridge)
        t["options"] = dict(sorted(opts.items()))
        nets.append(t)
    if nets:
        doc["networks"] = nets
    ctrs = []
    for c in s.containers:
        t = {"name": c.name, "networks": list(c.networks)}
        publish = _pinned_ports(c, bindings.get(c.name, [])) if pin_ports else list(c.publish)
        # Docker sorts a container's bindings itself (generate does too): order them for reading.
        publish.sort(key=lambda p: (p.container_port, PROTO_ORDER[p.proto], p.host_ip is not None,
                                    (p.host_ip.version, int(p.host_ip)) if p.host_ip is not None else (0, 0),
                                    p.host_port))
        if publish:
            t["publish"] = _publish_strings(publish)
        addrs: dict[str, list[str]] = {}
        if pin_addresses and c.name in endpoints:
            for ep in endpoints[c.name]:
                for a in (ep.ipv4, ep.ipv6):
                    if a is not None:
                        addrs.setdefault(ep.network, []).append(str(a))
        else:
            for net, a in c.addresses:
                addrs.setdefault(net, []).append(str(a))
        if addrs:
            t["addresses"] = {k: (v[0] if len(v) == 1 else v) for k, v in addrs.items()}
        if c.expose:
            t["expose"] = [f"{p}/{proto}" for p, proto in c.expose]
        if c.links:
            t["links"] = [f"{l.name}:{l.alias}" for l in c.links]
        if c.gw_priority:
            t["gw-priority"] = dict(c.gw_priority)
        ctrs.append(t)
    if ctrs:
        doc["containers"] = ctrs
    return doc


def daemon_table(d: Daemon) -> dict[str, Any]:
    """daemon.json keys whose value differs from dockerd's default."""
    dflt = Daemon()
    out: dict[str, Any] = {}
    for key in DAEMON_KEYS:
        attr = field_of(key)
        v = getattr(d, attr)
        if v == getattr(dflt, attr):
            continue
        if attr == "bip":
            gw, net = v
            out[key] = f"{gw}/{net.prefixlen}"
        elif isinstance(v, bool):
            out[key] = v
        else:
            out[key] = str(v)
    return out


# --------------------------------------------------------------------------- ports


def _pinned_ports(c: Container, bindings: list[Any]) -> list[PortSpec]:
    """c.publish with each request's host port replaced by the one allocated, where it is unambiguous."""
    explicit = {(p.container_port, p.proto, p.host_ip) for p in c.publish if p.host_ip is not None}
    out = []
    for p in c.publish:
        lo, hi = p.host_port, p.host_port_end or p.host_port
        ports = set()
        for b in bindings:
            if b.container_port != p.container_port or b.proto != p.proto or not b.host_port:
                continue
            if lo and not lo <= b.host_port <= hi:
                continue
            if p.host_ip is not None:
                if b.host_ip != p.host_ip:
                    continue
            elif (p.container_port, p.proto, b.host_ip) in explicit:
                continue
            ports.add(b.host_port)
        if len(ports) == 1:
            (port,) = ports
            out.append(replace(p, host_port=port, host_port_end=port))
        else:
            out.append(p)  # not published (routed mode, no gateway) or ambiguous: as requested
    return out if _same_order(list(c.publish), out) else list(c.publish)


def _same_order(before: list[PortSpec], after: list[PortSpec]) -> bool:
    """Whether Docker would sort and group the pinned bindings as it did the requested ones
    (exact ports sort before ranges, so pinning an ephemeral port can move it)."""
    from nftdocker.docker.hostports import binding_sort_key, need_same_port

    def plan(specs: list[PortSpec]) -> list[tuple[int, bool]]:
        order = sorted(range(len(specs)), key=lambda i: binding_sort_key(specs[i]))
        return [(i, k + 1 < len(order) and need_same_port(specs[i], specs[order[k + 1]]))
                for k, i in enumerate(order)]

    return plan(before) == plan(after)


def _publish_strings(specs: list[PortSpec]) -> list[str]:
    """-p strings, consecutive single ports folded back into ranges (``7000-7002:7000-7002/tcp``)."""
    out: list[str] = []
    run: list[PortSpec] = []

    def flush() -> None:
        if not run:
            return
        first, last = run[0], run[-1]
        if len(run) == 1:
            out.append(str(first))
        else:
            ip = "" if first.host_ip is None else (
                f"[{first.host_ip}]:" if first.host_ip.version == 6 else f"{first.host_ip}:")
            hp = f"{first.host_port}-{last.host_port}" if first.host_port else ""
            cp = f"{first.container_port}-{last.container_port}"
            out.append(f"{ip}{hp}:{cp}/{first.proto}" if (ip or hp) else f"{cp}/{first.proto}")
        run.clear()

    for p in specs:
        single = p.host_port == (p.host_port_end or p.host_port)
        if run and single:
            prev = run[-1]
            if (p.proto == prev.proto and p.host_ip == prev.host_ip
                    and p.container_port == prev.container_port + 1
                    and (p.host_port == prev.host_port + 1 if prev.host_port else p.host_port == 0)):
                run.append(p)
                continue
        flush()
        if single:
            run.append(p)
        else:
            out.append(str(p))
    flush()
    return out


# --------------------------------------------------------------------------- checking


def _reproduces(text: str, want: dict[str, Ruleset]) -> bool:
    """Does the scenario file ``text`` generate the rulesets ``want`` (compared as IR, :class:`ir.Ruleset`)?"""
    from nftdocker.docker.generate import generate
    from nftdocker.scenario.load import loads

    try:
        return generate(loads(text, source="<export>")).rulesets == want
    except NftdockerError:
        return False


# --------------------------------------------------------------------------- TOML writer

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_LINE = 100


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _string(k)


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(v: Any, indent: str = "") -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, IPv4Address):
        return _string(str(v))
    if isinstance(v, list):
        items = [_value(x, indent + "    ") for x in v]
        one = "[" + ", ".join(items) + "]"
        if len(one) + len(indent) <= _LINE or not items:
            return one
        return "[\n" + "".join(f"{indent}    {x},\n" for x in items) + f"{indent}]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(x, indent)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps(doc: dict[str, Any], header: str | None = None) -> str:
    """TOML for a document of this module's shape: top-level tables and arrays of tables whose
    values are scalars, arrays and small inline tables."""
    lines: list[str] = []
    if header:
        lines.extend(f"# {l}".rstrip() for l in header.splitlines())
    for k, v in doc.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not all(isinstance(x, dict) for x in v)):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append("")
            lines.append(f"[{_key(k)}]")
            lines.extend(f"{_key(kk)} = {_value(vv)}" for kk, vv in v.items())
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append("")
                lines.append(f"[[{_key(k)}]]")
                lines.extend(f"{_key(kk)} = {_value(vv)}" for kk, vv in item.items())
    text = "\n".join(lines).lstrip("\n")
    return text + "\n"


__all__ = ["export_scenario", "scenario_document", "daemon_table", "dumps"]
