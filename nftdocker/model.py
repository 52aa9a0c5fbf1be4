"""The typed model of a Docker host: what the scenario says, validated once.

Everything after :mod:`nftdocker.scenario` trusts these objects. Names follow
Docker's vocabulary (``daemon.json`` keys, ``docker network create -o`` options,
``docker run -p`` syntax); fields hold parsed ``ipaddress`` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal, Union, get_args

IPAddress = Union[IPv4Address, IPv6Address]
Proto = Literal["tcp", "udp", "sctp"]
GatewayMode = Literal["nat", "nat-unprotected", "routed", "isolated"]

#: the protocols a port is published or exposed with, in the order Docker sorts them
PROTOS: tuple[Proto, ...] = get_args(Proto)
PROTO_ORDER: dict[str, int] = {p: i for i, p in enumerate(PROTOS)}
GATEWAY_MODES: tuple[GatewayMode, ...] = get_args(GatewayMode)

DEFAULT_BRIDGE_NETWORK = "bridge"
#: ``docker network create -o`` option names start with these
NETWORK_OPT = "com.docker.network."
BRIDGE_OPT = NETWORK_OPT + "bridge."


@dataclass(frozen=True)
class Daemon:
    """dockerd's settings (the keys of daemon.json)."""

    userland_proxy: bool = True
    icc: bool = True
    ip_masq: bool = True
    ip_forward: bool = True
    ip_forward_no_drop: bool = False
    iptables: bool = True
    ip6tables: bool = True
    ipv6: bool = False
    fixed_cidr_v6: IPv6Network | None = None
    ip: IPAddress = IPv4Address("0.0.0.0")
    bridge: str = "docker0"
    bip: tuple[IPv4Address, IPv4Network] = (IPv4Address("172.17.0.1"), IPv4Network("172.17.0.0/16"))
    fixed_cidr: IPv4Network | None = None  # --fixed-cidr: the default bridge's allocation range

    @property
    def hairpin(self) -> bool:
        """Docker's ``hairpin`` flag: NAT is done in the kernel, not by docker-proxy."""
        return not self.userland_proxy


@dataclass(frozen=True)
class Host:
    """The forwarding sysctls dockerd found when it started."""

    ipv4_forwarding: bool = True
    ipv6_forwarding: bool = False


def _file_keys(cls: type) -> dict[str, type]:
    """A dataclass's fields as a scenario file spells them ('-' for '_'), in field order, each with
    the type its value has in the file (booleans; addresses and prefixes are strings)."""
    return {f.name.replace("_", "-"): bool if f.type == "bool" else str for f in fields(cls)}


def field_of(key: str) -> str:
    """The model field a file key names (``ip-masq``: ``ip_masq``)."""
    return key.replace("-", "_")


#: the daemon.json keys a scenario's ``[daemon]`` takes: :class:`Daemon`'s fields
DAEMON_KEYS: dict[str, type] = _file_keys(Daemon)
#: the keys of ``[host]``: :class:`Host`'s fields
HOST_KEYS: dict[str, type] = _file_keys(Host)


@dataclass(frozen=True)
class PortSpec:
    """One ``-p`` mapping after range expansion: a container port and what to bind it to."""

    container_port: int
    proto: Proto = "tcp"
    host_ip: IPAddress | None = None
    host_port: int = 0
    host_port_end: int = 0
    allocated: int = 0  # the host port Docker allocated, when a dump shows it

    def __str__(self) -> str:
        ip = "" if self.host_ip is None else (f"[{self.host_ip}]:" if self.host_ip.version == 6 else f"{self.host_ip}:")
        hp = "" if not self.host_port else str(self.host_port)
        if self.host_port_end and self.host_port_end != self.host_port:
            hp += f"-{self.host_port_end}"
        return f"{ip}{hp}:{self.container_port}/{self.proto}" if (ip or hp) else f"{self.container_port}/{self.proto}"


@dataclass(frozen=True)
class Link:
    """A legacy ``--link NAME:ALIAS``."""

    name: str
    alias: str


@dataclass(frozen=True)
class Network:
    """A bridge network, user-defined or the default bridge."""

    name: str
    bridge: str
    subnets4: tuple[IPv4Network, ...] = ()
    subnets6: tuple[IPv6Network, ...] = ()
    gateways4: tuple[IPv4Address, ...] = ()
    gateways6: tuple[IPv6Address, ...] = ()  # empty for a family whose gateway mode is isolated
    ip_ranges4: tuple[IPv4Network, ...] = ()  # --ip-range: where container addresses are allocated
    ip_ranges6: tuple[IPv6Network, ...] = ()
    internal: bool = False
    ipv6: bool = False
    icc: bool = True
    masquerade: bool = True
    gw_mode4: GatewayMode = "nat"
    gw_mode6: GatewayMode = "nat"
    host_binding: IPAddress | None = None
    host_ipv4: IPv4Address | None = None
    host_ipv6: IPv6Address | None = None
    default_bridge: bool = False
    options: tuple[tuple[str, str], ...] = ()

    @property
    def enable_ipv4(self) -> bool:
        return bool(self.subnets4)

    @property
    def enable_ipv6(self) -> bool:
        return self.ipv6 and bool(self.subnets6)


@dataclass(frozen=True)
class Container:
    """A container as the scenario lists it, before address and port allocation."""

    name: str
    networks: tuple[str, ...] = (DEFAULT_BRIDGE_NETWORK,)
    publish: tuple[PortSpec, ...] = ()
    addresses: tuple[tuple[str, IPAddress], ...] = ()
    expose: tuple[tuple[int, Proto], ...] = ()
    links: tuple[Link, ...] = ()
    gw_priority: tuple[tuple[str, int], ...] = ()  # --gw-priority, per network


EVENT_KINDS = ("run", "stop", "start", "restart", "rm", "connect", "disconnect", "network create", "network rm")


@dataclass(frozen=True)
class Event:
    """One docker command of the host's history (``[[events]]``), after the networks and
    containers the scenario lists were created and started.

    ``do`` is one of :data:`EVENT_KINDS`; ``container``/``network`` name what it acts on;
    ``spec`` is the new container (``run``) or network (``network create``); ``connect`` may
    give an ``address`` and a ``gw_priority``.
    """

    do: str
    container: str = ""
    network: str = ""
    addresses: tuple[IPAddress, ...] = ()
    gw_priority: int | None = None
    spec: Union["Container", "Network", None] = None


@dataclass(frozen=True)
class Scenario:
    """A whole Docker host: daemon, host sysctls, networks and containers in creation order.

    ``networks`` holds the default bridge first (unless ``bridge = "none"``), then the
    user-defined networks.
    """

    daemon: Daemon = field(default_factory=Daemon)
    host: Host = field(default_factory=Host)
    networks: tuple[Network, ...] = ()
    containers: tuple[Container, ...] = ()
    source: str = "<scenario>"
    #: what happened next, in order (``[[events]]``)
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """A container's attachment to one network, with its allocated addresses."""

    container: str
    network: str
    ipv4: IPv4Address | None
    ipv6: IPv6Address | None


@dataclass(frozen=True)
class Binding:
    """One port binding as Docker programs it (moby's ``types.PortBinding`` after allocation)."""

    proto: Proto
    container_ip: IPAddress
    container_port: int
    host_ip: IPAddress
    host_port: int
