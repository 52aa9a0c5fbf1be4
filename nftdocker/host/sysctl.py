"""What Docker sets beside its rules: forwarding, route_localnet, bridge-nf-call, port hairpin.

``pyroute2`` (for the bridge ports' hairpin mode) is imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from nftdocker.docker.generate import Generated, sysctl_path
from nftdocker.docker.state import Sysctl
from nftdocker.model import Scenario
from nftdocker.nft.netns import netns


@dataclass(frozen=True)
class Beside:
    """What Docker sets beside its rules: the sysctls, and the bridges whose ports get hairpin mode
    (none unless the daemon's hairpin is on)."""

    sysctls: tuple[Sysctl, ...]
    hairpin_bridges: tuple[str, ...]

    @classmethod
    def of(cls, sc: Scenario, sysctls: Iterable[Sysctl]) -> Beside:
        """For host ``sc`` (its bridges) with the ``sysctls`` its replay set."""
        bridges = tuple(sorted({n.bridge for n in sc.networks})) if sc.daemon.hairpin else ()
        return cls(tuple(sysctls), bridges)

    @classmethod
    def of_generated(cls, gen: Generated) -> Beside:
        return cls.of(gen.scenario, gen.sysctls)


def apply_sysctls(beside: Beside, netns_name: str | None = None) -> list[str]:
    """Set the sysctls (and hairpin on the bridges' ports) in the namespace; one line each."""
    report: list[str] = []
    with netns(netns_name):
        for s in beside.sysctls:
            path = Path(sysctl_path(s.key))
            try:
                path.write_text(s.value + "\n")
                report.append(f"{s.key} = {s.value} ({s.origin})")
            except FileNotFoundError:
                report.append(f"{s.key}: skipped, not present in this namespace ({s.origin})")
            except OSError as e:
                report.append(f"{s.key}: failed: {e.strerror} ({s.origin})")
        if beside.hairpin_bridges:
            report.extend(_hairpin_ports(beside.hairpin_bridges))
    return report


def _hairpin_ports(bridges: tuple[str, ...]) -> list[str]:
    try:
        from pyroute2 import IPRoute  # type: ignore[import-not-found]
    except ImportError:
        return ["hairpin: skipped, pyroute2 is not installed (pip install pyroute2)"]
    out = []
    with IPRoute() as ipr:
        links = ipr.get_links()  # one listing: veths come and go while containers start
        index = {l.get_attr("IFLA_IFNAME"): l["index"] for l in links}
        for br in bridges:
            if br not in index:
                out.append(f"hairpin on {br} ports: skipped, no such bridge")
                continue
            for l in links:
                if l.get_attr("IFLA_MASTER") != index[br]:
                    continue
                port = l.get_attr("IFLA_IFNAME")
                try:
                    ipr.brport("set", index=l["index"], hairpin_mode=1)
                    out.append(f"hairpin on {br} port {port}")
                except Exception as e:  # noqa: BLE001 - the port went away (ENODEV) meanwhile
                    out.append(f"hairpin on {br} port {port}: skipped ({getattr(e, 'code', e)})")
    return out
