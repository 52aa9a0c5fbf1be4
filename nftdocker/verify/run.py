"""verify: packets, not text. Two identical Docker hosts in network namespaces, one with the
iptables rules (iptables-legacy), one with the generated nft table, and the same probes through both.

:func:`verify` builds both sides (:mod:`~nftdocker.verify.session`) for the plan
(:mod:`~nftdocker.verify.plan`), loads the rules, runs every probe through both through the agents
(:mod:`~nftdocker.verify.agent`) and returns the :class:`~nftdocker.verify.report.Report`;
:func:`coverage` drops each rule of the nft table in turn and lists the probes that notice.

Probes exercise the kernel rules only; docker-proxy is not run on either side, so a path that only
the proxy serves (for example from the host to 127.0.0.1:PORT with the userland proxy on) is
refused on both sides: still an agreement. Two deliberate departures from a real Docker host, both
on both sides: a default route for internal-only containers (see the plan) and br_netfilter on for
every bridge (see the session).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable

from nftdocker.errors import EnvironmentProblem
from nftdocker.nft.render import DEFAULT_TABLE
from nftdocker.verify.agent import DEFAULT_JOBS, DEFAULT_TIMEOUT
from nftdocker.verify.env import check_environment
from nftdocker.verify.plan import Plan, Probe
from nftdocker.verify.report import Outcome, Report, Row, RuleCoverage
from nftdocker.verify.session import Session


def legacy_texts(gen: Any, table: str, reference4: str | None = None, reference6: str | None = None,
                 names: tuple[str | None, str | None] = (None, None)) -> tuple[str, str, dict[str, str]]:
    """The iptables-save text for each family: the reference where given, else nftdocker's compat output."""
    from nftdocker.compat.translate import compat_of

    src: dict[str, str] = {}
    texts = []
    for fam, ref, name in (("ip", reference4, names[0]), ("ip6", reference6, names[1])):
        if ref is not None:
            texts.append(ref)
            src[fam] = f"iptables-legacy-restore of {name or 'the reference'}"
        else:
            texts.append(compat_of(gen, fam, table))
            src[fam] = "iptables-legacy-restore of nftdocker compat output"
    return texts[0], texts[1], src


def _got(results: dict[int, Outcome], pr: Probe) -> Outcome:
    return results.get(pr.id, Outcome("missing"))


def _key(results: dict[int, Outcome], pr: Probe) -> tuple[str, str, str]:
    return _got(results, pr).key()


def _check_controls(s: Session, results: dict[str, dict[int, Outcome]]) -> None:
    expect = {"host": "refused", "outside": "open"}  # control probes by destination
    for pr in s.plan.probes:
        if pr.kind != "control":
            continue
        got = [_got(results[side], pr) for side in results]
        if all(o.result != expect[pr.dst] for o in got):
            raise EnvironmentProblem(
                f"the test topology does not work: control probe {pr.describe()} got {got[0].result} on every side "
                f"(expected {expect[pr.dst]})")


def verify(gen: Any, *, reference4: str | None = None, reference6: str | None = None,
           reference_names: tuple[str | None, str | None] = (None, None), nft_gen: Any | None = None,
           table: str = DEFAULT_TABLE, timeout: float = DEFAULT_TIMEOUT, jobs: int = DEFAULT_JOBS,
           keep: bool = False, tag: str | None = None, add_probes: Callable[[Plan], Any] | None = None) -> Report:
    """Build both sides, load the legacy rules and the nft table, run every probe through both.

    ``nft_gen`` loads another generation's rulesets on the nft side (tests alter one rule that way);
    topology and probes always come from ``gen``; ``add_probes`` may append more to the plan (and
    the servers they need) before anything is built.
    """
    check_environment()
    t0 = time.monotonic()
    text4, text6, src = legacy_texts(gen, table, reference4, reference6, reference_names)
    s = Session(gen, table=table, timeout=timeout, jobs=jobs, keep=keep, tag=tag)
    if add_probes is not None:
        add_probes(s.plan)
    with s:
        t = time.monotonic()
        s.load_legacy(text4, text6)
        s.load_nft(nft_gen)
        s.timings["load"] = time.monotonic() - t
        t = time.monotonic()
        results = s.probe()
        _check_controls(s, results)
        # A difference made by a rule comes back every time; one made by a slow machine does not.
        again = [pr for pr in s.plan.probes if _key(results["legacy"], pr) != _key(results["nft"], pr)]
        if again:
            for side, got in s.probe(probes=again, timeout=timeout * 2).items():
                results[side].update(got)
        s.timings["probe"] = time.monotonic() - t
        rows = [Row(pr, _got(results["legacy"], pr), _got(results["nft"], pr))
                for pr in s.plan.probes]
        names = list(s.created)
        timings = dict(s.timings)
    return Report(gen.scenario.source, src, rows, names, keep, time.monotonic() - t0, s.plan.skipped, timings)


def without_rule(gen: Any, family: str, chain_key: tuple[str, str], index: int) -> Any:
    """A copy of ``gen`` whose ruleset lacks one rule (for coverage and tests)."""
    rulesets = {fam: copy.deepcopy(rs) for fam, rs in gen.rulesets.items()}
    del rulesets[family].chains[chain_key].rules[index]
    return dataclasses.replace(gen, rulesets=rulesets)


def coverage(gen: Any, *, table: str = DEFAULT_TABLE, timeout: float = DEFAULT_TIMEOUT, jobs: int = DEFAULT_JOBS,
             progress: Callable[[str], None] | None = None) -> tuple[list[Probe], list[RuleCoverage]]:
    """Drop each rule of the nft table in turn and list the probes whose outcome changes.

    Only the nft side is built; the unaltered table's outcomes are the baseline. A rule no probe
    catches either changes nothing for the traffic the scenario can produce (an empty network, a
    rule another one backs up, a no-op such as DOCKER-USER's RETURN) or needs traffic it does not.
    """
    from nftdocker.nft.render import rule_text

    check_environment()
    out: list[RuleCoverage] = []
    with Session(gen, table=table, timeout=timeout, jobs=jobs, sides=("nft",)) as s:
        s.load_nft()
        base = s.probe()
        _check_controls(s, base)
        for fam in gen.families():
            rs = gen.rulesets[fam]
            for key, chain in rs.chains.items():
                for i, r in enumerate(chain.rules):
                    s.load_nft(without_rule(gen, fam, key, i))
                    got = s.probe()["nft"]
                    caught = [pr for pr in s.plan.probes if _key(got, pr) != _key(base["nft"], pr)]
                    if caught:  # confirm, as verify() does
                        got.update(s.probe(probes=caught, timeout=timeout * 2)["nft"])
                        caught = [pr for pr in caught if _key(got, pr) != _key(base["nft"], pr)]
                    text = f"{chain.nft_name}: {rule_text(r, rs, chain.table)}"
                    out.append(RuleCoverage(fam, chain.nft_name, i, text, r.origin, caught))
                    if progress:
                        progress(f"{fam} {text}: {'caught by ' + ', '.join('#' + str(p.id) for p in caught) if caught else 'NOT CAUGHT'}")
        probes = list(s.plan.probes)
    return probes, out
