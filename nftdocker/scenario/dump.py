"""``docker inspect`` output (as Docker Engine 28.x writes it) into the model's networks and
containers: the dump a scenario's ``docker-inspect`` names, or what the Engine API returns.

Every key read must have the JSON type Docker writes there; anything else is a located
:class:`ScenarioError`. Objects are taken in the order Docker created (containers: started) them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from nftdocker.errors import ScenarioError
from nftdocker.model import BRIDGE_OPT, DEFAULT_BRIDGE_NETWORK, PROTOS, Container, Daemon, IPAddress, Link, Network, PortSpec
from nftdocker.scenario.context import Context, check_name, describe, parse_addr, parse_prefix
from nftdocker.scenario.daemon import default_bridge
from nftdocker.scenario.network import check_bridges, network_from_options
from nftdocker.scenario.publish import PORT_RE


def read_inspect(ctx: Context, dump_path: Path) -> Any:
    """The JSON of the dump that ``docker-inspect`` names (read by ``inputs.read_bytes``)."""
    from nftdocker.inputs import read_bytes

    try:
        data = read_bytes(dump_path)
    except ScenarioError as e:
        raise ctx.fail("docker-inspect", f"{dump_path}: {e.problem}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ScenarioError(str(dump_path), "", f"not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise ScenarioError(str(dump_path), "", "not JSON this reader takes: nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ScenarioError(str(dump_path), "", f"not JSON: {e}") from None


#: ``_get``'s default for a key that Docker always writes: missing is bad input.
_REQUIRED: Any = object()
_JSON_TYPE = {bool: "a boolean", str: "a string", list: "an array", dict: "an object", int: "an integer"}


def _get(ctx: Context, obj: dict[str, Any], where: str, key: str, t: type, default: Any = None, *, null: bool = False) -> Any:
    """``obj[key]`` of JSON type ``t``; ``default`` when the key is missing (or is null, with ``null``:
    Docker writes null for an empty Go map or slice). Any other value is a located error."""
    path = f"{where}.{key}" if where else key
    if key not in obj:
        if default is _REQUIRED:
            raise ctx.fail(path, "required key is missing")
        return default
    value = obj[key]
    if value is None and null:
        return default
    return _typed(ctx, path, value, t)


def _typed(ctx: Context, path: str, value: Any, t: type) -> Any:
    """``value`` if it is of JSON type ``t`` (an integer is not a boolean); else a located error."""
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ctx.fail(path, f"expected {_JSON_TYPE[t]}, got {_describe_json(value)}")
    return value


def _describe_json(value: Any) -> str:
    """A JSON value as a message shows what was found instead."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return describe(value)


def started(ctx: Context, where: str, obj: dict[str, Any]) -> datetime:
    """When a container last started (``State.StartedAt``; else its ``Created``): Docker programs
    a container's rules when it starts, so a container stopped and started again comes after the others."""
    created = _created(ctx, where, obj)
    state = _get(ctx, obj, where, "State", dict, {}, null=True)
    if state.get("StartedAt"):
        t = _created(ctx, f"{where}.State", state, "StartedAt")
        if t != datetime.min and t.year > 1:
            return t
    return created


def _created(ctx: Context, where: str, obj: dict[str, Any], key: str = "Created") -> datetime:
    """The time in ``obj[key]`` (Docker's RFC 3339 with nanoseconds); ``datetime.min`` when absent or unreadable."""
    text = _get(ctx, obj, where, key, str, "")
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text)
    if not m:
        return datetime.min
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    try:
        return datetime.fromisoformat(f"{m.group(1)}.{frac}")
    except ValueError:
        raise ctx.fail(f"{where}.{key}", f"{text!r} is not a time") from None


