"""A bridge network into the model: from a ``[[networks]]`` table (or ``[[events]]``' ``network
create``), or from ``docker network create`` options as a dump shows them; Docker's IPAM choices
(the gateway it picks, its default IPv4 pools) and the checks across networks (bridges, overlaps).
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from typing import Any, Iterable

from nftdocker.model import BRIDGE_OPT, DEFAULT_BRIDGE_NETWORK, GATEWAY_MODES, NETWORK_OPT, IPAddress, Network
from nftdocker.scenario.context import Context, bool_option, check_ifname, expect, parse_addr, parse_prefix, table_name, unknown_keys

NETWORK_KEYS = {"name", "subnets", "gateways", "internal", "ipv6", "ipv4", "ip-ranges", "options"}


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


def first_free(net: IPv4Network | IPv6Network, ip_range: IPv4Network | IPv6Network | None) -> IPAddress:
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


def ipv4_wanted(raw: Any) -> bool:
    """A listed network's ``ipv4`` (already type-checked by parse_network); Docker's default is on."""
    return not (isinstance(raw, dict) and raw.get("ipv4") is False)


def parse_network(ctx: Context, raw: Any, i: int, ordinal_ids: dict[str, str], where: str | None = None) -> Network:
    """A ``[[networks]]`` table (or ``[[events]]``' ``network create``, at ``where``)."""
    where = where or f"networks[{i}]"
    table = expect(ctx, where, raw, dict)
    unknown_keys(ctx, where, table, NETWORK_KEYS)
    name = table_name(ctx, where, table, "network")
    if name in (DEFAULT_BRIDGE_NETWORK, "host", "none"):
        raise ctx.fail(f"{where}.name", f"{name!r} is a predefined Docker network and cannot be listed")
    if "subnets" not in table:
        raise ctx.fail(f"{where}.subnets", "required key is missing")
    subnets = expect(ctx, f"{where}.subnets", table["subnets"], list)
    if not subnets:
        raise ctx.fail(f"{where}.subnets", "needs at least one subnet")
    nets = [parse_prefix(ctx, f"{where}.subnets[{j}]", s) for j, s in enumerate(subnets)]
    for j, (text, n) in enumerate(zip(subnets, nets)):
        try:
            ip_network(text, strict=True)
        except ValueError:
            raise ctx.fail(f"{where}.subnets[{j}]", f"{text!r} has host bits set (did you mean '{n}'?)") from None
    ipv6 = expect(ctx, f"{where}.ipv6", table.get("ipv6", False), bool)
    ipv4 = expect(ctx, f"{where}.ipv4", table.get("ipv4", True), bool)
    internal = expect(ctx, f"{where}.internal", table.get("internal", False), bool)
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
        glist = expect(ctx, f"{where}.gateways", table["gateways"], list)
        if len(glist) > len(nets):
            raise ctx.fail(f"{where}.gateways", "more gateways than subnets")
        for j, g in enumerate(glist):
            addr = parse_addr(ctx, f"{where}.gateways[{j}]", g)
            if addr not in nets[j]:
                raise ctx.fail(f"{where}.gateways[{j}]", f"{g!r} is not in subnet '{nets[j]}'")
            gws.append(addr)
    ranges = []
    for j, r in enumerate(expect(ctx, f"{where}.ip-ranges", table.get("ip-ranges", []), list)):
        rkey = f"{where}.ip-ranges[{j}]"
        rng = parse_prefix(ctx, rkey, r)
        try:
            ip_network(r, strict=True)
        except ValueError:
            raise ctx.fail(rkey, f"{r!r} has host bits set (did you mean '{rng}'?)") from None
        if not any(rng.version == n.version and rng.subnet_of(n) for n in nets):  # type: ignore[arg-type]
            raise ctx.fail(rkey, f"'{rng}' is not inside any of the network's subnets")
        if any(x.version == rng.version for x in ranges):
            raise ctx.fail(rkey, f"a second IPv{rng.version} range (one per subnet)")
        ranges.append(rng)
    options = expect(ctx, f"{where}.options", table.get("options", {}), dict)
    opts: dict[str, str] = {}
    for k, v in options.items():
        okey = f'{where}.options."{k}"'
        if isinstance(v, bool):
            v = "true" if v else "false"
        opts[k] = expect(ctx, okey, v, str)
    return network_from_options(ctx, where, name, subnets4, subnets6, gws, internal, ipv6, opts, ordinal_ids,
                                ranges=ranges)


def network_from_options(
    ctx: Context,
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

    bridge = opts.get(BRIDGE_OPT + "name")
    if bridge is None:
        ident = ids.get(name, "")
        if not ident:
            raise ctx.fail(
                okey(BRIDGE_OPT + "name"),
                "is required: without it Docker names the bridge 'br-' plus the network id, which a scenario does not know",
            )
        bridge = "br-" + ident[:12]
    check_ifname(ctx, okey(BRIDGE_OPT + "name"), bridge)
    icc = bool_option(ctx, okey(BRIDGE_OPT + "enable_icc"), opts.get(BRIDGE_OPT + "enable_icc", "true"))
    masq = bool_option(
        ctx, okey(BRIDGE_OPT + "enable_ip_masquerade"), opts.get(BRIDGE_OPT + "enable_ip_masquerade", "true")
    )
    modes = []
    for fam in ("ipv4", "ipv6"):
        k = BRIDGE_OPT + "gateway_mode_" + fam
        mode = opts.get(k, "nat") or "nat"
        if mode not in GATEWAY_MODES:
            raise ctx.fail(okey(k), f"{mode!r} is not a gateway mode ({', '.join(GATEWAY_MODES)})")
        if mode == "isolated" and not internal:
            raise ctx.fail(okey(k), "gateway mode 'isolated' is only valid on an internal network")
        modes.append(mode)
    host_binding = None
    k = BRIDGE_OPT + "host_binding_ipv4"
    if k in opts and opts[k]:
        host_binding = parse_addr(ctx, okey(k), opts[k])
        if host_binding in (IPv4Address("0.0.0.0"),):
            host_binding = None
    hosts: dict[int, IPAddress | None] = {4: None, 6: None}  # host_ipv4, host_ipv6: the SNAT source
    for v in hosts:
        k = NETWORK_OPT + f"host_ipv{v}"
        if opts.get(k):
            a = parse_addr(ctx, okey(k), opts[k])
            if a.version != v:
                raise ctx.fail(okey(k), f"{opts[k]!r} is not an IPv{v} address")
            hosts[v] = a
    host4, host6 = hosts[4], hosts[6]
    if opts.get(BRIDGE_OPT + "default_bridge", "false") == "true" and not default:
        raise ctx.fail(okey(BRIDGE_OPT + "default_bridge"), "only the daemon creates the default bridge")
    ranges = list(ranges)
    r4 = tuple(r for r in ranges if r.version == 4 and r.prefixlen > subnets4[0].prefixlen) if subnets4 else ()
    r6 = tuple(r for r in ranges if r.version == 6 and r.prefixlen > subnets6[0].prefixlen) if subnets6 else ()
    gw4 = tuple(g for g in gws if g.version == 4)
    gw6 = tuple(g for g in gws if g.version == 6)
    if subnets4 and not gw4 and modes[0] != "isolated":
        gw4 = (first_free(subnets4[0], r4[0] if r4 else None),)
    if subnets6 and not gw6 and modes[1] != "isolated":
        gw6 = (first_free(subnets6[0], r6[0] if r6 else None),)
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


def check_bridges(ctx: Context, networks: list[Network], where: str) -> None:
    """No two networks share a bridge, and no subnet overlaps another network's (what Docker refuses)."""
    seen: dict[str, str] = {}
    for i, n in enumerate(networks):
        if n.bridge in seen:
            idx = i - (1 if networks and networks[0].default_bridge else 0)
            raise ctx.fail(
                f'{where}[{idx}].options."{BRIDGE_OPT}name"',
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
