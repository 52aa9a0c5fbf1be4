"""The full replace: the one builder of a whole table, and of our chains replaced in place.

:func:`chain_block` is the one place a ruleset becomes chains and rules in Docker's order: the full
replace sends it, the in-place replace sends its operations around the user's part, and
:func:`render_nft` (``nftdocker render``) writes it as ``nft -f`` input.

A table that holds nothing of the user's is replaced whole: ``add table`` + ``delete table``
(nft 1.0.6 has no ``destroy``), then the table marked as ours, its chains, then its rules in
Docker's order, sent in nft's block form. Created anew, the kernel numbers its chains and then
its rules 1, 2, ... in that order: the view it leaves is known in advance.

A table that holds the user's rules in ``filter-DOCKER-USER``, or chains, sets or other objects
of the user's, is replaced in place (:func:`in_place`): our chains flushed, deleted and added
again, nothing of the user's deleted (so nothing of theirs is read back or parsed again); the
``--user-rules`` file's rules there before are deleted and the file's inserted at the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from nftdocker.errors import UsageError
from nftdocker.nft.backend import Backend
from nftdocker.nft.ir import FAMILIES, Ruleset
from nftdocker.nft.netlink import Event
from nftdocker.nft.table import TABLE_COMMENT, TABLE_MARK, USER_CHAIN, FileRule, RuleFile, is_own_chain, \
    is_user_rules_key, rules_of
from nftdocker.nft.render import DEFAULT_TABLE
from nftdocker.nft.transaction import Block, ChainBlock, Edit, Op, delete_rule, rule
from nftdocker.nft.view import KChain, KTable, WChain, wanted


def families(rulesets: Mapping[str, Ruleset]) -> list[str]:
    """The families with rules (``ip6`` only while ip6tables is on)."""
    return [f for f in FAMILIES if f in rulesets and not rulesets[f].is_empty()]


def owned(be: Backend, family: str, table: str) -> Event | None:
    """The table (handle, use count, comment), or None if it is not there. Raises UsageError for a
    table nftdocker did not create (no :data:`TABLE_MARK` comment): nftdocker neither changes nor removes it."""
    info = be.table_info(family, table)
    if info is None:
        return None
    if info.comment != TABLE_MARK:
        raise UsageError(
            f"table {family} {table} exists and was not created by nftdocker (its comment is not {TABLE_MARK!r}): "
            f"nftdocker neither replaces nor removes it; choose another --table (if it is an older nftdocker's "
            f"table, delete it once with: nft delete table {family} {table})")
    return info


@dataclass
class Kept:
    """What the user keeps in one of our tables (see :func:`user_content`)."""

    own: list[str]  # our chains now in the table, in the kernel's order
    user_rules: int  # rules in filter-DOCKER-USER other than a bare return (and the file's)
    has_return: bool  # filter-DOCKER-USER holds a bare return
    #: handles of the --user-rules file's rules in filter-DOCKER-USER (told by their comment)
    tagged: list[int] = field(default_factory=list)


def user_content(be: Backend, family: str, table: str, info: Event) -> Kept | None:
    """What the user keeps in our table, or None when there is nothing of the user's: no rule but
    ``return`` in ``filter-DOCKER-USER``, no chain, set, map or stateful object of the user's."""
    chains = be.chain_names(family, table)
    own = [c for c in chains if is_own_chain(c)]
    users, has_return, tagged = 0, False, []
    if USER_CHAIN in own:
        for key, handle in be.read_chain(family, table, USER_CHAIN):
            if key == "return":
                has_return = True
            elif is_user_rules_key(key):
                tagged.append(handle)  # type: ignore[arg-type]
            else:
                users += 1
    if users == 0 and len(own) == len(chains) and (info.use or 0) <= len(chains):
        return None
    return Kept(own, users, has_return, tagged)


def chain_block(want: dict[str, WChain], family: str, table: str, file_rules: list[FileRule], declaration: str = "") -> Block:
    """The wanted chains as a new table's chains, in Docker's order, each rule with its origin;
    the file's rules first in ``filter-DOCKER-USER``. The one place a ruleset becomes chains and rules."""
    out = Block(family, table, declaration)
    for w in want.values():
        origins = [r.origin for r in w.chain.rules]
        if w.name == USER_CHAIN and file_rules:
            out.chains.append(ChainBlock(w.name, w.header or "", [r.command_text for r in file_rules] + w.keys,
                                         [f"--user-rules {r.where}" for r in file_rules] + origins,
                                         [r.key for r in file_rules] + [None] * len(w.keys)))
        else:
            out.chains.append(ChainBlock(w.name, w.header or "", w.keys, origins))
    return out


