"""Docker's iptables calls, emulated on per-chain lists: the chains, ``-C`` then ``-A``/``-I``, ``-D``, ``-P``.

Mirrors moby 76417bf763 libnetwork/iptables/iptables.go (``NewChain``, ``Rule.Append``,
``Rule.Insert``, ``Rule.Delete``, ``EnsureJumpRule``, ``SetDefaultPolicy``) and the chain names
the bridge driver declares (libnetwork/drivers/bridge/setup_ip_tables_linux.go, and
libnetwork/firewall_linux.go for ``DOCKER-USER``). The order iptables-save shows is the history of
these calls, so replaying them on lists gives that order by construction.
"""

from __future__ import annotations

from typing import Literal

from nftdocker.nft.ir import Chain, Family, Jump, Rule, Ruleset, rule

#: an IP version, as moby's iptables.IPVersion
V = Literal[4, 6]

DOCKER = "DOCKER"
DOCKER_FORWARD = "DOCKER-FORWARD"
DOCKER_BRIDGE = "DOCKER-BRIDGE"
DOCKER_CT = "DOCKER-CT"
DOCKER_USER = "DOCKER-USER"
ISOLATION1 = "DOCKER-ISOLATION-STAGE-1"
ISOLATION2 = "DOCKER-ISOLATION-STAGE-2"


class Iptables:
    """One family's iptables, as Docker drives it: check-then-insert/append, delete, policy.

    ``index`` holds each chain's rules as a set, so the ``-C`` check before every insert and
    append costs O(1) instead of a scan of the chain (thousands of rules on a large host). A rule
    is only added when absent, so a chain never holds one twice. ``hashes`` holds each chain's
    rules' hashes in the chain's order, so that ``-D`` finds its rule by comparing integers (a
    rule's own equality is Python code: thousands of calls a delete on a large host).
    """

    def __init__(self, family: Family) -> None:
        self.rs = Ruleset(family)
        self.index: dict[tuple[str, str], set[Rule]] = {}
        self.hashes: dict[tuple[str, str], list[int]] = {}
        #: while set, every rule added is recorded here (what an operation must undo later)
        self.journal: list[tuple[str, str, Rule]] | None = None

    def chain(self, table: str, name: str) -> Chain:
        key = (table, name)
        c = self.rs.chains.get(key)
        if c is None:
            c = Chain(table, name)
            if c.builtin:
                c.policy = "ACCEPT"
            self.rs.chains[key] = c
            self.index[key] = set()
            self.hashes[key] = []
        return c

    def new_chain(self, table: str, name: str) -> None:
        """iptables.NewChain: ``-N`` if missing; never flushed."""
        self.chain(table, name)

    def has(self, table: str, chain: str, r: Rule) -> bool:
        present = self.index.get((table, chain))
        return present is not None and r in present

    def append(self, table: str, chain: str, r: Rule) -> None:
        """Rule.Append: ``-C`` then ``-A`` if absent."""
        c = self.chain(table, chain)
        present = self.index[(table, chain)]
        if r not in present:
            c.rules.append(r)
            self.hashes[(table, chain)].append(hash(r))
            present.add(r)
            if self.journal is not None:
                self.journal.append((table, chain, r))

    def insert(self, table: str, chain: str, r: Rule) -> None:
        """Rule.Insert: ``-C`` then ``-I`` (position 1) if absent."""
        c = self.chain(table, chain)
        present = self.index[(table, chain)]
        if r not in present:
            c.rules.insert(0, r)
            self.hashes[(table, chain)].insert(0, hash(r))
            present.add(r)
            if self.journal is not None:
                self.journal.append((table, chain, r))

    def delete(self, table: str, chain: str, r: Rule) -> None:
        """Rule.Delete: ``-D`` if present."""
        present = self.index.get((table, chain))
        if present is not None and r in present:
            rules, hashes, h = self.rs.chains[(table, chain)].rules, self.hashes[(table, chain)], hash(r)
            i = hashes.index(h)
            while rules[i] != r:  # another rule with the same hash
                i = hashes.index(h, i + 1)
            del rules[i], hashes[i]
            present.remove(r)

    def ensure_jump(self, table: str, src: str, dst: str, origin: str) -> None:
        """iptables.EnsureJumpRule: delete ``-j dst`` if present, then insert it at the top."""
        r = rule(action=Jump(dst), origin=origin)
        self.delete(table, src, r)
        self.insert(table, src, r)

    def set_policy(self, table: str, chain: str, policy: Literal["ACCEPT", "DROP"]) -> None:
        """iptables.SetDefaultPolicy: ``-P``."""
        self.chain(table, chain).policy = policy

    def snapshot(self) -> Ruleset:
        """The ruleset as it is now, in chains of its own (later calls leave it as it is)."""
        rs = self.rs
        return Ruleset(rs.family, {key: Chain(c.table, c.name, list(c.rules), c.policy, c.prio) for key, c in rs.chains.items()})