def from_inspect(ctx: Context, dump: Any, daemon: Daemon) -> tuple[list[Network], list[Container]]:
    """Networks and containers from ``docker inspect`` output (mixed array or {networks, containers}).

    Every key read must have the JSON type Docker writes there (null only where Docker writes null
    for an empty map or list); anything else is a ScenarioError naming the key."""
    if isinstance(dump, dict) and set(dump) <= {"networks", "containers"}:
        nets_raw = _get(ctx, dump, "", "networks", list, [])
        ctrs_raw = _get(ctx, dump, "", "containers", list, [])
        objs = [("networks", i, o) for i, o in enumerate(nets_raw)] + [
            ("containers", i, o) for i, o in enumerate(ctrs_raw)
        ]
    elif isinstance(dump, list):
        objs = [("", i, o) for i, o in enumerate(dump)]
    else:
        raise ctx.fail("", "expected a JSON array of inspect objects or an object with 'networks' and 'containers'")
    networks_in: list[tuple[str, dict[str, Any]]] = []
    containers_in: list[tuple[str, dict[str, Any]]] = []
    for kind, i, o in objs:
        where = f"{kind}[{i}]" if kind else f"[{i}]"
        if not isinstance(o, dict):
            raise ctx.fail(where, f"expected an inspect object, got {_describe_json(o)}")
        is_net = "IPAM" in o or "Driver" in o and "Scope" in o
        is_ctr = "NetworkSettings" in o or "HostConfig" in o
        if kind == "networks" or (not kind and is_net and not is_ctr):
            networks_in.append((where, o))
        elif kind == "containers" or (not kind and is_ctr):
            containers_in.append((where, o))
        else:
            raise ctx.fail(where, "neither a network nor a container inspect object")
    created = {id(o): _created(ctx, where, o) for where, o in networks_in}
    created.update({id(o): started(ctx, where, o) for where, o in containers_in})
    networks_in.sort(key=lambda t: created[id(t[1])])
    containers_in.sort(key=lambda t: created[id(t[1])])

    ids: dict[str, str] = {}
    user_nets: list[Network] = []
    by_id: dict[str, str] = {}
    dflt = default_bridge(daemon)
    for where, o in networks_in:
        name = _get(ctx, o, where, "Name", str, _REQUIRED)
        driver = _get(ctx, o, where, "Driver", str, "bridge")
        if _get(ctx, o, where, "Ingress", bool, False):
            raise ctx.fail(f"{where}.Ingress", f"network {name!r} is swarm's ingress network; swarm is out of scope")
        internal = _get(ctx, o, where, "Internal", bool, False)
        ipv6 = _get(ctx, o, where, "EnableIPv6", bool, False)
        ident = _get(ctx, o, where, "Id", str, "")
        opts_raw = _get(ctx, o, where, "Options", dict, {}, null=True)
        opts = {str(k): _get(ctx, opts_raw, f"{where}.Options", k, str) for k in opts_raw}
        ipam = _get(ctx, o, where, "IPAM", dict, {})
        cfgs = _get(ctx, ipam, f"{where}.IPAM", "Config", list, [], null=True)
        pools: list[tuple[str, str, str, str]] = []  # (key, Subnet, Gateway, IPRange) of each IPAM.Config entry
        for j, c in enumerate(cfgs):
            ckey = f"{where}.IPAM.Config[{j}]"
            _typed(ctx, ckey, c, dict)
            pools.append((ckey, _get(ctx, c, ckey, "Subnet", str, ""), _get(ctx, c, ckey, "Gateway", str, ""),
                          _get(ctx, c, ckey, "IPRange", str, "")))
        if driver != "bridge":
            continue
        by_id[ident] = name
        if opts.get(BRIDGE_OPT + "default_bridge") == "true" or name == DEFAULT_BRIDGE_NETWORK:
            continue  # the default bridge comes from [daemon]
        ids[name] = ident
        subs: list[Any] = []
        gws: list[IPAddress] = []  # only the ones the user gave: Docker 28 shows no other
        ranges: list[Any] = []
        for ckey, subnet, gw, iprange in pools:
            if not subnet:
                raise ctx.fail(f"{ckey}.Subnet", "required key is missing or empty")
            s = parse_prefix(ctx, f"{ckey}.Subnet", subnet)
            subs.append(s)
            if gw:
                gws.append(parse_addr(ctx, f"{ckey}.Gateway", gw))
            if iprange:
                ranges.append(parse_prefix(ctx, f"{ckey}.IPRange", iprange))
        subs.sort(key=lambda n: n.version)
        ipv4 = _get(ctx, o, where, "EnableIPv4", bool, True)  # absent before Docker 28: always on
        s4 = tuple(s for s in subs if s.version == 4) if ipv4 else ()
        s6 = tuple(s for s in subs if s.version == 6) if ipv6 else ()
        gws = [g for g in gws if (g.version == 4 and ipv4) or (g.version == 6 and ipv6)]
        user_nets.append(
            network_from_options(
                ctx, where, check_name(ctx, f"{where}.Name", name, "network"), s4, s6, gws,
                internal, ipv6 and bool(s6), opts, ids, ranges=ranges,
            )
        )
    networks = ([dflt] if dflt else []) + user_nets
    known = {n.name for n in networks}
    containers: list[Container] = []
    for where, o in containers_in:
        containers.append(container_from_inspect(ctx, where, o, known, by_id))
    check_bridges(ctx, networks, "networks")
    return networks, containers


