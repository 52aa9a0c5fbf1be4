"""Listing nftdocker's tables (both families) as the kernel holds them: nft text or JSON objects."""

from __future__ import annotations

from typing import Any

from nftdocker.nft.backend import Nft, raise_environment
from nftdocker.nft.netns import netns
from nftdocker.nft.render import DEFAULT_TABLE
from nftdocker.nft.ir import FAMILIES
from nftdocker.nft.table import check_table_name


def list_objects(netns_name: str | None = None, table: str = DEFAULT_TABLE) -> list[dict[str, Any]]:
    """``nft -j list table`` objects of nftdocker's tables (both families)."""
    check_table_name(table)
    with netns(netns_name):
        nft = Nft()
        objs: list[dict[str, Any]] = []
        for fam in FAMILIES:
            objs.extend(nft.list_json(f"list table {fam} {table}"))  # [] where there is no such table
        return objs


def list_text(netns_name: str | None = None, table: str = DEFAULT_TABLE) -> str:
    """``nft list table`` of nftdocker's tables (both families)."""
    check_table_name(table)
    with netns(netns_name):
        nft = Nft()
        out = []
        for fam in FAMILIES:
            rc, text, err = nft.list_text(f"list table {fam} {table}")
            if rc == 0:
                out.append(text)
            else:
                raise_environment(err)  # else there is no such table
        return "".join(out)
