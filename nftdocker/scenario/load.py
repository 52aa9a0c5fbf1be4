"""Read a scenario (TOML, optionally with a ``docker inspect`` dump) into the typed model.

The contract is ../shared/scenario-format.md (bundled as docs in README). Every problem
raises :class:`ScenarioError` naming the file, the key path and what is wrong.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from nftdocker.errors import ScenarioError
from nftdocker.nft.ir import gc_paused
from nftdocker.model import (
    DEFAULT_BRIDGE_NETWORK,
    Container,
    EVENT_KINDS,
    Daemon,
    Event,
    Host,
    IPAddress,
    Link,
    Network,
    PortSpec,
    Scenario,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

OPT = "com.docker.network."
OPT_BRIDGE = OPT + "bridge."
GATEWAY_MODES = ("nat", "nat-unprotected", "routed", "isolated")
PROTOS = ("tcp", "udp", "sctp")
_IFNAME_BAD = re.compile(r"[\s/'\"\\\x00-\x1f\x7f]")
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

DAEMON_KEYS: dict[str, type] = {
    "userland-proxy": bool,
    "icc": bool,
    "ip-masq": bool,
    "ip-forward": bool,
    "ip-forward-no-drop": bool,
    "iptables": bool,
    "ip6tables": bool,
    "ipv6": bool,
    "fixed-cidr-v6": str,
    "ip": str,
    "bridge": str,
    "bip": str,
    "fixed-cidr": str,
}
HOST_KEYS = {"ipv4-forwarding": bool, "ipv6-forwarding": bool}
NETWORK_KEYS = {"name", "subnets", "gateways", "internal", "ipv6", "ipv4", "ip-ranges", "options"}
CONTAINER_KEYS = {"name", "networks", "publish", "addresses", "expose", "links", "gw-priority"}
TOP_KEYS = {"daemon", "host", "networks", "containers", "docker-inspect", "events"}
EVENT_KEYS = {
    "run": CONTAINER_KEYS, "stop": {"container"}, "start": {"container"}, "restart": {"container"}, "rm": {"container"},
    "connect": {"container", "network", "address", "gw-priority"}, "disconnect": {"container", "network"},
    "network create": NETWORK_KEYS, "network rm": {"network"},
}


class _Ctx:
    """Where we are: the file name, for messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(self.source, key, problem)


def _type_name(t: type) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", dict: "a table", int: "an integer"}[t]


