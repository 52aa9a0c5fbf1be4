"""A container's endpoints: addresses from IPAM as it joins a network, the gateway endpoint's
external connectivity (port mappings and legacy links), and both undone as it leaves.

Mirrors moby 76417bf763 libnetwork/drivers/bridge/bridge_linux.go (``CreateEndpoint``,
``ProgramExternalConnectivity``, ``RevokeExternalConnectivity``, ``DeleteEndpoint``) and
libnetwork's endpoint.go (``Join``, ``Leave``), sandbox.go (``Less``), sandbox_linux.go
(``updateGateway``) and default_gateway.go (``selectGatewayEndpoint``).
"""

from __future__ import annotations

from nftdocker.docker.link import Links
from nftdocker.docker.ports import PortMappings
from nftdocker.errors import GenerationError
from nftdocker.model import DEFAULT_BRIDGE_NETWORK, Container, Endpoint, IPAddress, Network


class Endpoints(PortMappings, Links):
    """A container's endpoints and its gateway endpoint's rules: one method per moby function."""

    def create_endpoint(self, ctr: Container, net: Network, before: Endpoint | None = None) -> Endpoint:
        """bridge_linux.go CreateEndpoint: allocate the endpoint's addresses (IPAM); ``before``: the
        endpoint it had when it last ran, whose addresses it gets again while they are free."""
        want = [a for (n, a) in ctr.addresses if n == net.name]
        if before is not None:
            want += [a for a in (before.ipv4, before.ipv6) if a is not None and a.version not in {w.version for w in want}
                     and (pool := self.ipam.get((net.name, a.version))) is not None and pool.is_free(a)]
        addrs: dict[int, IPAddress | None] = {4: None, 6: None}
        for v in (4, 6):
            pool = self.ipam.get((net.name, v))
            explicit = [a for a in want if a.version == v]
            if pool is None:
                if explicit:
                    raise GenerationError(
                        f"{self.sc.source}: container {ctr.name!r}: network {net.name!r} has no IPv{v} subnet for {explicit[0]}"
                    )
                continue
            try:
                addrs[v] = pool.allocate(explicit[0] if explicit else None)
            except ValueError as e:
                raise GenerationError(f"{self.sc.source}: container {ctr.name!r} on {net.name!r}: {e}") from None
        if self.daemon.hairpin:
            self.hairpin_ports.append(f"{net.bridge}:{ctr.name}")
        ep = Endpoint(ctr.name, net.name, addrs[4], addrs[6])  # type: ignore[arg-type]
        self.endpoints.append(ep)
        return ep

    def join(self, ctr: Container, net: Network) -> Endpoint:
        """sandbox join: the endpoint, at the address it had when the container last ran if that is free."""
        ep = self.create_endpoint(ctr, net, self.last_addresses.pop((ctr.name, net.name), None))
        self.eps[(ctr.name, net.name)] = ep
        return ep

    def leave(self, name: str, net: Network, ep: Endpoint) -> None:
        """sandbox leave + endpoint delete: the endpoint's addresses go back to IPAM."""
        for v, a in ((4, ep.ipv4), (6, ep.ipv6)):
            pool = self.ipam.get((net.name, v))
            if a is not None and pool is not None:
                pool.release(a)
        self.endpoints.remove(ep)
        self.eps.pop((name, net.name), None)
        port = f"{net.bridge}:{name}"
        if port in self.hairpin_ports:
            self.hairpin_ports.remove(port)

    def program_external_connectivity(self, ctr: Container, net: Network, ep: Endpoint) -> None:
        """bridge_linux.go ProgramExternalConnectivity: port mappings, then legacy links when icc is off
        (the daemon passes ``--link`` only to an endpoint on the default bridge)."""
        self.bindings[ctr.name] = tuple(self.add_port_mappings(ctr, net, ep))
        if not net.icc and net.name == DEFAULT_BRIDGE_NETWORK:
            for l in ctr.links:
                child = self.containers[l.name]
                child_ep = self.eps.get((child.name, net.name))
                if child_ep is not None:
                    self.link(net, ctr, ep, child, child_ep)

    def program_gateway(self, ctr: Container) -> None:
        """sandbox_linux.go updateGateway: the gateway endpoint's external connectivity, recorded for revoking."""
        gw = _gateway_endpoint(self.running[ctr.name], dict(ctr.gw_priority))
        if gw is None:
            return
        net, ep = gw
        self.gateway[ctr.name] = net.name
        with self.journal() as added:
            self.program_external_connectivity(ctr, net, ep)
        self.external[ctr.name] = added

    def revoke_gateway(self, name: str) -> None:
        """bridge_linux.go RevokeExternalConnectivity: the gateway endpoint's rules deleted, its host ports released."""
        self.gateway.pop(name, None)
        self.undo(self.external.pop(name, {}))
        for b in self.bindings.pop(name, ()):
            self.ports.release(b.host_ip, b.proto, b.host_port)

    def _update_gateway(self, ctr: Container) -> None:
        """sandbox_linux.go updateGateway after a connect or disconnect: the rules move if the gateway endpoint changed."""
        gw = _gateway_endpoint(self.running[ctr.name], dict(ctr.gw_priority))
        if (gw[0].name if gw else None) != self.gateway.get(ctr.name):
            self.revoke_gateway(ctr.name)
            self.program_gateway(ctr)


def _gateway_endpoint(eps: list[tuple[Network, Endpoint]], priority: dict[str, int]) -> tuple[Network, Endpoint] | None:
    """sandbox.go Less + default_gateway.go selectGatewayEndpoint: the endpoint that gets the port mappings.

    Endpoints rank by: higher GwPriority, not docker_gwbridge, not internal, more gateways
    (dual-stack first), network name. Internal networks have no gateway and never win.
    """
    def gateways(net: Network) -> int:
        return int(net.enable_ipv4) + int(net.enable_ipv6)

    ranked = sorted(eps, key=lambda t: (-priority.get(t[0].name, 0), t[0].bridge == "docker_gwbridge", t[0].internal,
                                        -gateways(t[0]), t[0].name))
    for net, ep in ranked:
        if not net.internal and gateways(net):
            return net, ep
    return None
