"""The shape of the house: which layer may import which, modules small, no import circles.

The data path runs scenario -> model -> docker (Docker's calls replayed) -> nft (rule IR, render,
transactions, backend) -> kernel; compat reads the IR back as iptables-save. The nft layer knows
nothing of Docker, and Docker's replay nothing of the kernel."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "nftdocker"

#: layer -> the nftdocker modules (prefixes) it may import
ALLOWED = {
    "nft": ("nftdocker.nft", "nftdocker.errors"),
    "docker": ("nftdocker.docker", "nftdocker.model", "nftdocker.errors", "nftdocker.nft.ir", "nftdocker.nft.render"),
    "compat": ("nftdocker.compat", "nftdocker.nft.ir", "nftdocker.nft.parse", "nftdocker.nft.render", "nftdocker.errors"),
    "scenario": ("nftdocker.scenario", "nftdocker.model", "nftdocker.errors", "nftdocker.inputs", "nftdocker.docker",
                 "nftdocker.nft.ir", "nftdocker.nft.render"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every nftdocker module ``name`` imports, at any depth (lazy imports count too)."""
    mods = _modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nftdocker")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nftdocker"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
            found |= subs if len(subs) == len(node.names) else subs | {node.module}  # "from pkg import module"
    return {m for m in found if m in mods and m != name}


MODULES = _modules()


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_what_lies_below_it(layer):
    bad = [f"{name} imports {m}" for name, path in sorted(MODULES.items()) if name.startswith(f"nftdocker.{layer}")
           for m in sorted(_imports(name, path)) if not m.startswith(ALLOWED[layer]) and m != "nftdocker"]
    assert not bad, "\n".join(bad)


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long


def test_no_import_circles():
    graph = {name: {m for m in _imports(name, path) if m != "nftdocker" and not name.startswith(m + ".")}
             for name, path in MODULES.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)
