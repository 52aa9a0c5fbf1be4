"""A bridge network's rules: forwarding, NAT, inter-container communication, isolation; and
``docker network create``/``rm`` recording and undoing them.

Mirrors moby 76417bf763 libnetwork/drivers/bridge: bridge_linux.go ``createNetwork``,
``deleteNetwork`` and ``isolateNetwork``; setup_ip_forwarding.go; setup_ip_tables_linux.go
(``setupIPTables``, ``setupNonInternalNetworkRules``, ``setIcc``, ``setICMP``,
``setDefaultForwardRule``, ``setupInternalNetworkRules``, ``setINC``).
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from nftdocker.docker.ipam import Pool
from nftdocker.docker.iptables import DOCKER, DOCKER_BRIDGE, DOCKER_CT, DOCKER_FORWARD, ISOLATION1, ISOLATION2, V
from nftdocker.docker.state import FirewallState
from nftdocker.model import Network
from nftdocker.nft.ir import Action, Addr, AddrTypeLocal, CtState, Iface, Jump, L4Proto, Masquerade, Snat, Verdict, rule


class NetworkRules(FirewallState):
    """What a bridge network programs as it is created (and its removal): one method per moby function."""

    def add_network(self, net: Network) -> None:
        """docker network create: the network's rules, recorded for docker network rm."""
        self.networks[net.name] = net
        with self.journal() as added:
            self.create_network(net)
        self.network_rules[net.name] = added

    def remove_network(self, name: str) -> None:
        """docker network rm (bridge_linux.go deleteNetwork): the rules its setup added are deleted."""
        self.undo(self.network_rules.pop(name, {}))
        for v in (4, 6):
            self.ipam.pop((name, v), None)
        del self.networks[name]

    def create_network(self, net: Network) -> None:
        """bridge_linux.go createNetwork: the setup steps that touch the firewall, in their order."""
        d = self.daemon
        has4, has6 = net.enable_ipv4, net.enable_ipv6
        for v, has in ((4, has4), (6, has6)):
            pool_nets = net.subnets4 if v == 4 else net.subnets6
            gws = net.gateways4 if v == 4 else net.gateways6
            ranges = net.ip_ranges4 if v == 4 else net.ip_ranges6
            if has:
                self.ipam[(net.name, v)] = Pool(pool_nets[0], gws[0] if gws else None, ranges[0] if ranges else None)
        if has4 and d.ip_forward:
            self.setup_ip_forwarding(4, net)
        if has6 and d.ip_forward:
            self.setup_ip_forwarding(6, net)
        if d.hairpin:
            self.sysctl(f"net.ipv4.conf.{net.bridge}.route_localnet", "1", f"setupLoopbackAddressesRouting[{net.name}]")
        if has4 and self.enabled(4):
            self.setup_ip_tables(4, net, net.subnets4[0])
        if has6 and self.enabled(6):
            self.setup_ip_tables(6, net, net.subnets6[0])
        if self.enabled(4) or self.enabled(6):
            self.isolate_network(net)
        if not net.icc or d.hairpin:
            if self.enabled(4) and self.forwarding[4]:
                self.sysctl("net.bridge.bridge-nf-call-iptables", "1", f"setupIPv4BridgeNetFiltering[{net.name}]")
            if self.enabled(6) and has6:
                self.sysctl("net.bridge.bridge-nf-call-ip6tables", "1", f"setupIPv6BridgeNetFiltering[{net.name}]")

    def setup_ip_forwarding(self, v: V, net: Network) -> None:
        """setup_ip_forwarding.go setupIPv4Forwarding/setupIPv6Forwarding: FORWARD DROP only if dockerd turned it on."""
        if v == 4:
            self.sysctl("net.ipv4.ip_forward", "1", f"setupIPv4Forwarding[{net.name}]")
        else:
            self.sysctl("net.ipv6.conf.default.forwarding", "1", f"setupIPv6Forwarding[{net.name}]")
            self.sysctl("net.ipv6.conf.all.forwarding", "1", f"setupIPv6Forwarding[{net.name}]")
        changed = not self.forwarding[v]
        self.forwarding[v] = True
        if changed and self.enabled(v) and not self.daemon.ip_forward_no_drop:
            self.ipt[v].set_policy("filter", "FORWARD", "DROP")

    def setup_ip_tables(self, v: V, net: Network, subnet: IPv4Network | IPv6Network) -> None:
        """setup_ip_tables_linux.go setupIPTables."""
        if net.internal:
            self.setup_internal_network_rules(v, net, subnet)
            return
        self.setup_non_internal_network_rules(v, net, subnet)
        self.set_default_forward_rule(v, net)
        br = net.bridge
        self.ipt[v].append(
            "filter", DOCKER_CT,
            rule(Iface("o", br), CtState(), action=Verdict("ACCEPT"), origin=f"setupIPTables[{net.name}] ct related"),
        )
        self.ipt[v].append(
            "filter", DOCKER_BRIDGE,
            rule(Iface("o", br), action=Jump(DOCKER), origin=f"setupIPTables[{net.name}] jump to docker"),
        )

    def setup_non_internal_network_rules(self, v: V, net: Network, subnet: IPv4Network | IPv6Network) -> None:
        """setup_ip_tables_linux.go setupNonInternalNetworkRules: NAT, skip-DNAT, hairpin MASQ, ICC, ICMP, outgoing."""
        ipt = self.ipt[v]
        br = net.bridge
        o = f"setupNonInternalNetworkRules[{net.name}]"
        host_ip = net.host_ipv4 if v == 4 else net.host_ipv6
        nat = self.gw_mode(v, net) != "routed"
        hairpin = self.daemon.hairpin
        masq: Action = Snat(host_ip) if host_ip is not None else Masquerade()
        if nat and net.masquerade:
            ipt.insert("nat", "POSTROUTING", rule(Addr("s", subnet), Iface("o", br, True), action=masq, origin=o + " NAT"))
        if not nat or (net.masquerade and not hairpin):
            ipt.insert("nat", DOCKER, rule(Iface("i", br), action=Verdict("RETURN"), origin=o + " SKIP DNAT"))
        if hairpin:
            ipt.insert("nat", "POSTROUTING", rule(AddrTypeLocal("s"), Iface("o", br), action=masq, origin=o + " MASQ LOCAL HOST"))
        # else Docker deletes that rule; hairpin is the daemon's setting, so on this host it was never added
        self.set_icc(v, net, internal=False)
        if not nat:
            self.set_icmp(v, net)
        out_no_icc = rule(Iface("i", br), Iface("o", br, True), action=Verdict("ACCEPT"), origin=o + " ACCEPT NON_ICC OUTGOING")
        if net.icc:
            ipt.append("filter", DOCKER_FORWARD, rule(Iface("i", br), action=Verdict("ACCEPT"), origin=o + " ACCEPT OUTGOING"))
        else:
            ipt.append("filter", DOCKER_FORWARD, out_no_icc)

    def set_icc(self, v: V, net: Network, internal: bool) -> None:
        """setup_ip_tables_linux.go setIcc: ``-i BR -o BR`` ACCEPT (internal + icc) or DROP (no icc)."""
        ipt = self.ipt[v]
        br = net.bridge
        o = f"setIcc[{net.name}]"
        accept = rule(Iface("i", br), Iface("o", br), action=Verdict("ACCEPT"), origin=o)
        drop = rule(Iface("i", br), Iface("o", br), action=Verdict("DROP"), origin=o)
        if net.icc and internal:
            ipt.append("filter", DOCKER_FORWARD, accept)
        else:
            ipt.delete("filter", DOCKER_FORWARD, accept)
        if not net.icc:
            ipt.append("filter", DOCKER_FORWARD, drop)
        else:
            ipt.delete("filter", DOCKER_FORWARD, drop)

    def set_icmp(self, v: V, net: Network) -> None:
        """setup_ip_tables_linux.go setICMP: routed networks accept ICMP to the bridge."""
        proto = "icmp" if v == 4 else "ipv6-icmp"
        self.ipt[v].append(
            "filter", DOCKER, rule(Iface("o", net.bridge), L4Proto(proto), action=Verdict("ACCEPT"), origin=f"setICMP[{net.name}]")
        )

    def set_default_forward_rule(self, v: V, net: Network) -> None:
        """setup_ip_tables_linux.go setDefaultForwardRule: ``! -i BR -o BR`` DROP (ACCEPT when nat-unprotected)."""
        action = "ACCEPT" if self.gw_mode(v, net) == "nat-unprotected" else "DROP"
        self.ipt[v].append(
            "filter", DOCKER,
            rule(Iface("i", net.bridge, True), Iface("o", net.bridge), action=Verdict(action), origin=f"setDefaultForwardRule[{net.name}]"),  # type: ignore[arg-type]
        )

    def setup_internal_network_rules(self, v: V, net: Network, subnet: IPv4Network | IPv6Network) -> None:
        """setup_ip_tables_linux.go setupInternalNetworkRules: keep an internal network's traffic on its bridge."""
        ipt = self.ipt[v]
        br = net.bridge
        o = f"setupInternalNetworkRules[{net.name}]"
        if v == 4:
            in_drop = rule(Iface("i", br), Addr("d", subnet, True), action=Verdict("DROP"), origin=o + " DROP INCOMING")
            out_drop = rule(Iface("o", br), Addr("s", subnet, True), action=Verdict("DROP"), origin=o + " DROP OUTGOING")
        else:
            in_drop = rule(Iface("i", br), Iface("o", br, True), Addr("d", subnet, True), action=Verdict("DROP"), origin=o + " DROP INCOMING")
            out_drop = rule(Iface("i", br, True), Iface("o", br), Addr("s", subnet, True), action=Verdict("DROP"), origin=o + " DROP OUTGOING")
        ipt.insert("filter", ISOLATION1, in_drop)
        ipt.insert("filter", ISOLATION1, out_drop)
        self.set_icc(v, net, internal=True)

    def isolate_network(self, net: Network) -> None:
        """bridge_linux.go isolateNetwork: inter-network isolation, per family the network has."""
        if net.internal:
            return
        if self.enabled(4) and net.enable_ipv4:
            self.set_inc(4, net)
        if self.enabled(6) and net.enable_ipv6:
            self.set_inc(6, net)

    def set_inc(self, v: V, net: Network) -> None:
        """setup_ip_tables_linux.go setINC: STAGE-1 jump to STAGE-2, STAGE-2 DROP (routed: RETURN and ct ACCEPT on top)."""
        ipt = self.ipt[v]
        br = net.bridge
        o = f"setINC[{net.name}]"
        if self.gw_mode(v, net) == "routed":
            ipt.insert("filter", ISOLATION1, rule(Iface("o", br), action=Verdict("RETURN"), origin=o))
            ipt.insert("filter", ISOLATION1, rule(Iface("i", br), CtState(), action=Verdict("ACCEPT"), origin=o))
        ipt.append("filter", ISOLATION1, rule(Iface("i", br), Iface("o", br, True), action=Jump(ISOLATION2), origin=o))
        ipt.insert("filter", ISOLATION2, rule(Iface("o", br), action=Verdict("DROP"), origin=o))
