"""Docker's own iptablesdoc pages (../shared/iptablesdoc) read as identical to their cases."""

from __future__ import annotations

import pytest

from conftest import SHARED_REFERENCE, run_cli
from nftdocker.compat.reference import parse

DOCS = SHARED_REFERENCE.parent / "iptablesdoc"
PAGES = sorted(p.stem for p in DOCS.glob("*.md") if p.stem != "README") if DOCS.is_dir() else []


@pytest.mark.skipif(not DOCS.is_dir(), reason="../shared/iptablesdoc is not beside the repo")
def test_all_eight_pages_present():
    assert len(PAGES) == 8


@pytest.mark.parametrize("page", PAGES)
def test_page_reads_identical(page):
    r = run_cli("diff", SHARED_REFERENCE / page / "scenario.toml", DOCS / f"{page}.md")
    assert r.returncode == 0, r.stdout + r.stderr


def test_listing_quoted_in_prose_is_not_merged():
    text = """The filter table is:

    -P INPUT ACCEPT
    -P FORWARD ACCEPT
    -P OUTPUT ACCEPT
    -N DOCKER
    -A DOCKER ! -i docker0 -o docker0 -j DROP

The DOCKER chain, as iptables -S DOCKER shows it:

    -N DOCKER
    -A DOCKER ! -i docker0 -o docker0 -j DROP
"""
    assert parse(text)["filter"].rules == ["-A DOCKER ! -i docker0 -o docker0 -j DROP"]
