"""What verify needs of the host: root, the tools it runs (``ip``, the legacy restore tools) and pyroute2."""

from __future__ import annotations

import os
import shutil

from nftdocker.errors import EnvironmentProblem


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise EnvironmentProblem(f"verify needs {name!r}, which is not installed")
    return path


def check_environment() -> None:
    """Root, the tools verify runs and pyroute2, or EnvironmentProblem (exit 3)."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("verify needs root: it builds network namespaces")
    for t in ("ip", "iptables-legacy-restore", "ip6tables-legacy-restore"):
        tool(t)
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("verify needs pyroute2 (pip install 'nftdocker[kernel]')") from None