def container_from_inspect(
    ctx: Context, where: str, o: dict[str, Any], known: set[str], by_id: dict[str, str]
) -> Container:
    """A container's inspect object at ``where``: its endpoints on the ``known`` bridge networks,
    its published and exposed ports and its links."""
    name = _get(ctx, o, where, "Name", str, _REQUIRED).lstrip("/")
    check_name(ctx, f"{where}.Name", name, "container")
    # Docker always writes NetworkSettings and its Networks, an object (empty for --network
    # container:ID; "host" and "none" are listed by name): without them the dump is not Docker's.
    settings = _get(ctx, o, where, "NetworkSettings", dict, _REQUIRED)
    skey = f"{where}.NetworkSettings"
    nets_raw = _get(ctx, settings, skey, "Networks", dict, _REQUIRED)
    host_config = _get(ctx, o, where, "HostConfig", dict, {})
    hkey = f"{where}.HostConfig"
    mode = _get(ctx, host_config, hkey, "NetworkMode", str, "")
    if mode == "default":
        mode = DEFAULT_BRIDGE_NETWORK
    names = [n for n in nets_raw]
    names.sort(key=lambda n: (n != mode, n))
    networks: list[str] = []
    addrs: list[tuple[str, IPAddress]] = []
    prio: list[tuple[str, int]] = []
    for n in names:
        ep = _get(ctx, nets_raw, f"{skey}.Networks", n, dict)
        nkey = f"{skey}.Networks.{n}"
        ip4 = _get(ctx, ep, nkey, "IPAddress", str, "")
        ip6 = _get(ctx, ep, nkey, "GlobalIPv6Address", str, "")
        gwp = _get(ctx, ep, nkey, "GwPriority", int, 0)
        if n not in known:
            continue  # host/none/macvlan: no bridge firewall
        if not ip4 and not ip6:
            continue  # not running: no endpoint
        networks.append(n)
        if gwp:
            prio.append((n, gwp))
        if ip4:
            addrs.append((n, parse_addr(ctx, f"{nkey}.IPAddress", ip4)))
        if ip6:
            addrs.append((n, parse_addr(ctx, f"{nkey}.GlobalIPv6Address", ip6)))
    publish = _ports_from_inspect(ctx, where, host_config, settings)
    if not networks:
        publish = []
    expose: list[tuple[int, str]] = []
    config = _get(ctx, o, where, "Config", dict, {})
    for k in _get(ctx, config, f"{where}.Config", "ExposedPorts", dict, {}, null=True):
        port, _, proto = str(k).partition("/")
        if port.isdigit() and (proto or "tcp") in PROTOS:
            expose.append((int(port), proto or "tcp"))
    links: list[Link] = []
    for j, l in enumerate(_get(ctx, host_config, hkey, "Links", list, [], null=True)):
        # "/c1:/c2/alias"
        target, _, alias_path = _typed(ctx, f"{hkey}.Links[{j}]", l, str).partition(":")
        links.append(Link(target.lstrip("/"), alias_path.rsplit("/", 1)[-1]))
    return Container(
        name=name,
        networks=tuple(networks),
        publish=tuple(publish),
        addresses=tuple(addrs),
        expose=tuple(sorted(set(expose))),  # type: ignore[arg-type]
        links=tuple(links),
        gw_priority=tuple(prio),
    )


