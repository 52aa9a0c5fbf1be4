"""What Docker's replay keeps between calls: the daemon's settings, each family's iptables, IPAM
pools, host ports, endpoints, the sysctls set, and the record of what each object programmed.

:class:`FirewallState` is the base of the per-concept mixins (:mod:`.daemon`, :mod:`.network`,
:mod:`.ports`, :mod:`.link`, :mod:`.endpoints`, :mod:`.containers`) that make up
:class:`~nftdocker.docker.generate.Firewall`. Mirrors the state moby 76417bf763 keeps in
libnetwork/drivers/bridge (the driver's networks and endpoints, ``portMapping``, the
``iptables.ChainInfo`` of each family) and libnetwork/sandbox.go (a sandbox's endpoints); the
journal stands for the ``-D`` calls Docker makes with ``enable=false`` to undo what it added.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

from nftdocker.docker.hostports import PortAllocator
from nftdocker.docker.ipam import Pool
from nftdocker.docker.iptables import Iptables, V
from nftdocker.model import Binding, Endpoint, Network, Scenario
from nftdocker.nft.ir import Rule

#: the rules an operation added, per IP version: (table, chain, rule) in the order added
Journal = dict[int, list[tuple[str, str, Rule]]]


@dataclass(frozen=True)
class Sysctl:
    """A kernel setting Docker makes beside its rules (applied by ``apply --sysctls``)."""

    key: str
    value: str
    origin: str


class FirewallState:
    """Docker's daemon and bridge driver state, as the replay keeps it; the mixins' common base."""

    def __init__(self, scenario: Scenario) -> None:
        self.sc = scenario
        self.daemon = scenario.daemon
        self.ipt: dict[int, Iptables] = {4: Iptables("ip"), 6: Iptables("ip6")}
        self.forwarding = {4: scenario.host.ipv4_forwarding, 6: scenario.host.ipv6_forwarding}
        self.sysctls: dict[tuple[str, str], Sysctl] = {}  # by (key, value), in the order first set
        self.ipam: dict[tuple[str, int], Pool] = {}
        self.ports = PortAllocator()
        self.endpoints: list[Endpoint] = []
        self.bindings: dict[str, tuple[Binding, ...]] = {}
        self.hairpin_ports: list[str] = []
        self.networks = {n.name: n for n in scenario.networks}
        self.containers = {c.name: c for c in scenario.containers}
        self.eps: dict[tuple[str, str], Endpoint] = {}  # (container, network) -> its endpoint, for links
        # the history (events): what each running container and each network programmed, to undo it
        self.running: dict[str, list[tuple[Network, Endpoint]]] = {}
        self.gateway: dict[str, str] = {}  # container -> the network of its gateway endpoint
        self.external: dict[str, Journal] = {}  # container -> rules its gateway endpoint added
        self.network_rules: dict[str, Journal] = {}
        self.last_addresses: dict[tuple[str, str], Endpoint] = {}  # a stopped container's endpoints

    def enabled(self, v: V) -> bool:
        return self.daemon.iptables if v == 4 else self.daemon.ip6tables

    def gw_mode(self, v: V, net: Network) -> str:
        return net.gw_mode4 if v == 4 else net.gw_mode6

    def sysctl(self, key: str, value: str, origin: str) -> None:
        self.sysctls.setdefault((key, value), Sysctl(key, value, origin))

    @contextlib.contextmanager
    def journal(self) -> Iterator[Journal]:
        """Record the rules added inside the block, per family (nested blocks record into both)."""
        outer = {v: self.ipt[v].journal for v in (4, 6)}
        added: Journal = {4: [], 6: []}
        for v in (4, 6):
            self.ipt[v].journal = added[v]
        try:
            yield added
        finally:
            for v in (4, 6):
                journal = self.ipt[v].journal = outer[v]
                if journal is not None:
                    journal.extend(added[v])

    def undo(self, added: Journal) -> None:
        """Docker's ``-D`` of every rule an operation added."""
        for v, rules in added.items():
            for table, chain, r in reversed(rules):
                self.ipt[v].delete(table, chain, r)
