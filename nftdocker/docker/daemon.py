"""The daemon's start: Docker's chains, the jumps into them, and DOCKER-USER.

Mirrors moby 76417bf763 libnetwork/drivers/bridge/bridge_linux.go ``configure`` with
setup_ip_tables_linux.go ``setupIPChains`` and ``addNATJumpRules``, and libnetwork/firewall_linux.go
``setupUserChain`` (run by libnetwork ``New`` and the daemon's ``configureNetworking`` on a fresh host).
"""

from __future__ import annotations

from ipaddress import ip_network

from nftdocker.docker.iptables import DOCKER, DOCKER_BRIDGE, DOCKER_CT, DOCKER_FORWARD, DOCKER_USER, ISOLATION1, ISOLATION2, V
from nftdocker.docker.state import FirewallState
from nftdocker.nft.ir import Addr, AddrTypeLocal, Jump, Verdict, rule

LOOPBACK4 = ip_network("127.0.0.0/8")
LOOPBACK6 = ip_network("::1/128")


class DaemonStart(FirewallState):
    """What dockerd programs once, as it starts: one method per moby function."""

    def start_daemon(self) -> None:
        """bridge.configure + libnetwork.New + configureNetworking (daemon start, fresh host)."""
        versions: tuple[V, V] = (4, 6)
        for v in versions:
            if self.enabled(v):
                self.setup_ip_chains(v)
        for v in versions:
            if self.enabled(v):
                self.setup_user_chain(v)

    def setup_ip_chains(self, v: V) -> None:
        """setup_ip_tables_linux.go setupIPChains: Docker's chains and the jumps into them."""
        ipt = self.ipt[v]
        o = "setupIPChains"
        ipt.new_chain("nat", DOCKER)
        for name in (DOCKER, DOCKER_FORWARD, DOCKER_BRIDGE, DOCKER_CT, ISOLATION1, ISOLATION2):
            ipt.new_chain("filter", name)
        self.add_nat_jump_rules(v)
        ipt.ensure_jump("filter", "FORWARD", DOCKER_FORWARD, o)
        ipt.ensure_jump("filter", DOCKER_FORWARD, DOCKER_BRIDGE, o)
        ipt.ensure_jump("filter", DOCKER_FORWARD, ISOLATION1, o)
        ipt.ensure_jump("filter", DOCKER_FORWARD, DOCKER_CT, o)

    def add_nat_jump_rules(self, v: V) -> None:
        """setup_ip_tables_linux.go addNATJumpRules: PREROUTING/OUTPUT ``-m addrtype --dst-type LOCAL -j DOCKER``."""
        ipt = self.ipt[v]
        o = "addNATJumpRules"
        ipt.append("nat", "PREROUTING", rule(AddrTypeLocal("d"), action=Jump(DOCKER), origin=o))
        loopback = None
        if not self.daemon.hairpin:
            loopback = Addr("d", LOOPBACK4 if v == 4 else LOOPBACK6, negate=True)
        ipt.append("nat", "OUTPUT", rule(AddrTypeLocal("d"), loopback, action=Jump(DOCKER), origin=o))

    def setup_user_chain(self, v: V) -> None:
        """firewall_linux.go setupUserChain: DOCKER-USER with its RETURN, jumped to first from FORWARD."""
        ipt = self.ipt[v]
        ipt.new_chain("filter", DOCKER_USER)
        ipt.append("filter", DOCKER_USER, rule(action=Verdict("RETURN"), origin="setupUserChain"))
        ipt.ensure_jump("filter", "FORWARD", DOCKER_USER, "setupUserChain")