def _inspect_port(ctx: Context, key: str, text: str, lowest: int) -> tuple[int, int]:
    """A port (or ``LO-HI``) in a dump: the numbers ``lowest``-65535."""
    m = PORT_RE.match(text)
    lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (-1, -1)
    if not m or not (lowest <= lo <= hi <= 65535):
        raise ctx.fail(key, f"{text!r} is not a port {lowest}-65535" + (" or range" if "-" in text else ""))
    return lo, hi


def _bindings(ctx: Context, key: str, raw: Any) -> list[tuple[str, str, str]]:
    """A PortMap value (a list of {HostIp, HostPort}, or null): (key of the binding, HostIp, HostPort)."""
    if raw is None:
        return []
    out = []
    for j, b in enumerate(_typed(ctx, key, raw, list)):
        bkey = f"{key}[{j}]"
        _typed(ctx, bkey, b, dict)
        out.append((bkey, _get(ctx, b, bkey, "HostIp", str, ""), _get(ctx, b, bkey, "HostPort", str, "")))
    return out


def _ports_from_inspect(
    ctx: Context, where: str, host_config: dict[str, Any], settings: dict[str, Any]
) -> list[PortSpec]:
    """Published ports: the request (HostConfig.PortBindings) with the ports Docker allocated (NetworkSettings.Ports).

    A binding keeps the host port or range it asked for, since that decides where Docker sorts
    it (cmpPortBinding: exact ports before ranges), and carries the port it got as ``allocated``.
    """
    akey, rkey = f"{where}.NetworkSettings.Ports", f"{where}.HostConfig.PortBindings"
    actual_raw = _get(ctx, settings, f"{where}.NetworkSettings", "Ports", dict, {}, null=True)
    requested_raw = _get(ctx, host_config, f"{where}.HostConfig", "PortBindings", dict, {}, null=True)
    actual = {k: _bindings(ctx, f"{akey}.{k}", v) for k, v in actual_raw.items()}
    requested = {k: _bindings(ctx, f"{rkey}.{k}", v) for k, v in requested_raw.items()}
    out: list[PortSpec] = []
    keys = list(requested) if requested else [k for k, v in actual.items() if v]
    for key in keys:
        pkey = f"{akey}.{key}" if key in actual_raw else f"{rkey}.{key}"
        port_text, _, proto = str(key).partition("/")
        proto = proto or "tcp"
        if not port_text.isdigit() or proto not in PROTOS:
            raise ctx.fail(pkey, f"{key!r} is not PORT/PROTO")
        cport = _inspect_port(ctx, pkey, port_text, 1)[0]
        got = [(bkey, hip, hp, parse_addr(ctx, f"{bkey}.HostIp", hip) if hip else None) for bkey, hip, hp in actual.get(key, [])]
        req = requested.get(key) or [(f"{akey}.{key}[0]", "", got[0][2]) for _ in got[:1]]
        for bkey, hip_text, hp_req in req:
            hip = parse_addr(ctx, f"{bkey}.HostIp", hip_text) if hip_text else None
            match = [
                (gkey, gport) for gkey, gip_text, gport, gip in got
                if (hip is None and gip_text in ("0.0.0.0", "::", ""))
                or (hip is not None and gip is not None and gip == hip)
            ]
            allocated = [(gkey, gport) for gkey, gport in match if gport]
            got_port = _inspect_port(ctx, f"{allocated[0][0]}.HostPort", allocated[0][1], 0)[0] if allocated else 0
            want_key, want_text = (f"{bkey}.HostPort", hp_req) if requested else (
                (f"{allocated[0][0]}.HostPort", allocated[0][1]) if allocated else ("", ""))
            lo, hi = _inspect_port(ctx, want_key, want_text, 0) if want_text else (0, 0)
            out.append(PortSpec(cport, proto, hip, lo, hi, got_port))  # type: ignore[arg-type]
    return out
