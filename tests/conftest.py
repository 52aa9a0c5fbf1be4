"""Shared fixtures: the golden-file check, case discovery, and throwaway network namespaces.

Address plan (used everywhere in the tests, only inside namespaces the tests create):
docker0 172.17.0.0/16; user networks 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and
2001:db8::/32; containers from .2; published 8080 -> 80/tcp.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULESETS = ROOT / "rulesets"
COMPAT = ROOT / "compat"
SHARED_REFERENCE = ROOT.parent / "shared" / "reference"
CASES = sorted(p.name for p in RULESETS.iterdir() if (p / "scenario.toml").is_file())


def run_cli(*args, **kw) -> subprocess.CompletedProcess:
    """``python -m nftdocker ARGS`` from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "nftdocker", *map(str, args)], capture_output=True, text=True, cwd=ROOT, **kw)


def sent_after(mp: pytest.MonkeyPatch, extra) -> None:
    """Have ``engine.apply`` send the transaction ``extra`` after what it plans (a refusal injected by a test)."""
    from nftdocker.apply import engine
    real = engine.plan

    def plan(*args, **kwargs):
        tx, reason = real(*args, **kwargs)
        tx.extend(extra)
        return tx, reason

    mp.setattr(engine, "plan", plan)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", help="rewrite golden files from the code's output")


def strip_comments(text: str) -> str:
    return "".join(l for l in text.splitlines(keepends=True) if not l.startswith("#"))


class Golden:
    def __init__(self, update: bool) -> None:
        self.update = update

    def check(self, path: Path, actual: str) -> None:
        if self.update:
            path.write_text(actual)
            return
        if not path.exists():
            pytest.fail(f"{path} is missing: run pytest --update-goldens")
        expected = path.read_text()
        if expected != actual:
            diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), str(path), "generated"))
            pytest.fail(f"{path} differs from the generated output:\n{diff}")


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    return Golden(request.config.getoption("--update-goldens"))


def is_root() -> bool:
    return os.geteuid() == 0


def have_libnftables() -> bool:
    try:
        import nftables  # noqa: F401
    except Exception:
        return False
    return True


needs_netns = pytest.mark.skipif(
    not (is_root() and shutil.which("ip") and have_libnftables()),
    reason="needs root, iproute2 and libnftables (python3-nftables)",
)


@pytest.fixture
def netns():
    """A fresh network namespace, removed afterwards."""
    name = f"nftdt-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