def _expect(ctx: _Ctx, key: str, value: Any, t: type) -> Any:
    if t is int and isinstance(value, bool):
        raise ctx.fail(key, f"expected {_type_name(t)}, got {value!r}")
    if not isinstance(value, t):
        raise ctx.fail(key, f"expected {_type_name(t)}, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _unknown(ctx: _Ctx, where: str, table: dict[str, Any], allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    for k in table:
        if k not in allowed:
            path = f"{where}.{k}" if where else k
            hint = ", ".join(sorted(allowed))
            if k == "ingress" or (isinstance(table.get(k), bool) and k == "swarm"):
                raise ctx.fail(path, "swarm ingress is out of scope for nftdocker")
            raise ctx.fail(path, f"unknown key (expected one of: {hint})")


def check_ifname(ctx: _Ctx, key: str, name: str) -> str:
    """A Linux interface name: 1-15 bytes, no whitespace, '/', quotes or control characters."""
    if not name:
        raise ctx.fail(key, "interface name is empty")
    if len(name.encode()) > 15:
        raise ctx.fail(key, f"interface name {name!r} is longer than 15 bytes")
    if _IFNAME_BAD.search(name) or name in (".", ".."):
        raise ctx.fail(key, f"{name!r} is not a valid interface name")
    return name


def _check_name(ctx: _Ctx, key: str, name: str, what: str) -> str:
    if not _NAME_OK.match(name) or len(name) > 128:
        raise ctx.fail(key, f"{name!r} is not a valid {what} name (letters, digits, '_', '.', '-')")
    return name


def _addr(ctx: _Ctx, key: str, text: Any) -> IPAddress:
    _expect(ctx, key, text, str)
    try:
        return ip_address(text)
    except ValueError:
        raise ctx.fail(key, f"{text!r} is not an IP address") from None


def _prefix(ctx: _Ctx, key: str, text: Any) -> IPv4Network | IPv6Network:
    _expect(ctx, key, text, str)
    try:
        return ip_network(text, strict=False)
    except ValueError:
        raise ctx.fail(key, f"{text!r} is not an IP prefix") from None


def _bool_option(ctx: _Ctx, key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "t"):
        return True
    if low in ("false", "0", "f"):
        return False
    raise ctx.fail(key, f"{text!r} is not a boolean ('true' or 'false')")


# --------------------------------------------------------------------------- daemon


def parse_daemon(ctx: _Ctx, raw: Any, where: str = "daemon") -> Daemon:
    table = _expect(ctx, where, raw, dict)
    _unknown(ctx, where, table, DAEMON_KEYS)
    kw: dict[str, Any] = {}
    for k, t in DAEMON_KEYS.items():
        if k in table:
            _expect(ctx, f"{where}.{k}", table[k], t)
    for k in ("userland-proxy", "icc", "ip-masq", "ip-forward", "ip-forward-no-drop", "iptables", "ip6tables", "ipv6"):
        if k in table:
            kw[k.replace("-", "_")] = table[k]
    if "fixed-cidr-v6" in table:
        net = _prefix(ctx, f"{where}.fixed-cidr-v6", table["fixed-cidr-v6"])
        if net.version != 6:
            raise ctx.fail(f"{where}.fixed-cidr-v6", f"{table['fixed-cidr-v6']!r} is not an IPv6 prefix")
        kw["fixed_cidr_v6"] = net
    if "ip" in table:
        kw["ip"] = _addr(ctx, f"{where}.ip", table["ip"])
    if "bridge" in table:
        b = table["bridge"]
        kw["bridge"] = b if b == "none" else check_ifname(ctx, f"{where}.bridge", b)
    if "bip" in table:
        try:
            iface = ip_interface(table["bip"])
        except ValueError:
            raise ctx.fail(f"{where}.bip", f"{table['bip']!r} is not an address with a prefix length") from None
        if not isinstance(iface, IPv4Interface) or "/" not in table["bip"]:
            raise ctx.fail(f"{where}.bip", f"{table['bip']!r} is not an IPv4 address with a prefix length")
        if iface.ip == iface.network.network_address and iface.network.prefixlen < 31:
            raise ctx.fail(f"{where}.bip", f"{table['bip']!r} is a network address; give the bridge's own address")
        kw["bip"] = (iface.ip, iface.network)
    if "fixed-cidr" in table:
        fkey = f"{where}.fixed-cidr"
        net = _prefix(ctx, fkey, table["fixed-cidr"])
        if net.version != 4:
            raise ctx.fail(fkey, f"{table['fixed-cidr']!r} is not an IPv4 prefix")
        if "bip" not in kw:
            # getDefaultBridgeIPAMConf on a fresh host: fixed-cidr is also the subnet, and IPAM
            # gives the bridge its first address.
            kw["bip"] = (_first_free(net, None), net)
        gw, subnet = kw["bip"]
        if not net.overlaps(subnet):
            raise ctx.fail(fkey, f"'{net}' is not inside the default bridge's subnet '{subnet}' (bip)")
        # A fixed-cidr wider than the subnet allocates from the whole subnet (RequestPool).
        kw["fixed_cidr"] = None if net.prefixlen <= subnet.prefixlen else net
    daemon = Daemon(**kw)
    if not daemon.iptables and not daemon.icc:
        raise ctx.fail(f"{where}.icc", "dockerd refuses icc = false together with iptables = false")
    if daemon.ipv6 and daemon.fixed_cidr_v6 is None and daemon.bridge != "none":
        raise ctx.fail(f"{where}.ipv6", "ipv6 = true needs fixed-cidr-v6 for the default bridge")
    return daemon


def parse_host(ctx: _Ctx, raw: Any) -> Host:
    table = _expect(ctx, "host", raw, dict)
    _unknown(ctx, "host", table, HOST_KEYS)
    kw = {}
    for k in HOST_KEYS:
        if k in table:
            kw[k.replace("-", "_")] = _expect(ctx, f"host.{k}", table[k], bool)
    return Host(**kw)


# --------------------------------------------------------------------------- networks


def default_bridge(daemon: Daemon) -> Network | None:
    """The default ``bridge`` network dockerd creates (daemon_unix.go initBridgeDriver)."""
    if daemon.bridge == "none":
        return None
    gw, subnet = daemon.bip
    v6 = daemon.ipv6 and daemon.fixed_cidr_v6 is not None
    return Network(
        name=DEFAULT_BRIDGE_NETWORK,
        bridge=daemon.bridge,
        subnets4=(subnet,),
        gateways4=(gw,),
        ip_ranges4=(daemon.fixed_cidr,) if daemon.fixed_cidr else (),
        subnets6=(daemon.fixed_cidr_v6,) if v6 and daemon.fixed_cidr_v6 else (),
        gateways6=(next(daemon.fixed_cidr_v6.hosts()),) if v6 and daemon.fixed_cidr_v6 else (),
        ipv6=v6,
        icc=daemon.icc,
        masquerade=daemon.ip_masq and daemon.iptables,
        host_binding=None if daemon.ip == IPv4Address("0.0.0.0") else daemon.ip,
        default_bridge=True,
    )


def default_ipv4_pools() -> Iterable[IPv4Network]:
    """Docker's default address pools (ipamutils): 172.17-31.0.0/16, then 192.168.0.0/16 in /20s."""
    for second in range(17, 32):
        yield IPv4Network(f"172.{second}.0.0/16")
    yield from IPv4Network("192.168.0.0/16").subnets(new_prefix=20)


def with_default_ipv4_pool(net: Network, earlier: list[Network]) -> Network:
    """A network listed with only an IPv6 subnet still gets IPv4 from Docker's default pools.

    Docker (defaultipam allocatePredefinedPool) takes the first default pool that overlaps no
    existing network's subnet; its gateway is the pool's first address (none when isolated).
    """
    taken = [s for n in earlier for s in n.subnets4]
    for pool in default_ipv4_pools():
        if not any(pool.overlaps(t) for t in taken):
            gws = () if net.gw_mode4 == "isolated" else (pool.network_address + 1,)
            return replace(net, subnets4=(pool,), gateways4=gws)
    return net


def _first_free(net: IPv4Network | IPv6Network, ip_range: IPv4Network | IPv6Network | None) -> IPAddress:
    """The address Docker's IPAM hands out first (the gateway it picks): the lowest one in the
    range (or subnet) that is not reserved (newPoolData: the subnet's first address, and for
    IPv4 its broadcast, except on a /31 or /32)."""
    within = ip_range if ip_range is not None else net
    reserved = set()
    if net.version == 6 or net.prefixlen < 31:
        reserved.add(net.network_address)
        if net.version == 4:
            reserved.add(net.broadcast_address)
    a = within.network_address
    while a in reserved and a < within.broadcast_address:
        a += 1
    return a


def _ipv4_wanted(raw: Any) -> bool:
    """A listed network's ``ipv4`` (already type-checked by parse_network); Docker's default is on."""
    return not (isinstance(raw, dict) and raw.get("ipv4") is False)


def parse_network(ctx: _Ctx, raw: Any, i: int, ordinal_ids: dict[str, str], where: str | None = None) -> Network:
    where = where or f"networks[{i}]"
    table = _expect(ctx, where, raw, dict)
    _unknown(ctx, where, table, NETWORK_KEYS)
    if "name" not in table:
        raise ctx.fail(f"{where}.name", "required key is missing")
    name = _check_name(ctx, f"{where}.name", _expect(ctx, f"{where}.name", table["name"], str), "network")
    if name in (DEFAULT_BRIDGE_NETWORK, "host", "none"):
        raise ctx.fail(f"{where}.name", f"{name!r} is a predefined Docker network and cannot be listed")
    if "subnets" not in table:
        raise ctx.fail(f"{where}.subnets", "required key is missing")
    subnets = _expect(ctx, f"{where}.subnets", table["subnets"], list)
    if not subnets:
        raise ctx.fail(f"{where}.subnets", "needs at least one subnet")
    nets = [_prefix(ctx, f"{where}.subnets[{j}]", s) for j, s in enumerate(subnets)]
    for j, (text, n) in enumerate(zip(subnets, nets)):
        try:
            ip_network(text, strict=True)
        except ValueError:
            raise ctx.fail(f"{where}.subnets[{j}]", f"{text!r} has host bits set (did you mean '{n}'?)") from None
    ipv6 = _expect(ctx, f"{where}.ipv6", table.get("ipv6", False), bool)
    ipv4 = _expect(ctx, f"{where}.ipv4", table.get("ipv4", True), bool)
    internal = _expect(ctx, f"{where}.internal", table.get("internal", False), bool)
    subnets4 = tuple(n for n in nets if n.version == 4)
    subnets6 = tuple(n for n in nets if n.version == 6)
    for j, n in enumerate(nets):
        if nets.index(n) != j:
            raise ctx.fail(f"{where}.subnets[{j}]", f"'{n}' is listed twice")
    if subnets6 and not ipv6:
        raise ctx.fail(f"{where}.ipv6", "an IPv6 subnet is listed but ipv6 is not true")
    if ipv6 and not subnets6:
        raise ctx.fail(f"{where}.subnets", "ipv6 = true needs an IPv6 subnet")
    if not ipv4:
        if not ipv6:
            raise ctx.fail(f"{where}.ipv4", "ipv4 = false needs ipv6 = true (Docker refuses a network with neither)")
        if subnets4:
            raise ctx.fail(f"{where}.subnets", f"'{subnets4[0]}' is an IPv4 subnet but ipv4 is false")
    for fam, group in ((4, subnets4), (6, subnets6)):
        if len(group) > 1:
            raise ctx.fail(f"{where}.subnets", f"a bridge network takes one IPv{fam} subnet, not {len(group)}")
    gws: list[IPAddress] = []
    if "gateways" in table:
        glist = _expect(ctx, f"{where}.gateways", table["gateways"], list)
        if len(glist) > len(nets):
            raise ctx.fail(f"{where}.gateways", "more gateways than subnets")
        for j, g in enumerate(glist):
            addr = _addr(ctx, f"{where}.gateways[{j}]", g)
            if addr not in nets[j]:
                raise ctx.fail(f"{where}.gateways[{j}]", f"{g!r} is not in subnet '{nets[j]}'")
            gws.append(addr)
    ranges = []
    for j, r in enumerate(_expect(ctx, f"{where}.ip-ranges", table.get("ip-ranges", []), list)):
        rkey = f"{where}.ip-ranges[{j}]"
        rng = _prefix(ctx, rkey, r)
        try:
            ip_network(r, strict=True)
        except ValueError:
            raise ctx.fail(rkey, f"{r!r} has host bits set (did you mean '{rng}'?)") from None
        if not any(rng.version == n.version and rng.subnet_of(n) for n in nets):  # type: ignore[arg-type]
            raise ctx.fail(rkey, f"'{rng}' is not inside any of the network's subnets")
        if any(x.version == rng.version for x in ranges):
            raise ctx.fail(rkey, f"a second IPv{rng.version} range (one per subnet)")
        ranges.append(rng)
    options = _expect(ctx, f"{where}.options", table.get("options", {}), dict)
    opts: dict[str, str] = {}
    for k, v in options.items():
        okey = f'{where}.options."{k}"'
        if isinstance(v, bool):
            v = "true" if v else "false"
        opts[k] = _expect(ctx, okey, v, str)
    return network_from_options(ctx, where, name, subnets4, subnets6, gws, internal, ipv6, opts, ordinal_ids,
                                ranges=ranges)


def network_from_options(
    ctx: _Ctx,
    where: str,
    name: str,
    subnets4: tuple[IPv4Network, ...],
    subnets6: tuple[IPv6Network, ...],
    gws: list[IPAddress],
    internal: bool,
    ipv6: bool,
    opts: dict[str, str],
    ids: dict[str, str],
    default: bool = False,
    ranges: Iterable[IPAddress | Any] = (),
) -> Network:
    """Build a Network from ``docker network create`` options (shared by TOML and inspect input).

    ``gws`` holds the gateways the user gave (``--gateway``), ``ranges`` the ``--ip-range``s. A
    subnet without a given gateway gets the one Docker's IPAM picks (ipamAllocateVersion): the
    first free address of its range, or none at all when that family's gateway mode is isolated
    (bridge GetSkipGwAlloc).
    """

    def okey(k: str) -> str:
        return f'{where}.options."{k}"'

    bridge = opts.get(OPT_BRIDGE + "name")
    if bridge is None:
        ident = ids.get(name, "")
        if not ident:
            raise ctx.fail(
                okey(OPT_BRIDGE + "name"),
                "is required: without it Docker names the bridge 'br-' plus the network id, which a scenario does not know",
            )
        bridge = "br-" + ident[:12]
    check_ifname(ctx, okey(OPT_BRIDGE + "name"), bridge)
    icc = _bool_option(ctx, okey(OPT_BRIDGE + "enable_icc"), opts.get(OPT_BRIDGE + "enable_icc", "true"))
    masq = _bool_option(
        ctx, okey(OPT_BRIDGE + "enable_ip_masquerade"), opts.get(OPT_BRIDGE + "enable_ip_masquerade", "true")
    )
    modes = []
    for fam in ("ipv4", "ipv6"):
        k = OPT_BRIDGE + "gateway_mode_" + fam
        mode = opts.get(k, "nat") or "nat"
        if mode not in GATEWAY_MODES:
            raise ctx.fail(okey(k), f"{mode!r} is not a gateway mode (nat, nat-unprotected, routed, isolated)")
        if mode == "isolated" and not internal:
            raise ctx.fail(okey(k), "gateway mode 'isolated' is only valid on an internal network")
        modes.append(mode)
    host_binding = None
    k = OPT_BRIDGE + "host_binding_ipv4"
    if k in opts and opts[k]:
        host_binding = _addr(ctx, okey(k), opts[k])
        if host_binding in (IPv4Address("0.0.0.0"),):
            host_binding = None
    host4 = host6 = None
    k = OPT + "host_ipv4"
    if opts.get(k):
        a = _addr(ctx, okey(k), opts[k])
        if a.version != 4:
            raise ctx.fail(okey(k), f"{opts[k]!r} is not an IPv4 address")
        host4 = a
    k = OPT + "host_ipv6"
    if opts.get(k):
        a = _addr(ctx, okey(k), opts[k])
        if a.version != 6:
            raise ctx.fail(okey(k), f"{opts[k]!r} is not an IPv6 address")
        host6 = a
    if opts.get(OPT_BRIDGE + "default_bridge", "false") == "true" and not default:
        raise ctx.fail(okey(OPT_BRIDGE + "default_bridge"), "only the daemon creates the default bridge")
    ranges = list(ranges)
    r4 = tuple(r for r in ranges if r.version == 4 and r.prefixlen > subnets4[0].prefixlen) if subnets4 else ()
    r6 = tuple(r for r in ranges if r.version == 6 and r.prefixlen > subnets6[0].prefixlen) if subnets6 else ()
    gw4 = tuple(g for g in gws if g.version == 4)
    gw6 = tuple(g for g in gws if g.version == 6)
    if subnets4 and not gw4 and modes[0] != "isolated":
        gw4 = (_first_free(subnets4[0], r4[0] if r4 else None),)
    if subnets6 and not gw6 and modes[1] != "isolated":
        gw6 = (_first_free(subnets6[0], r6[0] if r6 else None),)
    return Network(
        name=name,
        bridge=bridge,
        subnets4=subnets4,
        subnets6=subnets6,
        gateways4=gw4,  # type: ignore[arg-type]
        gateways6=gw6,  # type: ignore[arg-type]
        ip_ranges4=r4,  # type: ignore[arg-type]
        ip_ranges6=r6,  # type: ignore[arg-type]
        internal=internal,
        ipv6=ipv6,
        icc=icc,
        masquerade=masq,
        gw_mode4=modes[0],  # type: ignore[arg-type]
        gw_mode6=modes[1],  # type: ignore[arg-type]
        host_binding=host_binding,
        host_ipv4=host4,  # type: ignore[arg-type]
        host_ipv6=host6,  # type: ignore[arg-type]
        default_bridge=default,
        options=tuple(sorted(opts.items())),
    )


# --------------------------------------------------------------------------- containers

_PORT_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _port_range(ctx: _Ctx, key: str, text: str, what: str) -> tuple[int, int]:
    m = _PORT_RE.match(text)
    if not m:
        raise ctx.fail(key, f"{text!r} is not a {what} port or range")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    for p in (lo, hi):
        if not 1 <= p <= 65535:
            raise ctx.fail(key, f"port {p} is out of range 1-65535")
    if hi < lo:
        raise ctx.fail(key, f"range {text!r} ends before it starts")
    return lo, hi


def parse_publish(ctx: _Ctx, key: str, text: Any) -> list[PortSpec]:
    """``[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO]``, expanded as the docker CLI does."""
    _expect(ctx, key, text, str)
    spec = text.strip()
    proto = "tcp"
    if "/" in spec:
        spec, proto = spec.rsplit("/", 1)
        proto = proto.lower()
        if proto not in PROTOS:
            raise ctx.fail(key, f"{proto!r} is not a protocol (tcp, udp, sctp)")
    host_ip: IPAddress | None = None
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0 or spec[end + 1 : end + 2] != ":":
            raise ctx.fail(key, f"{text!r}: an IPv6 host address must look like [ADDR]:PORT:PORT")
        host_ip = _addr(ctx, key, spec[1:end])
        if host_ip.version != 6:
            raise ctx.fail(key, f"{text!r}: only IPv6 addresses go in brackets")
        rest = spec[end + 2 :].split(":")
        if len(rest) != 2:
            raise ctx.fail(key, f"{text!r} is not a valid -p mapping")
        hostport, cport = rest
    else:
        parts = spec.split(":")
        if len(parts) == 1:
            hostport, cport = "", parts[0]
        elif len(parts) == 2:
            hostport, cport = parts
        elif len(parts) == 3:
            ip_text, hostport, cport = parts
            if ip_text:
                try:
                    host_ip = ip_address(ip_text)
                except ValueError:
                    raise ctx.fail(key, f"{ip_text!r} in {text!r} is not an IP address") from None
        else:
            raise ctx.fail(key, f"{text!r} is not a valid -p mapping (put IPv6 host addresses in brackets)")
    clo, chi = _port_range(ctx, key, cport, "container")
    if hostport:
        hlo, hhi = _port_range(ctx, key, hostport, "host")
    else:
        hlo = hhi = 0
    out: list[PortSpec] = []
    if chi > clo:
        if hlo and (hhi - hlo) != (chi - clo):
            if hhi == hlo:
                raise ctx.fail(key, f"{text!r}: a container port range needs a host range of the same length")
            raise ctx.fail(key, f"{text!r}: host and container ranges differ in length")
        for n in range(chi - clo + 1):
            hp = hlo + n if hlo else 0
            out.append(PortSpec(clo + n, proto, host_ip, hp, hp))  # type: ignore[arg-type]
    else:
        out.append(PortSpec(clo, proto, host_ip, hlo, hhi))  # type: ignore[arg-type]
    return out


def parse_container(ctx: _Ctx, raw: Any, i: int, network_names: set[str], where: str | None = None) -> Container:
    where = where or f"containers[{i}]"
    table = _expect(ctx, where, raw, dict)
    _unknown(ctx, where, table, CONTAINER_KEYS)
    if "name" not in table:
        raise ctx.fail(f"{where}.name", "required key is missing")
    name = _check_name(ctx, f"{where}.name", _expect(ctx, f"{where}.name", table["name"], str), "container")
    nets = _expect(ctx, f"{where}.networks", table.get("networks", [DEFAULT_BRIDGE_NETWORK]), list)
    for j, n in enumerate(nets):
        _expect(ctx, f"{where}.networks[{j}]", n, str)
        if n in ("host", "none"):
            raise ctx.fail(f"{where}.networks[{j}]", f"network {n!r} has no bridge firewall; leave the container out")
        if n not in network_names:
            raise ctx.fail(f"{where}.networks[{j}]", f"no network named {n!r}")
        if nets.index(n) != j:
            raise ctx.fail(f"{where}.networks[{j}]", f"network {n!r} is listed twice")
    publish: list[PortSpec] = []
    for j, p in enumerate(_expect(ctx, f"{where}.publish", table.get("publish", []), list)):
        publish.extend(parse_publish(ctx, f"{where}.publish[{j}]", p))
    addrs: list[tuple[str, IPAddress]] = []
    for k, v in _expect(ctx, f"{where}.addresses", table.get("addresses", {}), dict).items():
        akey = f"{where}.addresses.{k}"
        if k not in nets:
            raise ctx.fail(akey, f"the container is not on network {k!r}")
        values = v if isinstance(v, list) else [v]
        for x in values:
            addrs.append((k, _addr(ctx, akey, x)))
    expose: list[tuple[int, str]] = []
    for j, e in enumerate(_expect(ctx, f"{where}.expose", table.get("expose", []), list)):
        ekey = f"{where}.expose[{j}]"
        if isinstance(e, int) and not isinstance(e, bool):
            e = str(e)
        _expect(ctx, ekey, e, str)
        port_text, _, proto = e.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in PROTOS:
            raise ctx.fail(ekey, f"{proto!r} is not a protocol (tcp, udp, sctp)")
        lo, hi = _port_range(ctx, ekey, port_text, "container")
        expose.extend((p, proto) for p in range(lo, hi + 1))
    links: list[Link] = []
    for j, l in enumerate(_expect(ctx, f"{where}.links", table.get("links", []), list)):
        lkey = f"{where}.links[{j}]"
        _expect(ctx, lkey, l, str)
        target, _, alias = l.partition(":")
        if not target:
            raise ctx.fail(lkey, f"{l!r} is not NAME:ALIAS")
        links.append(Link(_check_name(ctx, lkey, target.lstrip("/"), "container"), alias or target.lstrip("/")))
    prio: list[tuple[str, int]] = []
    for k, v in _expect(ctx, f"{where}.gw-priority", table.get("gw-priority", {}), dict).items():
        pkey = f"{where}.gw-priority.{k}"
        if k not in nets:
            raise ctx.fail(pkey, f"the container is not on network {k!r}")
        _expect(ctx, pkey, v, int)
        if not -(1 << 63) <= v < (1 << 63):
            raise ctx.fail(pkey, f"{v} does not fit Docker's 64-bit priority")
        if v:
            prio.append((k, v))
    return Container(
        name=name,
        networks=tuple(nets),
        publish=tuple(publish),
        addresses=tuple(addrs),
        expose=tuple(expose),  # type: ignore[arg-type]
        links=tuple(links),
        gw_priority=tuple(prio),
    )


# --------------------------------------------------------------------------- whole file


def load(path: str | Path) -> Scenario:
    """Load a scenario file (``-``: standard input); raise ScenarioError on anything wrong."""
    from nftdocker.inputs import STDIN, STDIN_NAME, read_bytes

    data = read_bytes(path, stdin=True)
    if str(path) == STDIN:
        return loads(data, source=STDIN_NAME, base=Path("."))
    return loads(data, source=str(path), base=Path(path).parent)


def loads(data: bytes | str, source: str = "<scenario>", base: Path | None = None) -> Scenario:
    ctx = _Ctx(source)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ctx.fail("", f"not UTF-8 text (byte {e.start})") from None
    else:
        text = data
    with gc_paused():
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ctx.fail("", f"TOML syntax: {e}") from None
        return from_document(ctx, doc, base or Path("."))


def from_document(ctx: _Ctx, doc: dict[str, Any], base: Path, inspect: Any = None) -> Scenario:
    _unknown(ctx, "", doc, TOP_KEYS)
    daemon = parse_daemon(ctx, doc.get("daemon", {}))
    host = parse_host(ctx, doc.get("host", {}))
    if "docker-inspect" in doc or inspect is not None:
        if "networks" in doc or "containers" in doc:
            key = "networks" if "networks" in doc else "containers"
            raise ctx.fail(key, "cannot be combined with docker-inspect (the dump lists them)")
        if inspect is None:
            rel = _expect(ctx, "docker-inspect", doc["docker-inspect"], str)
            dump_path = base / rel
            inspect = read_inspect(ctx, dump_path)
            ictx = _Ctx(str(dump_path))
        else:
            ictx = ctx
        networks, containers = from_inspect(ictx, inspect, daemon)
    else:
        dflt = default_bridge(daemon)
        networks = [dflt] if dflt else []
        raw_nets = _expect(ctx, "networks", doc.get("networks", []), list)
        for i, rn in enumerate(raw_nets):
            net = parse_network(ctx, rn, i, {})
            if not net.subnets4 and _ipv4_wanted(rn):
                net = with_default_ipv4_pool(net, networks)
            networks.append(net)
        names = {n.name for n in networks}
        containers = []
        raw_ctrs = _expect(ctx, "containers", doc.get("containers", []), list)
        for i, rc in enumerate(raw_ctrs):
            containers.append(parse_container(ctx, rc, i, names))
        _check_unique(ctx, "networks", [n.name for n in networks], "name")
        _check_unique(ctx, "containers", [c.name for c in containers], "name")
        _check_bridges(ctx, networks, "networks")
        _check_links(ctx, containers)
    events = parse_events(ctx, doc.get("events", []), networks, containers)
    return Scenario(daemon, host, tuple(networks), tuple(containers), ctx.source, events)


def parse_events(ctx: _Ctx, raw: Any, networks: list[Network], containers: list[Container]) -> tuple[Event, ...]:
    """``[[events]]``: each checked against the host as it is at that point (what Docker would refuse
    is bad input, named by its index)."""
    nets = {n.name: n for n in networks}
    ctrs = {c.name: [True, list(c.networks)] for c in containers}  # name -> [running, networks]
    out: list[Event] = []
    for i, rv in enumerate(_expect(ctx, "events", raw, list)):
        where = f"events[{i}]"
        table = _expect(ctx, where, rv, dict)
        do = _expect(ctx, f"{where}.do", table.get("do"), str) if "do" in table else None
        if do is None:
            raise ctx.fail(f"{where}.do", "required key is missing")
        if do not in EVENT_KEYS:
            raise ctx.fail(f"{where}.do", f"{do!r} is not an event (expected one of: {', '.join(EVENT_KINDS)})")
        args = {k: v for k, v in table.items() if k != "do"}
        _unknown(ctx, where, args, EVENT_KEYS[do])

        def name_of(key: str) -> str:
            if key not in args:
                raise ctx.fail(f"{where}.{key}", "required key is missing")
            return _expect(ctx, f"{where}.{key}", args[key], str)

        def existing(key: str, pool: dict[str, Any], what: str) -> str:
            n = name_of(key)
            if n not in pool:
                raise ctx.fail(f"{where}.{key}", f"{what} {n!r} does not exist at this point")
            return n

        if do == "run":
            ctr = parse_container(ctx, args, i, set(nets), where=where)
            if ctr.name in ctrs:
                raise ctx.fail(f"{where}.name", f"container {ctr.name!r} exists already at this point")
            _check_links(ctx, list(containers) + [e.spec for e in out if e.do == "run"] + [ctr])  # type: ignore[list-item]
            ctrs[ctr.name] = [True, list(ctr.networks)]
            out.append(Event(do, container=ctr.name, spec=ctr))
        elif do in ("stop", "start", "restart", "rm"):
            c = existing("container", ctrs, "container")
            if do == "stop" and not ctrs[c][0]:
                raise ctx.fail(f"{where}.container", f"container {c!r} is not running")
            if do == "start" and ctrs[c][0]:
                raise ctx.fail(f"{where}.container", f"container {c!r} is already running")
            if do == "rm":
                del ctrs[c]
            else:
                ctrs[c][0] = do != "stop"
            out.append(Event(do, container=c))
        elif do in ("connect", "disconnect"):
            c = existing("container", ctrs, "container")
            n = existing("network", nets, "network")
            attached = n in ctrs[c][1]
            if do == "connect" and attached:
                raise ctx.fail(f"{where}.network", f"container {c!r} is already connected to {n!r}")
            if do == "disconnect" and not attached:
                raise ctx.fail(f"{where}.network", f"container {c!r} is not connected to {n!r}")
            addrs: tuple[IPAddress, ...] = ()
            prio = None
            if do == "connect":
                if "address" in args:
                    addrs = (_addr(ctx, f"{where}.address", args["address"]),)
                if "gw-priority" in args:
                    prio = _expect(ctx, f"{where}.gw-priority", args["gw-priority"], int)
                ctrs[c][1].append(n)
            else:
                ctrs[c][1].remove(n)
            out.append(Event(do, container=c, network=n, addresses=addrs, gw_priority=prio))
        elif do == "network create":
            net = parse_network(ctx, args, i, {}, where=where)
            if not net.subnets4 and net.name != DEFAULT_BRIDGE_NETWORK:
                net = with_default_ipv4_pool(net, list(nets.values()))
            if net.name in nets:
                raise ctx.fail(f"{where}.name", f"network {net.name!r} exists already at this point")
            for other in nets.values():
                if other.bridge == net.bridge:
                    raise ctx.fail(f"{where}.options", f"bridge {net.bridge!r} is already used by network {other.name!r}")
                for a in net.subnets4 + net.subnets6:  # type: ignore[operator]
                    for b in other.subnets4 + other.subnets6:  # type: ignore[operator]
                        if a.version == b.version and a.overlaps(b):
                            raise ctx.fail(f"{where}.subnets", f"'{a}' overlaps '{b}' of network {other.name!r}")
            nets[net.name] = net
            out.append(Event(do, network=net.name, spec=net))
        else:  # network rm
            n = existing("network", nets, "network")
            if nets[n].default_bridge:
                raise ctx.fail(f"{where}.network", f"{n!r} is Docker's default network and cannot be removed")
            users = sorted(c for c, (_, cn) in ctrs.items() if n in cn)
            if users:
                raise ctx.fail(f"{where}.network", f"network {n!r} still has containers: {', '.join(users)}")
            del nets[n]
            out.append(Event(do, network=n))
    return tuple(out)


def _check_unique(ctx: _Ctx, where: str, names: list[str], key: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ctx.fail(f"{where}[{i}].{key}", f"{n!r} is used twice")
        seen.add(n)


def _check_bridges(ctx: _Ctx, networks: list[Network], where: str) -> None:
    seen: dict[str, str] = {}
    for i, n in enumerate(networks):
        if n.bridge in seen:
            idx = i - (1 if networks and networks[0].default_bridge else 0)
            raise ctx.fail(
                f'{where}[{idx}].options."{OPT_BRIDGE}name"',
                f"bridge {n.bridge!r} is already used by network {seen[n.bridge]!r}",
            )
        seen[n.bridge] = n.name
    # Overlaps: sort each family's prefixes by start; a prefix overlaps an earlier one exactly
    # when it starts before the furthest end seen so far.
    spans = sorted(
        (s.version, int(s.network_address), int(s.broadcast_address), i, s)
        for i, n in enumerate(networks)
        for s in n.subnets4 + n.subnets6  # type: ignore[operator]
    )
    reach: dict[int, tuple[int, int, Any]] = {}
    for version, start, end, i, s in spans:
        prev = reach.get(version)
        if prev is not None and start <= prev[0]:
            j, other = prev[1], prev[2]
            late, early = (i, j) if i > j else (j, i)
            sa = s if late == i else other
            sb = other if late == i else s
            idx = late - (1 if networks[0].default_bridge else 0)
            raise ctx.fail(f"{where}[{idx}].subnets", f"'{sa}' overlaps '{sb}' of network {networks[early].name!r}")
        if prev is None or end > prev[0]:
            reach[version] = (end, i, s)


def _check_links(ctx: _Ctx, containers: list[Container]) -> None:
    started: set[str] = set()
    for i, c in enumerate(containers):
        for j, l in enumerate(c.links):
            if l.name not in started:
                raise ctx.fail(f"containers[{i}].links[{j}]", f"no container named {l.name!r} started before {c.name!r}")
        started.add(c.name)


# --------------------------------------------------------------------------- docker inspect


def read_inspect(ctx: _Ctx, dump_path: Path) -> Any:
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


def _get(ctx: _Ctx, obj: dict[str, Any], where: str, key: str, t: type, default: Any = None, *, null: bool = False) -> Any:
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


def _typed(ctx: _Ctx, path: str, value: Any, t: type) -> Any:
    """``value`` if it is of JSON type ``t`` (an integer is not a boolean); else a located error."""
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ctx.fail(path, f"expected {_JSON_TYPE[t]}, got {_describe_json(value)}")
    return value


def _describe_json(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return _describe(value)


def _started(ctx: _Ctx, where: str, obj: dict[str, Any]) -> datetime:
    """When a container last started (``State.StartedAt``; else its ``Created``): Docker programs
    a container's rules when it starts, so a container stopped and started again comes after the others."""
    created = _created(ctx, where, obj)
    state = _get(ctx, obj, where, "State", dict, {}, null=True)
    if state.get("StartedAt"):
        t = _created(ctx, f"{where}.State", state, "StartedAt")
        if t != datetime.min and t.year > 1:
            return t
    return created


def _created(ctx: _Ctx, where: str, obj: dict[str, Any], key: str = "Created") -> datetime:
    text = _get(ctx, obj, where, key, str, "")
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text)
    if not m:
        return datetime.min
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    try:
        return datetime.fromisoformat(f"{m.group(1)}.{frac}")
    except ValueError:
        raise ctx.fail(f"{where}.{key}", f"{text!r} is not a time") from None


def from_inspect(ctx: _Ctx, dump: Any, daemon: Daemon) -> tuple[list[Network], list[Container]]:
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
    created.update({id(o): _started(ctx, where, o) for where, o in containers_in})
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
        if opts.get(OPT_BRIDGE + "default_bridge") == "true" or name == DEFAULT_BRIDGE_NETWORK:
            continue  # the default bridge comes from [daemon]
        ids[name] = ident
        subs: list[Any] = []
        gws: list[IPAddress] = []  # only the ones the user gave: Docker 28 shows no other
        ranges: list[Any] = []
        for ckey, subnet, gw, iprange in pools:
            if not subnet:
                raise ctx.fail(f"{ckey}.Subnet", "required key is missing or empty")
            s = _prefix(ctx, f"{ckey}.Subnet", subnet)
            subs.append(s)
            if gw:
                gws.append(_addr(ctx, f"{ckey}.Gateway", gw))
            if iprange:
                ranges.append(_prefix(ctx, f"{ckey}.IPRange", iprange))
        subs.sort(key=lambda n: n.version)
        ipv4 = _get(ctx, o, where, "EnableIPv4", bool, True)  # absent before Docker 28: always on
        s4 = tuple(s for s in subs if s.version == 4) if ipv4 else ()
        s6 = tuple(s for s in subs if s.version == 6) if ipv6 else ()
        gws = [g for g in gws if (g.version == 4 and ipv4) or (g.version == 6 and ipv6)]
        user_nets.append(
            network_from_options(
                ctx, where, _check_name(ctx, f"{where}.Name", name, "network"), s4, s6, gws,
                internal, ipv6 and bool(s6), opts, ids, ranges=ranges,
            )
        )
    networks = ([dflt] if dflt else []) + user_nets
    known = {n.name for n in networks}
    containers: list[Container] = []
    for where, o in containers_in:
        containers.append(_container_from_inspect(ctx, where, o, known, by_id))
    _check_bridges(ctx, networks, "networks")
    return networks, containers


def _container_from_inspect(
    ctx: _Ctx, where: str, o: dict[str, Any], known: set[str], by_id: dict[str, str]
) -> Container:
    name = _get(ctx, o, where, "Name", str, _REQUIRED).lstrip("/")
    _check_name(ctx, f"{where}.Name", name, "container")
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
            addrs.append((n, _addr(ctx, f"{nkey}.IPAddress", ip4)))
        if ip6:
            addrs.append((n, _addr(ctx, f"{nkey}.GlobalIPv6Address", ip6)))
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


def _inspect_port(ctx: _Ctx, key: str, text: str, lowest: int) -> tuple[int, int]:
    """A port (or ``LO-HI``) in a dump: the numbers ``lowest``-65535."""
    m = _PORT_RE.match(text)
    lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (-1, -1)
    if not m or not (lowest <= lo <= hi <= 65535):
        raise ctx.fail(key, f"{text!r} is not a port {lowest}-65535" + (" or range" if "-" in text else ""))
    return lo, hi


def _bindings(ctx: _Ctx, key: str, raw: Any) -> list[tuple[str, str, str]]:
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
    ctx: _Ctx, where: str, host_config: dict[str, Any], settings: dict[str, Any]
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
        got = [(bkey, hip, hp, _addr(ctx, f"{bkey}.HostIp", hip) if hip else None) for bkey, hip, hp in actual.get(key, [])]
        req = requested.get(key) or [(f"{akey}.{key}[0]", "", got[0][2]) for _ in got[:1]]
        for bkey, hip_text, hp_req in req:
            hip = _addr(ctx, f"{bkey}.HostIp", hip_text) if hip_text else None
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
