"""A container's life as the daemon drives it: ``docker run``/``start``, ``stop``, ``network
connect``/``disconnect``, each as the endpoint operations it makes.

Mirrors moby 76417bf763 daemon/container_operations.go (``allocateNetwork``, ``connectToNetwork``,
``DisconnectFromNetwork``) and daemon/start.go / daemon/monitor.go (``containerStart``,
``releaseNetwork`` as a container stops).
"""

from __future__ import annotations

from dataclasses import replace

from nftdocker.docker.endpoints import Endpoints
from nftdocker.model import Container, Event


class Containers(Endpoints):
    """Running, stopping, connecting and disconnecting containers: the history's container operations."""

    def run_container(self, ctr: Container) -> None:
        """docker run then docker network connect: endpoints in order, ports on the gateway endpoint."""
        self.containers[ctr.name] = ctr
        mine = self.running[ctr.name] = []
        for net in (self.networks[n] for n in ctr.networks):
            mine.append((net, self.join(ctr, net)))
        self.program_gateway(ctr)

    def stop(self, name: str) -> None:
        """docker stop: the gateway's rules and host ports revoked, every endpoint left."""
        self.revoke_gateway(name)
        for net, ep in self.running.pop(name):
            self.last_addresses[(name, net.name)] = ep
            self.leave(name, net, ep)

    def connect(self, ev: Event) -> None:
        """docker network connect: a new endpoint; the port mappings move when it becomes the gateway."""
        ctr = self.containers[ev.container]
        prio = tuple(p for p in ctr.gw_priority if p[0] != ev.network) + ((ev.network, ev.gw_priority),) if ev.gw_priority is not None else ctr.gw_priority
        ctr = replace(ctr, networks=ctr.networks + (ev.network,), gw_priority=prio,
                      addresses=ctr.addresses + tuple((ev.network, a) for a in ev.addresses))
        self.containers[ctr.name] = ctr
        if ctr.name not in self.running:
            return
        net = self.networks[ev.network]
        self.running[ctr.name].append((net, self.join(ctr, net)))
        self._update_gateway(ctr)

    def disconnect(self, ev: Event) -> None:
        """docker network disconnect: the endpoint leaves; the port mappings move if it was the gateway."""
        ctr = self.containers[ev.container]
        ctr = replace(ctr, networks=tuple(n for n in ctr.networks if n != ev.network),
                      addresses=tuple(a for a in ctr.addresses if a[0] != ev.network),
                      gw_priority=tuple(p for p in ctr.gw_priority if p[0] != ev.network))
        self.containers[ctr.name] = ctr
        self.last_addresses.pop((ctr.name, ev.network), None)
        if ctr.name not in self.running:
            return
        mine = self.running[ctr.name]
        (net, ep), = [(n, e) for n, e in mine if n.name == ev.network]
        if self.gateway.get(ctr.name) == ev.network:
            self.revoke_gateway(ctr.name)
        mine.remove((net, ep))
        self.leave(ctr.name, net, ep)
        if ctr.name not in self.gateway:
            self.program_gateway(ctr)
