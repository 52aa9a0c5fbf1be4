"""The compat form of every case equals what a real Docker 28.0.1 daemon programmed.

compat/<case>/ holds the daemon's iptables-save and ip6tables-save output (copied from the
captures in ../shared/reference); both the hand-written scenario and the one read from the
daemon's own `docker inspect` dump must reproduce it exactly.
"""

from __future__ import annotations

import pytest

from conftest import CASES, COMPAT, RULESETS, SHARED_REFERENCE, strip_comments
from nftdocker.compat.translate import compat_of
from nftdocker.docker.generate import generate
from nftdocker.scenario.load import load

FAMILIES = {"ip": "iptables-save.txt", "ip6": "ip6tables-save.txt"}


def compat_of_file(path, family):
    return compat_of(generate(load(path)), family)


@pytest.mark.parametrize("source", ["scenario.toml", "from-inspect.toml"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("case", CASES)
def test_compat_matches_docker(case, family, source):
    want = strip_comments((COMPAT / case / FAMILIES[family]).read_text())
    got = compat_of_file(RULESETS / case / source, family)
    assert got == want


def test_all_eighteen_cases_present():
    assert len(CASES) == 18


@pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="../shared/reference is not beside the repo")
@pytest.mark.parametrize("case", CASES)
def test_compat_data_is_the_real_capture(case):
    """compat/ is Docker's side: byte for byte the shared capture (comments aside)."""
    for name in FAMILIES.values():
        assert (COMPAT / case / name).read_text() == strip_comments((SHARED_REFERENCE / case / name).read_text())
