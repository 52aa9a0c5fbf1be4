"""Every generated ruleset passes `nft -c -f` (text and JSON) in a throwaway namespace."""

from __future__ import annotations

import subprocess

import pytest

from conftest import CASES, RULESETS, needs_netns

pytestmark = [pytest.mark.netns, needs_netns]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("form", ["ruleset.nft", "ruleset.json"])
def test_nft_accepts(case, form, netns):
    cmd = ["ip", "netns", "exec", netns, "nft", "-c"]
    if form.endswith(".json"):
        cmd.append("-j")
    cmd += ["-f", str(RULESETS / case / form)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
