"""``[daemon]`` (daemon.json's keys) and ``[host]`` (the forwarding sysctls) into the model, and the
default ``bridge`` network the daemon's settings describe."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, ip_interface
from typing import Any

from nftdocker.model import DAEMON_KEYS, DEFAULT_BRIDGE_NETWORK, HOST_KEYS, Daemon, Host, Network, field_of
from nftdocker.scenario.context import Context, check_ifname, expect, parse_addr, parse_prefix, unknown_keys
from nftdocker.scenario.network import first_free


def parse_daemon(ctx: Context, raw: Any, where: str = "daemon") -> Daemon:
    """The ``[daemon]`` table (daemon.json's keys), with what dockerd would refuse to start with."""
    table = expect(ctx, where, raw, dict)
    unknown_keys(ctx, where, table, DAEMON_KEYS)
    kw: dict[str, Any] = {}
    for k, t in DAEMON_KEYS.items():
        if k in table:
            expect(ctx, f"{where}.{k}", table[k], t)
            if t is bool:
                kw[field_of(k)] = table[k]
    if "fixed-cidr-v6" in table:
        net = parse_prefix(ctx, f"{where}.fixed-cidr-v6", table["fixed-cidr-v6"])
        if net.version != 6:
            raise ctx.fail(f"{where}.fixed-cidr-v6", f"{table['fixed-cidr-v6']!r} is not an IPv6 prefix")
        kw["fixed_cidr_v6"] = net
    if "ip" in table:
        kw["ip"] = parse_addr(ctx, f"{where}.ip", table["ip"])
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
        net = parse_prefix(ctx, fkey, table["fixed-cidr"])
        if net.version != 4:
            raise ctx.fail(fkey, f"{table['fixed-cidr']!r} is not an IPv4 prefix")
        if "bip" not in kw:
            # getDefaultBridgeIPAMConf on a fresh host: fixed-cidr is also the subnet, and IPAM
            # gives the bridge its first address.
            kw["bip"] = (first_free(net, None), net)
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


def parse_host(ctx: Context, raw: Any) -> Host:
    """The ``[host]`` table: the forwarding sysctls as dockerd found them."""
    table = expect(ctx, "host", raw, dict)
    unknown_keys(ctx, "host", table, HOST_KEYS)
    kw = {}
    for k in HOST_KEYS:
        if k in table:
            kw[field_of(k)] = expect(ctx, f"host.{k}", table[k], bool)
    return Host(**kw)


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
