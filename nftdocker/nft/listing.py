"""Listing nftdocker's tables (both families) as the kernel holds them: nft text or JSON objects."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from nftdocker.nft.backend import Backend, Libnftables
from nftdocker.nft.netns import netns
from nftdocker.nft.render import DEFAULT_TABLE
from nftdocker.nft.ir import FAMILIES
from nftdocker.nft.table import check_table_name


@contextlib.contextmanager
def reading(netns_name: str | None, backend: Backend | None = None) -> Iterator[Backend]:
    """The backend to read from: ``backend``, or libnftables inside the named namespace (no lock)."""
    if backend is not None:
        yield backend
        return
    with netns(netns_name):
        yield Libnftables()


def list_objects(netns_name: str | None = None, table: str = DEFAULT_TABLE,
                 backend: Backend | None = None) -> list[dict[str, Any]]:
    """``nft -j list table`` objects of nftdocker's tables (both families)."""
    check_table_name(table)
    with reading(netns_name, backend) as be:
        objs: list[dict[str, Any]] = []
        for fam in FAMILIES:
            objs.extend(be.list_json(f"list table {fam} {table}"))  # [] where there is no such table
        return objs


def list_text(netns_name: str | None = None, table: str = DEFAULT_TABLE, backend: Backend | None = None) -> str:
    """``nft list table`` of nftdocker's tables (both families)."""
    check_table_name(table)
    with reading(netns_name, backend) as be:
        return "".join(be.list_text(f"list table {fam} {table}") for fam in FAMILIES)  # "" where there is no such table
