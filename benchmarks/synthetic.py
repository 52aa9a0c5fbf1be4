"""Synthetic Docker hosts for the benchmarks: N networks x M containers x K published ports.

Network ``i`` is ``net{i}`` on bridge ``br{i}`` with an IPv4 /26 out of 198.18.0.0/15 (the
RFC 2544 benchmarking range: addresses only ever appear in rules, in namespaces the benchmarks
make), optionally an IPv6 /64 out of 2001:db8::/32. Container ``j`` of network ``i`` is
``c{i}-{j}``; it publishes K TCP ports, host ports 10000 upwards, one per (container, port),
so every rule is distinct. The default bridge (docker0) is there as on any Docker host.

    python benchmarks/synthetic.py 1000 2 3 > host.toml     # a scenario file
"""

from __future__ import annotations

import dataclasses
import sys
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nftdocker.model import Container, PortSpec, Scenario  # noqa: E402
from nftdocker.scenario.load import loads  # noqa: E402

BASE4 = IPv4Network("198.18.0.0/15")
BASE6 = IPv6Network("2001:db8::/32")
FIRST_HOST_PORT = 10000
MAX_NETWORKS = 2048  # /26 subnets in a /15
NEW_CONTAINER_PORT = 9  # the host port range of added containers starts at 60000


def subnet4(i: int) -> IPv4Network:
    if not 0 <= i < MAX_NETWORKS:
        raise ValueError(f"at most {MAX_NETWORKS} synthetic networks")
    return IPv4Network((int(BASE4.network_address) + i * 64, 26))


def subnet6(i: int) -> IPv6Network:
    return IPv6Network((int(BASE6.network_address) + (i << 64), 64))


def host_port(i: int, j: int, k: int, m: int, kk: int) -> int:
    port = FIRST_HOST_PORT + (i * m + j) * kk + k
    if port > 59999:
        raise ValueError("too many published ports for distinct host ports (N*M*K must stay under 50000)")
    return port


def scenario_toml(n: int, m: int = 2, k: int = 3, ipv6: bool = False, userland_proxy: bool = True) -> str:
    """The scenario file of a synthetic host."""
    out = ["# synthetic host: benchmarks/synthetic.py", "[daemon]", f"userland-proxy = {str(userland_proxy).lower()}"]
    if ipv6:
        out += ["ipv6 = true", 'fixed-cidr-v6 = "2001:db8:ffff::/64"', "", "[host]", "ipv6-forwarding = true"]
    out.append("")
    for i in range(n):
        subnets = [f'"{subnet4(i)}"'] + ([f'"{subnet6(i)}"'] if ipv6 else [])
        out += [
            "[[networks]]",
            f'name = "net{i}"',
            f"subnets = [{', '.join(subnets)}]",
        ]
        if ipv6:
            out.append("ipv6 = true")
        out += [f'options = {{ "com.docker.network.bridge.name" = "br{i}" }}', ""]
    for i in range(n):
        for j in range(m):
            ports = ", ".join(f'"{host_port(i, j, p, m, k)}:{80 + p}"' for p in range(k))
            out += ["[[containers]]", f'name = "c{i}-{j}"', f'networks = ["net{i}"]', f"publish = [{ports}]", ""]
    return "\n".join(out)


def host(n: int, m: int = 2, k: int = 3, ipv6: bool = False, userland_proxy: bool = True) -> Scenario:
    """The same host as a model, through the scenario loader."""
    return loads(scenario_toml(n, m, k, ipv6, userland_proxy), source=f"<synthetic {n}x{m}x{k}>")


def new_container(sc: Scenario, serial: int = 0, network: str | None = None) -> Container:
    """One more container with one published port (host port 60000 + serial), on ``network`` (default net0)."""
    net = network or next((x.name for x in sc.networks if not x.default_bridge), "bridge")
    return Container(
        name=f"added-{serial}",
        networks=(net,),
        publish=(PortSpec(container_port=80, proto="tcp", host_ip=None, host_port=60000 + serial, host_port_end=60000 + serial),),
    )


def with_container(sc: Scenario, ctr: Container) -> Scenario:
    return dataclasses.replace(sc, containers=sc.containers + (ctr,))


def without_container(sc: Scenario, name: str) -> Scenario:
    return dataclasses.replace(sc, containers=tuple(c for c in sc.containers if c.name != name))


def added_container_toml(serial: int = 0, network: str = "net0") -> str:
    """The ``[[containers]]`` block :func:`new_container` describes, to append to a scenario file."""
    return f'\n[[containers]]\nname = "added-{serial}"\nnetworks = ["{network}"]\npublish = ["{60000 + serial}:80"]\n'


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:4]]
    sys.stdout.write(scenario_toml(*args) + "\n")
