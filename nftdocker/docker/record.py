"""Docker's replay with its calls recorded: what an operation did to the rules, as Docker did it.

:class:`RecordingFirewall` is :class:`~nftdocker.docker.generate.Firewall` over :class:`RecordingIptables`: while
:meth:`RecordingFirewall.recording` is on, every change Docker makes is recorded per family as a
call ``(op, iptables table, chain, rule key, the rule's origin)`` (op: add, insert, delete, chain,
policy), in Docker's order. The apply engine sends those calls as they are
(:func:`nftdocker.nft.diff.calls_edit`): adding a container costs its own calls, not a generation
of the host. :mod:`checkpoint`'s :class:`~checkpoint.ResumedFirewall` records the same calls.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

from nftdocker.docker.generate import Firewall
from nftdocker.docker.iptables import Iptables
from nftdocker.model import Scenario
from nftdocker.nft.ir import Call, Chain, Family, Rule
from nftdocker.nft.render import rule_text

class RecordingIptables(Iptables):
    """:class:`nftdocker.docker.iptables.Iptables` that records Docker's calls in :attr:`log` while it is a list."""

    def __init__(self, family: Family) -> None:
        super().__init__(family)
        self.log: list[Call] | None = None

    def _record(self, op: str, table: str, chain: str, r: Rule | None) -> None:
        assert self.log is not None
        self.log.append((op, table, chain, rule_text(r, self.rs, table) if r is not None else "", r.origin if r is not None else ""))

    def chain(self, table: str, name: str) -> Chain:
        if self.log is not None and (table, name) not in self.rs.chains:
            self._record("chain", table, name, None)
        return super().chain(table, name)

    def append(self, table: str, chain: str, r: Rule) -> None:
        if self.log is not None and not self.has(table, chain, r):
            self._record("add", table, chain, r)
        super().append(table, chain, r)

    def insert(self, table: str, chain: str, r: Rule) -> None:
        if self.log is not None and not self.has(table, chain, r):
            self._record("insert", table, chain, r)
        super().insert(table, chain, r)

    def delete(self, table: str, chain: str, r: Rule) -> None:
        if self.log is not None and self.has(table, chain, r):
            self._record("delete", table, chain, r)
        super().delete(table, chain, r)

    def set_policy(self, table: str, chain: str, policy: Literal["ACCEPT", "DROP"]) -> None:
        if self.log is not None and self.rs.chains.get((table, chain), Chain(table, chain)).policy != policy:
            self._record("policy", table, chain, None)
        super().set_policy(table, chain, policy)


class RecordingFirewall(Firewall):
    """:class:`~nftdocker.docker.generate.Firewall` whose calls can be recorded (the long-running model)."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.ipt = {4: RecordingIptables("ip"), 6: RecordingIptables("ip6")}  # type: ignore[dict-item]

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[str, list[Call]]]:
        """Record the calls made within the block, per family (``ip``, ``ip6``)."""
        logs: dict[str, list[Call]] = {"ip": [], "ip6": []}
        ipt4, ipt6 = self.ipt[4], self.ipt[6]
        ipt4.log, ipt6.log = logs["ip"], logs["ip6"]  # type: ignore[attr-defined]
        try:
            yield logs
        finally:
            ipt4.log = ipt6.log = None  # type: ignore[attr-defined]
