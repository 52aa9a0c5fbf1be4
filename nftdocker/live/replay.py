"""Docker Engine events as Docker's own operations on the kept model (watch's path per event).

After a full sync, :class:`EventReplay` holds what the daemon looked like (networks by id and
name, the :class:`~nftdocker.docker.generate.Firewall` that replayed it) and turns each Engine event into the
operation Docker carries out for it, on that model: a container ``start`` is
:meth:`Firewall.run_container` of the container as one inspect shows it (its addresses and host
ports as Docker allocated them), ``die`` is :meth:`Firewall.stop`, ``destroy`` forgets it, a network
``connect``/``disconnect`` of a running container moves its endpoints (and its port mappings when
the gateway changes), a network ``create``/``destroy`` adds or removes that network's rules. So the
rules change in Docker's order after any history, and each event costs one or two API calls and a
replay of that object's Docker calls, whatever the size of the host.

:class:`Unreplayable` says the model cannot follow (an object it does not know, an address it
holds otherwise): the caller then syncs the whole host again.

Parallel ``docker run``s can deliver their ``start`` events in another order than the one their
``State.StartedAt`` says, and a full sync orders containers by ``StartedAt``; a start replayed
after a container that started later sets :attr:`EventReplay.out_of_order`; once the burst is
quiet the watcher loads :meth:`EventReplay.in_start_order` (the kept model in StartedAt order, no
API call), so the table ends as a fresh full apply would have it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Callable

from nftdocker.errors import NftdockerError
from nftdocker.docker.generate import Firewall
from nftdocker.model import Event, Scenario


class Unreplayable(Exception):
    """The kept model cannot follow this event: sync the whole host again (the message says why)."""


Inspect = Callable[[str, str], "dict[str, Any] | None"]  # (kind, id) -> inspect object


class EventReplay:
    """The daemon's state as the last sync read it, followed event by event."""

    def __init__(self, scenario: Scenario, dump: dict[str, list[dict[str, Any]]], inspect: Inspect) -> None:
        self.scenario = scenario
        self.inspect = inspect
        self.net_by_id = {str(o.get("Id", "")): str(o.get("Name", "")) for o in dump.get("networks", [])}
        self.ctr_by_id = {str(o.get("Id", "")): str(o.get("Name", "")).lstrip("/") for o in dump.get("containers", [])}
        #: container name -> State.StartedAt, as the sync read it and each replayed start inspected it
        self.started: dict[str, datetime] = {}
        for o in dump.get("containers", []):
            self.started[str(o.get("Name", "")).lstrip("/")] = _started_at(o)
        #: why the replayed order differs from the daemon's StartedAt order (None while it does not)
        self.out_of_order: str | None = None

    def step(self, fw: Firewall, ev: dict[str, Any]) -> str | None:
        """Carry out ``ev`` on ``fw``; the text for its log line, or None if it changes nothing of the firewall."""
        typ, action, ident = ev.get("type"), ev.get("action"), str(ev.get("id") or "")
        attrs = ev.get("attributes") or {}
        if typ == "container":
            name = str(attrs.get("name") or self.ctr_by_id.get(ident, ""))
            if action == "start":
                if name in fw.running:
                    return None
                ctr, at = self._container(ident)
                later = [n for n in fw.running if self.started.get(n, datetime.min) > at]
                if later and self.out_of_order is None:
                    self.out_of_order = f"{ctr.name} started before {later[0]} but its start event came after"
                self.started[ctr.name] = at
                fw.last_addresses = {k: v for k, v in fw.last_addresses.items() if k[0] != ctr.name}  # Docker's addresses are pinned
                self.ctr_by_id[ident] = ctr.name
                fw.run_container(ctr)
                return f"container start {ctr.name}"
            if action in ("die", "stop"):
                if name not in fw.running:
                    return None  # a stop follows its die
                fw.stop(name)
                return f"container {action} {name}"
            if action == "destroy":
                if name in fw.running:
                    fw.stop(name)
                fw.containers.pop(name, None)
                self.ctr_by_id.pop(ident, None)
                return None
            return None
        if typ == "network":
            net_name = str(attrs.get("name") or self.net_by_id.get(ident, ""))
            if action in ("connect", "disconnect"):
                cid = str(attrs.get("container") or "")
                name = self.ctr_by_id.get(cid)
                if name is None or name not in fw.running:
                    return None  # part of a container's start or stop: its start/die carries it
                if net_name not in fw.networks:
                    raise Unreplayable(f"network {net_name!r} is not known")
                attached = any(n.name == net_name for n, _ in fw.running[name])
                if action == "connect" and not attached:
                    now, _ = self._container(cid)
                    addrs = tuple(a for n, a in now.addresses if n == net_name)
                    prio = dict(now.gw_priority).get(net_name)
                    fw.connect(Event("connect", container=name, network=net_name, addresses=addrs, gw_priority=prio))
                    return f"network connect {net_name} {name}"
                if action == "disconnect" and attached:
                    fw.disconnect(Event("disconnect", container=name, network=net_name))
                    return f"network disconnect {net_name} {name}"
                return None
            if action == "create":
                obj = self.inspect("network", ident)
                if obj is None or obj.get("Driver", "bridge") != "bridge":
                    return None
                net = self._network(obj)
                if net is None:
                    return None
                self.net_by_id[ident] = net.name
                fw.add_network(net)
                return f"network create {net.name}"
            if action == "destroy":
                self.net_by_id.pop(ident, None)
                if net_name not in fw.networks:
                    return None
                if any(net_name in c.networks for c in fw.containers.values()):
                    raise Unreplayable(f"network {net_name!r} removed while containers were on it")
                fw.remove_network(net_name)
                return f"network destroy {net_name}"
        return None

    # ------------------------------------------------------------------ one object, as Docker shows it

    def in_start_order(self, fw: Firewall) -> Scenario:
        """The host the kept model stands for, its running containers in ``StartedAt`` order: what a
        full sync would read, without reading it; the replay follows it from now on."""
        running = sorted(fw.running, key=lambda n: self.started.get(n, datetime.min))  # stable: ties keep their order
        self.scenario = replace(self.scenario, networks=tuple(fw.networks.values()),
                                containers=tuple(fw.containers[n] for n in running), events=())
        self.out_of_order = None
        return self.scenario

    def _container(self, ident: str) -> tuple[Any, datetime]:
        """The container as one inspect shows it, and when it last started."""
        from nftdocker.scenario.context import Context
        from nftdocker.scenario.dump import container_from_inspect

        obj = self.inspect("container", ident)
        if obj is None:
            raise Unreplayable(f"container {ident[:12]} is gone")
        ctx = Context(f"container {ident[:12]}")
        known = {n.name for n in self.scenario.networks} | set(self.net_by_id.values())
        by_id = dict(self.net_by_id)
        try:
            return container_from_inspect(ctx, "container", obj, known, by_id), _started_at(obj)
        except NftdockerError as e:
            raise Unreplayable(e.message) from None

    def _network(self, obj: dict[str, Any]) -> Any:
        from nftdocker.scenario.context import Context
        from nftdocker.scenario.dump import from_inspect

        ctx = Context(f"network {str(obj.get('Id', ''))[:12]}")
        try:
            nets, _ = from_inspect(ctx, {"networks": [obj], "containers": []}, self.scenario.daemon)
        except NftdockerError as e:
            raise Unreplayable(e.message) from None
        user = [n for n in nets if not n.default_bridge]
        return user[0] if user else None


def _started_at(obj: dict[str, Any]) -> datetime:
    """When the inspected container last started, as a full sync orders it (``datetime.min`` if unreadable)."""
    from nftdocker.scenario.context import Context
    from nftdocker.scenario.dump import started

    try:
        return started(Context("container"), "container", obj)
    except NftdockerError:
        return datetime.min
