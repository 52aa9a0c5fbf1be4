"""Generation: the scenario replayed as Docker 28.0.1 would program it, as rule IR.

Docker builds its chains with ``-I`` (insert at the top), ``-A`` (append) and ``-D`` as the
daemon starts and networks and containers come and go; the order iptables-save shows is the
history of those calls. :class:`Firewall` replays the same operations on per-chain lists
(:mod:`.iptables`), so the exact order (removals included) comes out by construction. One method
per moby function, named after it, each with a docstring line naming the function it mirrors
(moby commit 76417bf763, libnetwork/drivers/bridge/... and daemon/...), grouped by concept in the
mixins :mod:`.daemon`, :mod:`.network`, :mod:`.ports`, :mod:`.link`, :mod:`.endpoints` and
:mod:`.containers`; this module runs a whole scenario, its history included, and takes the
:class:`Generated` snapshot.

Pure: no I/O, deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Iterable, Mapping

from nftdocker.docker.containers import Containers
from nftdocker.docker.daemon import DaemonStart
from nftdocker.docker.network import NetworkRules
from nftdocker.docker.state import Sysctl
from nftdocker.errors import GenerationError
from nftdocker.model import Binding, Container, Endpoint, Event, Scenario
from nftdocker.nft.ir import FAMILIES, Ruleset, gc_paused


def sysctl_path(key: str) -> str:
    """The /proc/sys file of a sysctl key; interface names may hold dots (net.ipv4.conf.br.1.route_localnet)."""
    parts = key.split(".")
    if len(parts) > 4 and parts[0] == "net" and parts[1] in ("ipv4", "ipv6") and parts[2] == "conf":
        parts = parts[:3] + [".".join(parts[3:-1]), parts[-1]]
    return "/proc/sys/" + "/".join(parts)


@dataclass(frozen=True)
class Generated:
    """The result of generation: one ruleset per family plus what Docker sets beside it.

    A snapshot: it holds its own read-only copies (tuples, read-only mappings, rulesets whose
    chains the :class:`Firewall` that made it no longer writes), so replaying more of Docker's
    calls on that firewall leaves it as it is. Made with other values (``dataclasses.replace``),
    it copies them in the same way; ``bindings`` maps a container to a tuple.
    """

    scenario: Scenario
    rulesets: Mapping[str, Ruleset]
    endpoints: tuple[Endpoint, ...] = ()
    bindings: Mapping[str, tuple[Binding, ...]] = field(default_factory=dict)
    sysctls: tuple[Sysctl, ...] = ()
    hairpin_ports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        freeze = object.__setattr__
        freeze(self, "rulesets", MappingProxyType(dict(self.rulesets)))
        freeze(self, "endpoints", tuple(self.endpoints))
        freeze(self, "bindings", MappingProxyType(dict(self.bindings)))
        freeze(self, "sysctls", tuple(self.sysctls))
        freeze(self, "hairpin_ports", tuple(self.hairpin_ports))

    def families(self) -> list[str]:
        """The families Docker writes rules for (``ip6`` only while ip6tables is on)."""
        return [f for f in FAMILIES if not self.rulesets[f].is_empty()]


class Firewall(DaemonStart, NetworkRules, Containers):
    """Docker's bridge driver and daemon, replayed: one method per moby function.

    The methods come from the mixins, one module per concept over :class:`~.state.FirewallState`:
    the daemon's start, networks, containers (with their endpoints, port mappings and links);
    here: a whole scenario run, its history's events dispatched, and the snapshot taken.
    """

    def replay(self, i: int, ev: Event) -> None:
        """One event of the history, as Docker carries it out."""
        try:
            if ev.do == "run":
                self.run_container(ev.spec)  # type: ignore[arg-type]
            elif ev.do == "stop":
                self.stop(ev.container)
            elif ev.do == "start":
                self.run_container(self.containers[ev.container])
            elif ev.do == "restart":
                if ev.container in self.running:
                    self.stop(ev.container)
                self.run_container(self.containers[ev.container])
            elif ev.do == "rm":
                if ev.container in self.running:
                    self.stop(ev.container)
                del self.containers[ev.container]
                for key in [k for k in self.last_addresses if k[0] == ev.container]:
                    del self.last_addresses[key]
            elif ev.do == "connect":
                self.connect(ev)
            elif ev.do == "disconnect":
                self.disconnect(ev)
            elif ev.do == "network create":
                self.add_network(ev.spec)  # type: ignore[arg-type]
            elif ev.do == "network rm":
                self.remove_network(ev.network)
        except GenerationError as e:
            raise GenerationError(f"events[{i}] ({ev.do}): {e.message}") from None

    def run(self) -> Generated:
        """The daemon's start, the scenario's networks and containers, then its history."""
        with gc_paused():
            self.start_daemon()
            for net in self.sc.networks:  # what each network programs is recorded, for a later docker network rm
                self.add_network(net)
            for ctr in self.sc.containers:
                self.run_container(ctr)
            for i, ev in enumerate(self.sc.events):
                self.replay(i, ev)
        return self.generated()

    def add_containers(self, scenario: Scenario, ctrs: Iterable[Container]) -> None:
        """Run ``ctrs`` (the containers ``scenario`` appends to the one run so far) on this state."""
        self.sc = scenario
        for ctr in ctrs:
            self.containers[ctr.name] = ctr
            self.run_container(ctr)

    def generated(self) -> Generated:
        """The host as replayed so far, as a snapshot of its own (later calls leave it as it is)."""
        sc = self.sc
        if sc.events:  # the host as the history left it: its networks, and its running containers in the order they last started
            sc = replace(sc, networks=tuple(self.networks.values()), containers=tuple(self.containers[n] for n in self.running),
                         events=())
        return Generated(sc, {"ip": self.ipt[4].snapshot(), "ip6": self.ipt[6].snapshot()}, tuple(self.endpoints), self.bindings,
                         tuple(self.sysctls.values()), tuple(self.hairpin_ports))


def generate(scenario: Scenario) -> Generated:
    """Model -> rule IR, exactly as Docker 28.0.1 would program the host."""
    return Firewall(scenario).run()
