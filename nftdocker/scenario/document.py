"""The ``[[networks]]`` and ``[[containers]]`` of a scenario document into the model's networks and
containers, in the order listed, with the checks across them (unique names, one bridge per
network, no overlapping subnets, links only to containers started before)."""

from __future__ import annotations

from typing import Any

from nftdocker.model import DEFAULT_BRIDGE_NETWORK, PROTOS, Container, Daemon, IPAddress, Link, Network, PortSpec
from nftdocker.scenario.context import Context, check_name, expect, parse_addr, table_name, unknown_keys
from nftdocker.scenario.daemon import default_bridge
from nftdocker.scenario.network import check_bridges, ipv4_wanted, parse_network, with_default_ipv4_pool
from nftdocker.scenario.publish import parse_publish, port_range

CONTAINER_KEYS = {"name", "networks", "publish", "addresses", "expose", "links", "gw-priority"}


def from_tables(ctx: Context, doc: dict[str, Any], daemon: Daemon) -> tuple[list[Network], list[Container]]:
    """The networks (the default bridge first, unless ``bridge = "none"``) and containers ``doc`` lists."""
    dflt = default_bridge(daemon)
    networks = [dflt] if dflt else []
    raw_nets = expect(ctx, "networks", doc.get("networks", []), list)
    for i, rn in enumerate(raw_nets):
        net = parse_network(ctx, rn, i, {})
        if not net.subnets4 and ipv4_wanted(rn):
            net = with_default_ipv4_pool(net, networks)
        networks.append(net)
    names = {n.name for n in networks}
    containers = []
    raw_ctrs = expect(ctx, "containers", doc.get("containers", []), list)
    for i, rc in enumerate(raw_ctrs):
        containers.append(parse_container(ctx, rc, i, names))
    check_unique(ctx, "networks", [n.name for n in networks], "name")
    check_unique(ctx, "containers", [c.name for c in containers], "name")
    check_bridges(ctx, networks, "networks")
    check_links(ctx, containers)
    return networks, containers


def parse_container(ctx: Context, raw: Any, i: int, network_names: set[str], where: str | None = None) -> Container:
    """A ``[[containers]]`` table (or ``[[events]]``' ``run``, at ``where``) on networks ``network_names`` holds."""
    where = where or f"containers[{i}]"
    table = expect(ctx, where, raw, dict)
    unknown_keys(ctx, where, table, CONTAINER_KEYS)
    name = table_name(ctx, where, table, "container")
    nets = expect(ctx, f"{where}.networks", table.get("networks", [DEFAULT_BRIDGE_NETWORK]), list)
    for j, n in enumerate(nets):
        expect(ctx, f"{where}.networks[{j}]", n, str)
        if n in ("host", "none"):
            raise ctx.fail(f"{where}.networks[{j}]", f"network {n!r} has no bridge firewall; leave the container out")
        if n not in network_names:
            raise ctx.fail(f"{where}.networks[{j}]", f"no network named {n!r}")
        if nets.index(n) != j:
            raise ctx.fail(f"{where}.networks[{j}]", f"network {n!r} is listed twice")
    publish: list[PortSpec] = []
    for j, p in enumerate(expect(ctx, f"{where}.publish", table.get("publish", []), list)):
        publish.extend(parse_publish(ctx, f"{where}.publish[{j}]", p))
    addrs: list[tuple[str, IPAddress]] = []
    for k, v in expect(ctx, f"{where}.addresses", table.get("addresses", {}), dict).items():
        akey = f"{where}.addresses.{k}"
        if k not in nets:
            raise ctx.fail(akey, f"the container is not on network {k!r}")
        values = v if isinstance(v, list) else [v]
        for x in values:
            addrs.append((k, parse_addr(ctx, akey, x)))
    expose: list[tuple[int, str]] = []
    for j, e in enumerate(expect(ctx, f"{where}.expose", table.get("expose", []), list)):
        ekey = f"{where}.expose[{j}]"
        if isinstance(e, int) and not isinstance(e, bool):
            e = str(e)
        expect(ctx, ekey, e, str)
        port_text, _, proto = e.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in PROTOS:
            raise ctx.fail(ekey, f"{proto!r} is not a protocol ({', '.join(PROTOS)})")
        lo, hi = port_range(ctx, ekey, port_text, "container")
        expose.extend((p, proto) for p in range(lo, hi + 1))
    links: list[Link] = []
    for j, l in enumerate(expect(ctx, f"{where}.links", table.get("links", []), list)):
        lkey = f"{where}.links[{j}]"
        expect(ctx, lkey, l, str)
        target, _, alias = l.partition(":")
        if not target:
            raise ctx.fail(lkey, f"{l!r} is not NAME:ALIAS")
        links.append(Link(check_name(ctx, lkey, target.lstrip("/"), "container"), alias or target.lstrip("/")))
    prio: list[tuple[str, int]] = []
    for k, v in expect(ctx, f"{where}.gw-priority", table.get("gw-priority", {}), dict).items():
        pkey = f"{where}.gw-priority.{k}"
        if k not in nets:
            raise ctx.fail(pkey, f"the container is not on network {k!r}")
        expect(ctx, pkey, v, int)
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


def check_unique(ctx: Context, where: str, names: list[str], key: str) -> None:
    """Refuse the second use of a name in the array ``where``."""
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ctx.fail(f"{where}[{i}].{key}", f"{n!r} is used twice")
        seen.add(n)


def check_links(ctx: Context, containers: list[Container]) -> None:
    """Every ``--link`` names a container started before the one that links to it."""
    started: set[str] = set()
    for i, c in enumerate(containers):
        for j, l in enumerate(c.links):
            if l.name not in started:
                raise ctx.fail(f"containers[{i}].links[{j}]", f"no container named {l.name!r} started before {c.name!r}")
        started.add(c.name)