def chain_ops(want: dict[str, WChain], family: str, table: str, file_rules: list[FileRule],
              kept: Kept | None = None) -> list[Op]:
    """:func:`chain_block`'s operations, one by one. With ``kept`` holding ``filter-DOCKER-USER``,
    that chain stays: the file's rules there are replaced at its head, a ``return`` added if it has none."""
    ops = chain_block(want, family, table, file_rules).ops()
    if kept is None or USER_CHAIN not in kept.own or USER_CHAIN not in want:
        return ops
    ops = [op for op in ops if op.chain != USER_CHAIN]
    order = {name: i for i, name in enumerate(want)}
    mine = order[USER_CHAIN]
    at = next((i for i, op in enumerate(ops) if op.obj == "rule" and order[op.chain] > mine), len(ops))  # its place among the rules
    user = [delete_rule(family, table, USER_CHAIN, h) for h in kept.tagged]
    user += [rule("insert", family, table, USER_CHAIN, r.command_text, f"--user-rules {r.where}", r.key) for r in reversed(file_rules)]
    if not kept.has_return:
        user.append(rule("add", family, table, USER_CHAIN, "return", "setupUserChain"))
    return ops[:at] + user + ops[at:]


def in_place(rs: Ruleset | None, family: str, table: str, kept: Kept, file_rules: list[FileRule] | None = None) -> list[Op]:
    """Our chains of ``family``'s table replaced in place: the user's objects and
    ``filter-DOCKER-USER`` stay as they are; with ``rs`` None our chains are removed. The kernel's
    new handles are not known in advance, so the table is listed again next time."""
    redo = [c for c in kept.own if c != USER_CHAIN]
    ops = [Op("flush", "chain", family, table, c) for c in redo] + [Op("delete", "chain", family, table, c) for c in redo]
    if rs is None:
        return ops
    return ops + chain_ops(wanted(rs), family, table, file_rules or [], kept)


def full(be: Backend, rulesets: Mapping[str, Ruleset], table: str, user_rules: RuleFile | None = None) -> Edit:
    """The full replace of both families' tables, with the view it leaves (see the module docstring)."""
    tx = Edit(mode="full", block=True)
    fams = families(rulesets)
    for fam in FAMILIES:
        info = owned(be, fam, table)
        kept = user_content(be, fam, table, info) if info is not None else None
        file_rules = rules_of(user_rules, fam)
        if kept is not None:
            part = in_place(rulesets[fam] if fam in fams else None, fam, table, kept, file_rules)
            tx.extend(part)
            tx.in_place.append(fam)
            tx.kept[fam] = kept.user_rules
            tx.after[fam] = None
            tx.added += sum(1 for op in part if op.verb == "add" and op.obj == "rule")
            continue
        if fam not in fams:
            if info is not None:
                tx.add(Op("delete", "table", fam, table))
                tx.dropped.append(fam)
            tx.after[fam] = None
            continue
        if info is not None:
            tx.add(Op("add", "table", fam, table))
            tx.add(Op("delete", "table", fam, table))
        want = wanted(rulesets[fam])
        tx.add(chain_block(want, fam, table, file_rules, TABLE_COMMENT))
        kt = KTable(fam, None)
        handle = len(want)
        for w in want.values():
            keys = [r.key for r in file_rules] + w.keys if w.name == USER_CHAIN else list(w.keys)
            kt.chains[w.name] = KChain(w.name, w.base, w.policy, keys, list(range(handle + 1, handle + 1 + len(keys))))
            handle += len(keys)
        tx.after[fam] = kt
        tx.added += kt.rule_count()
    return tx


def render_nft(rulesets: Mapping[str, Ruleset] | Sequence[Ruleset], table: str = DEFAULT_TABLE, comments: bool = False) -> str:
    """``nft -f`` input for the rulesets (non-empty families only): the full replace's tables in
    block form, a blank line between chains; ``comments``: each rule with its origin."""
    out: list[str] = []
    for rs in rulesets.values() if isinstance(rulesets, Mapping) else rulesets:
        if not rs.is_empty():
            out.extend(chain_block(wanted(rs), rs.family, table, []).lines(spaced=True, comments=comments))
    return "\n".join(out) + ("\n" if out else "")
