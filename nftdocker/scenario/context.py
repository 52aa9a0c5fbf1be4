"""Where a scenario's problem is and what is wrong: the located-error :class:`Context` and the
checks of single values (types, names, addresses, prefixes) that every part of the loader shares.

Each check returns the value it checked (parsed, for addresses and prefixes) or raises the
:class:`ScenarioError` that names the file, the key path and the problem.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any, Iterable

from nftdocker.errors import ScenarioError
from nftdocker.model import IPAddress

_IFNAME_BAD = re.compile(r"[\s/'\"\\\x00-\x1f\x7f]")
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Context:
    """Where we are: the file name, for messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(self.source, key, problem)


def _type_name(t: type) -> str:
    """How a message names a TOML type."""
    return {bool: "a boolean", str: "a string", list: "an array", dict: "a table", int: "an integer"}[t]


def expect(ctx: Context, key: str, value: Any, t: type) -> Any:
    """``value`` if it is of TOML type ``t`` (an integer is not a boolean); else a located error."""
    if t is int and isinstance(value, bool):
        raise ctx.fail(key, f"expected {_type_name(t)}, got {value!r}")
    if not isinstance(value, t):
        raise ctx.fail(key, f"expected {_type_name(t)}, got {describe(value)}")
    return value


def describe(value: Any) -> str:
    """A value as a message shows what was found instead."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def unknown_keys(ctx: Context, where: str, table: dict[str, Any], allowed: Iterable[str]) -> None:
    """Refuse the first key of ``table`` (at ``where``) that is not ``allowed``, listing those that are."""
    allowed = set(allowed)
    for k in table:
        if k not in allowed:
            path = f"{where}.{k}" if where else k
            hint = ", ".join(sorted(allowed))
            if k == "ingress" or (isinstance(table.get(k), bool) and k == "swarm"):
                raise ctx.fail(path, "swarm ingress is out of scope for nftdocker")
            raise ctx.fail(path, f"unknown key (expected one of: {hint})")


def check_ifname(ctx: Context, key: str, name: str) -> str:
    """A Linux interface name: 1-15 bytes, no whitespace, '/', quotes or control characters."""
    if not name:
        raise ctx.fail(key, "interface name is empty")
    if len(name.encode()) > 15:
        raise ctx.fail(key, f"interface name {name!r} is longer than 15 bytes")
    if _IFNAME_BAD.search(name) or name in (".", ".."):
        raise ctx.fail(key, f"{name!r} is not a valid interface name")
    return name


def check_name(ctx: Context, key: str, name: str, what: str) -> str:
    """A Docker object name (``what``: network, container): Docker's characters, at most 128."""
    if not _NAME_OK.match(name) or len(name) > 128:
        raise ctx.fail(key, f"{name!r} is not a valid {what} name (letters, digits, '_', '.', '-')")
    return name


def table_name(ctx: Context, where: str, table: dict[str, Any], what: str) -> str:
    """The required ``name`` of the table at ``where``, a valid Docker ``what`` (network, container) name."""
    if "name" not in table:
        raise ctx.fail(f"{where}.name", "required key is missing")
    return check_name(ctx, f"{where}.name", expect(ctx, f"{where}.name", table["name"], str), what)


def parse_addr(ctx: Context, key: str, text: Any) -> IPAddress:
    """An IPv4 or IPv6 address written as a string."""
    expect(ctx, key, text, str)
    try:
        return ip_address(text)
    except ValueError:
        raise ctx.fail(key, f"{text!r} is not an IP address") from None


def parse_prefix(ctx: Context, key: str, text: Any) -> IPv4Network | IPv6Network:
    """An IP prefix written as a string (host bits allowed; callers that refuse them check)."""
    expect(ctx, key, text, str)
    try:
        return ip_network(text, strict=False)
    except ValueError:
        raise ctx.fail(key, f"{text!r} is not an IP prefix") from None


def bool_option(ctx: Context, key: str, text: str) -> bool:
    """A ``docker network create -o`` boolean: true, 1, t or false, 0, f (any case, spaces around ignored)."""
    low = text.strip().lower()
    if low in ("true", "1", "t"):
        return True
    if low in ("false", "0", "f"):
        return False
    raise ctx.fail(key, f"{text!r} is not a boolean ('true' or 'false')")
