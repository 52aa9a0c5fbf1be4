"""Legacy ``--link`` rules: the ACCEPTs between a parent and a child container on a bridge with icc off.

Mirrors moby 76417bf763 libnetwork/drivers/bridge/bridge_linux.go ``link`` and link.go
(``newLink``, ``Enable``, ``linkContainers``); the exposed ports in nat.SortPortMap's order.
"""

from __future__ import annotations

from nftdocker.docker.iptables import DOCKER
from nftdocker.docker.state import FirewallState
from nftdocker.model import PROTO_ORDER, Container, Endpoint, Network
from nftdocker.nft.ir import Addr, Iface, Port, Verdict, host, rule


class Links(FirewallState):
    """The legacy links of a container, as its gateway endpoint is programmed."""

    def link(self, net: Network, parent: Container, parent_ep: Endpoint, child: Container, child_ep: Endpoint) -> None:
        """bridge_linux.go link / link.go: legacy ``--link`` ACCEPT rules for the child's exposed ports (icc off)."""
        if not self.enabled(4) or parent_ep.ipv4 is None or child_ep.ipv4 is None:
            return
        br = net.bridge
        # nat.SortPortMap order for exposed ports: port descending, then protocol (tcp first).
        exposed = set(child.expose) | {(p.container_port, p.proto) for p in child.publish}
        ports = sorted(exposed, key=lambda t: (-t[0], PROTO_ORDER[t[1]]))
        for port, proto in ports:
            o = f"link[{parent.name}->{child.name} {port}/{proto}]"
            self.ipt[4].append(
                "filter", DOCKER,
                rule(Addr("s", host(parent_ep.ipv4)), Addr("d", host(child_ep.ipv4)), Iface("i", br), Iface("o", br),
                     Port(proto, "d", port), action=Verdict("ACCEPT"), origin=o),
            )
            self.ipt[4].append(
                "filter", DOCKER,
                rule(Addr("s", host(child_ep.ipv4)), Addr("d", host(parent_ep.ipv4)), Iface("i", br), Iface("o", br),
                     Port(proto, "s", port), action=Verdict("ACCEPT"), origin=o),
            )
