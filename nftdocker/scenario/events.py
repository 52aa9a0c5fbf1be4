"""``[[events]]``: the host's history after the listed networks and containers were created and
started, each docker command checked against the host as it is at that point."""

from __future__ import annotations

from typing import Any

from nftdocker.model import DEFAULT_BRIDGE_NETWORK, EVENT_KINDS, Container, Event, IPAddress, Network
from nftdocker.scenario.context import Context, expect, parse_addr, unknown_keys
from nftdocker.scenario.document import CONTAINER_KEYS, check_links, parse_container
from nftdocker.scenario.network import NETWORK_KEYS, parse_network, with_default_ipv4_pool

EVENT_KEYS = {
    "run": CONTAINER_KEYS, "stop": {"container"}, "start": {"container"}, "restart": {"container"}, "rm": {"container"},
    "connect": {"container", "network", "address", "gw-priority"}, "disconnect": {"container", "network"},
    "network create": NETWORK_KEYS, "network rm": {"network"},
}


def parse_events(ctx: Context, raw: Any, networks: list[Network], containers: list[Container]) -> tuple[Event, ...]:
    """``[[events]]``: each checked against the host as it is at that point (what Docker would refuse
    is bad input, named by its index)."""
    nets = {n.name: n for n in networks}
    ctrs = {c.name: [True, list(c.networks)] for c in containers}  # name -> [running, networks]
    out: list[Event] = []
    for i, rv in enumerate(expect(ctx, "events", raw, list)):
        where = f"events[{i}]"
        table = expect(ctx, where, rv, dict)
        do = expect(ctx, f"{where}.do", table.get("do"), str) if "do" in table else None
        if do is None:
            raise ctx.fail(f"{where}.do", "required key is missing")
        if do not in EVENT_KEYS:
            raise ctx.fail(f"{where}.do", f"{do!r} is not an event (expected one of: {', '.join(EVENT_KINDS)})")
        args = {k: v for k, v in table.items() if k != "do"}
        unknown_keys(ctx, where, args, EVENT_KEYS[do])

        def name_of(key: str) -> str:
            if key not in args:
                raise ctx.fail(f"{where}.{key}", "required key is missing")
            return expect(ctx, f"{where}.{key}", args[key], str)

        def existing(key: str, pool: dict[str, Any], what: str) -> str:
            n = name_of(key)
            if n not in pool:
                raise ctx.fail(f"{where}.{key}", f"{what} {n!r} does not exist at this point")
            return n

        if do == "run":
            ctr = parse_container(ctx, args, i, set(nets), where=where)
            if ctr.name in ctrs:
                raise ctx.fail(f"{where}.name", f"container {ctr.name!r} exists already at this point")
            check_links(ctx, list(containers) + [e.spec for e in out if e.do == "run"] + [ctr])  # type: ignore[list-item]
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
                    addrs = (parse_addr(ctx, f"{where}.address", args["address"]),)
                if "gw-priority" in args:
                    prio = expect(ctx, f"{where}.gw-priority", args["gw-priority"], int)
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
