"""The planner: the in-place edit from the kernel's view to the generated rulesets, or a full replace.

:func:`plan` is the one "diff, or replace when the difference is larger" of the engine. :func:`diff`
compares each family's :class:`view.KTable` with the generated chains (as keys): rules deleted by
handle, new rules put at the head (``insert``) or tail (``add``) of their chain, chains added or
removed, base-chain policies changed. ``filter-DOCKER-USER`` is never diffed: when absent it is
created as the full replace creates it (:func:`replace.chain_block`: the file's rules, then
``return``), and gets a ``return`` appended when it has none, exactly as a full replace does; the ``--user-rules`` file's rules (told by their key) lead it, and are deleted
and inserted again, all of them, when they are not exactly the file's, in its order, at its head.
:func:`diff` raises :class:`Replace` when no family's table exists yet, when the edit is larger
than the table, or when a chain would have to be created before chains that exist (``nft list
table`` lists chains in creation order, and the result must list exactly as a fresh full apply
does).

Why no ``add rule ... position H``: libnftables 1.0.6 fetches the whole rule cache for any rule
command that names a position or index (4 s for a 26,000-rule table, more than loading the table
afresh). So a block of new rules that lands between two kept rules is made contiguous with the
head or tail of its chain instead (:func:`chain_edit`): the longest run of kept rules with no new
rule inside it stays, and the rules on the shorter side are deleted and re-added. Docker's own
operations (``-A``/``-I``/``-D``) only ever touch the ends of a chain.

:func:`calls_edit` turns Docker's recorded calls (a replay of appended containers or of watch's
events) into the same kind of edit (with its view afterwards and its slots), without diffing the
host; both are committed, and their handles learnt, by :func:`commit.commit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Mapping

from nftdocker.nft.backend import Backend
from nftdocker.nft.ir import FAMILIES, Call, Ruleset
from nftdocker.nft.replace import chain_block, families, full
from nftdocker.nft.table import TABLE_COMMENT, USER_CHAIN, FileRule, RuleFile, is_own_chain, is_user_rules_key, \
    rules_of
from nftdocker.nft.transaction import Edit, Op, delete_rule, rule
from nftdocker.nft.view import KChain, KTable, WChain, wanted

class Replace(Exception):
    """The edit is not worth it (or not possible in place): do a full replace (the reason)."""


@dataclass
class ChainEdit:
    deletes: list[int]
    head: list[str]  # final order
    tail: list[str]
    handles: list[int | None]  # the chain's handles afterwards (None: added by this edit)


def chain_edit(keys: list[str], handles: list[int | None], new: list[str]) -> ChainEdit | None:
    """Delete/insert/append that turn ``keys`` into ``new`` without positional adds; None if equal.

    Matching blocks come from difflib (no autojunk); the longest run of kept rules with no new
    rule inside it stays where it is, new rules before it are inserted at the head, those after
    it appended, and every other old rule deleted.
    """
    if keys == new:
        return None
    n_old, n_new = len(keys), len(new)
    pre = 0
    while pre < n_old and pre < n_new and keys[pre] == new[pre]:
        pre += 1
    suf = 0
    while suf < n_old - pre and suf < n_new - pre and keys[n_old - 1 - suf] == new[n_new - 1 - suf]:
        suf += 1
    pairs: list[tuple[int, int]] = [(i, i) for i in range(pre)]
    mid_old, mid_new = keys[pre:n_old - suf], new[pre:n_new - suf]
    if mid_old and mid_new:
        sm = SequenceMatcher(None, mid_old, mid_new, autojunk=False)
        for i, j, n in sm.get_matching_blocks():
            pairs.extend((pre + i + t, pre + j + t) for t in range(n))
    pairs.extend((n_old - suf + t, n_new - suf + t) for t in range(suf))
    best: tuple[int, int] = (0, 0)  # [start, end) into pairs
    start = 0
    for p in range(1, len(pairs) + 1):
        if p == len(pairs) or pairs[p][1] != pairs[p - 1][1] + 1:
            if p - start > best[1] - best[0]:
                best = (start, p)
            start = p
    run = pairs[best[0]:best[1]]
    kept = {i for i, _ in run}
    deletes = [h for i, h in enumerate(handles) if i not in kept and h is not None]
    if any(h is None for i, h in enumerate(handles) if i not in kept):
        raise Replace("a rule without a known handle would have to be deleted")
    if run:
        j0, j1 = run[0][1], run[-1][1] + 1
        head, tail = new[:j0], new[j1:]
        after = [None] * j0 + [handles[i] for i, _ in run] + [None] * (n_new - j1)
    else:
        head, tail = [], list(new)
        after = [None] * n_new
    return ChainEdit(deletes, head, tail, after)


def file_rules_in_place(keys: list[str], file_rules: list[FileRule]) -> bool:
    """Does ``filter-DOCKER-USER`` (its keys) begin with exactly ``file_rules``, and hold no other
    rule of a ``--user-rules`` file?"""
    n = len(file_rules)
    return keys[:n] == [r.key for r in file_rules] and not any(is_user_rules_key(k) for k in keys[n:])


def _rule_op(verb: str, family: str, table: str, w: WChain, idx: int, key: str) -> Op:
    """The operation adding generated rule ``idx`` of ``w`` (its key), with the rule's origin."""
    return Op(verb, "rule", family, table, w.name, key, None, w.chain.rules[idx].origin)


def diff(views: dict[str, KTable | None], rulesets: Mapping[str, Ruleset], table: str,
         user_rules: RuleFile | None = None) -> Edit:
    """The in-place edit from ``views`` (the kernel's tables, by family) to ``rulesets``; raises Replace.

    ``user_rules``: the ``--user-rules`` file's rules lead ``filter-DOCKER-USER``; without it, the
    rules an earlier file put there are deleted. The user's own rules there are kept as they are."""
    tx = Edit()
    fams = families(rulesets)
    if not any(views.get(f) is not None for f in FAMILIES):
        raise Replace("no table loaded yet")
    total_rules = sum(v.rule_count() for v in views.values() if v is not None)
    edits = 0
    deletes: list[Op] = []
    adds: list[tuple[Op, int]] = []  # (add or insert, index in the chain afterwards)
    chain_adds: list[Op] = []
    chain_dels: list[Op] = []
    table_dels: list[Op] = []
    for fam in FAMILIES:
        kt = views.get(fam)
        if fam not in fams:
            if kt is not None:
                if kt.user_objects or any(not is_own_chain(n) for n in kt.chains) or \
                        any(k != "return" for k in kt.chains.get(USER_CHAIN, KChain(USER_CHAIN)).keys):
                    raise Replace(f"{fam}: the table is no longer needed, but holds the user's objects")
                table_dels.append(Op("delete", "table", fam, table))
                tx.dropped.append(fam)
                edits += 1
                tx.removed += kt.rule_count()
            tx.after[fam] = None
            continue
        rs = rulesets[fam]
        want = wanted(rs)
        def new_chain(w: WChain, after: KTable) -> int:
            """Create chain ``w`` whole, as :func:`replace.chain_block` builds it (the file's rules
            first in ``filter-DOCKER-USER``); returns the edits it costs."""
            ops = chain_block({w.name: w}, fam, table, rules_of(user_rules, fam)).ops()
            chain_adds.append(ops[0])
            rules = ops[1:]
            keys = [op.rule_key for op in rules]
            after.chains[w.name] = KChain(w.name, w.base, w.policy, keys, [None] * len(keys))
            adds.extend((op, i) for i, op in enumerate(rules))
            tx.added += len(rules)
            return 1 + len(rules)

        if kt is None:  # this family's table is new: create it whole
            after = KTable(fam, None)
            chain_adds.append(Op("add", "table", fam, table, body=TABLE_COMMENT))
            for w in want.values():
                edits += new_chain(w, after)
            tx.after[fam] = after
            continue
        # chains: kept ones must be a prefix of the wanted order (nft lists chains in creation order)
        # (filter-DOCKER-USER aside: a replace in place keeps it, and the user's chains, where they were)
        kept_names = [n for n in kt.chains if n in want and n != USER_CHAIN]
        if kept_names != [n for n in want if n != USER_CHAIN][:len(kept_names)]:
            raise Replace(f"{fam}: a chain would be created before existing ones")
        after = KTable(fam, kt.handle, user_objects=kt.user_objects)
        for n, kc in kt.chains.items():
            if not is_own_chain(n):  # the user's chain: kept as it is
                after.chains[n] = KChain(n, kc.base, kc.policy, list(kc.keys), list(kc.handles))
            elif n not in want:
                chain_dels.append(Op("flush", "chain", fam, table, n))
                chain_dels.append(Op("delete", "chain", fam, table, n))
                edits += 1
                tx.removed += len(kc.keys)
        for w in want.values():
            kc = kt.chains.get(w.name)
            if kc is None:
                edits += new_chain(w, after)
                continue
            if kc.base != w.base:
                raise Replace(f"{fam} {w.name}: the kernel's chain has other hook settings")
            if kc.policy != w.policy:
                chain_adds.append(Op("add", "chain", fam, table, w.name, w.header or "", origin=f"chain {w.name}"))
                edits += 1
            if w.name == USER_CHAIN:  # the user's chain: the file's rules first, and a return
                keys, handles = list(kc.keys), list(kc.handles)
                file_rules = rules_of(user_rules, fam)
                if not file_rules_in_place(keys, file_rules):
                    stale = [h for k, h in zip(keys, handles) if is_user_rules_key(k)]
                    if None in stale:
                        raise Replace("a --user-rules rule without a known handle would have to be deleted")
                    deletes.extend(delete_rule(fam, table, w.name, h) for h in stale)  # type: ignore[arg-type]
                    kept_k = [(k, h) for k, h in zip(keys, handles) if not is_user_rules_key(k)]
                    for i in range(len(file_rules) - 1, -1, -1):
                        fr = file_rules[i]
                        adds.append((rule("insert", fam, table, w.name, fr.command_text, f"--user-rules {fr.where}", fr.key), i))
                    keys = [r.key for r in file_rules] + [k for k, _ in kept_k]
                    handles = [None] * len(file_rules) + [h for _, h in kept_k]
                    edits += len(stale) + len(file_rules)
                    tx.added += len(file_rules)
                    tx.removed += len(stale)
                if "return" not in keys:
                    adds.append((rule("add", fam, table, w.name, "return", "setupUserChain"), len(keys)))
                    keys.append("return")
                    handles.append(None)
                    edits += 1
                    tx.added += 1
                after.chains[w.name] = KChain(w.name, w.base, w.policy, keys, handles)
                continue
            ed = chain_edit(kc.keys, kc.handles, w.keys)
            if ed is None:
                after.chains[w.name] = KChain(w.name, w.base, w.policy, list(kc.keys), list(kc.handles))
                continue
            deletes.extend(delete_rule(fam, table, w.name, h) for h in ed.deletes)
            for i in range(len(ed.head) - 1, -1, -1):
                adds.append((_rule_op("insert", fam, table, w, i, ed.head[i]), i))
            base_i = len(w.keys) - len(ed.tail)
            for i, k in enumerate(ed.tail):
                adds.append((_rule_op("add", fam, table, w, base_i + i, k), base_i + i))
            n = len(ed.deletes) + len(ed.head) + len(ed.tail)
            edits += n
            tx.added += len(ed.head) + len(ed.tail)
            tx.removed += len(ed.deletes)
            after.chains[w.name] = KChain(w.name, w.base, w.policy, list(w.keys), ed.handles)
        tx.after[fam] = after
    if edits > total_rules:
        raise Replace(f"the edit ({edits} commands) is larger than the table ({total_rules} rules)")
    tx.extend(chain_adds)
    tx.extend(deletes)
    for op, idx in adds:
        tx.add(op)
        tx.slots.append((op.family, op.chain, idx))
    tx.extend(chain_dels + table_dels)
    if not tx:
        tx.mode = "noop"
    return tx


def calls_edit(views: dict[str, KTable | None], logs: dict[str, list[Call]], table: str) -> Edit | None:
    """Docker's recorded calls (:data:`Call`, per family) as an edit of the view, without a diff.

    Like :func:`diff`'s, the edit holds the view afterwards (``after``: the touched chains copied,
    the new rules' handles unknown) and the slots of its adds, so that :func:`commit.commit` learns
    their handles as for any edit. None if a call creates a chain or sets a policy, or the view
    lacks a chain the calls touch (or they touch the user's chain): then the host is diffed. A
    rule added and deleted again within the change is left out of both.
    """
    tx = Edit()
    steps: list[list[Any]] = []  # [op, family, chain, key, handle (delete) or index afterwards (add), origin]
    for fam in FAMILIES:
        calls = logs.get(fam, [])
        if not calls:
            continue
        kt = views.get(fam)
        if kt is None:
            return None
        added: dict[tuple[str, str], list[list[Any]]] = {}
        gone: set[int] = set()  # handles deleted by earlier steps of this change
        for op, ipt_table, chain_name, key, origin in calls:
            name = f"{ipt_table}-{chain_name}"
            kc = kt.chains.get(name)
            if name == USER_CHAIN or kc is None or op not in ("add", "insert", "delete"):
                return None
            if op == "delete":
                mine = added.get((name, key))
                if mine:
                    mine.pop()[0] = "skip"
                    continue
                h, i = None, -1
                while h is None:
                    try:
                        i = kc.keys.index(key, i + 1)
                    except ValueError:
                        break
                    if kc.handles[i] not in gone:
                        h = kc.handles[i]
                if h is None:
                    return None
                gone.add(h)
                steps.append(["delete", fam, name, key, h, origin])
            else:
                step = [op, fam, name, key, None, origin]
                added.setdefault((name, key), []).append(step)
                steps.append(step)
    tx.after = _after_steps(views, steps)
    for op, fam, name, key, h, origin in steps:
        if op == "delete":
            tx.add(delete_rule(fam, table, name, h))
            tx.removed += 1
        elif op != "skip":
            tx.add(rule(op, fam, table, name, key, origin))
            tx.slots.append((fam, name, h))  # h: the rule's index in the chain afterwards (_after_steps)
            tx.added += 1
    if not tx:
        tx.mode = "noop"
    return tx


def _after_steps(views: dict[str, KTable | None], steps: list[list[Any]]) -> dict[str, KTable | None]:
    """``views`` with ``steps`` done on copies of the chains they touch (``views`` is left as it is);
    each new rule's handle is None until it is known, and the steps get their slots: the
    add/insert step's ``[4]`` becomes its index in the chain afterwards. The new rules' indexes are
    followed as the steps shift them, so the cost is the steps', not the chains' length."""
    after = {f: (KTable(kt.family, kt.handle, dict(kt.chains), kt.user_objects) if kt is not None else None)
             for f, kt in views.items()}
    placed: dict[tuple[str, str], list[list[Any]]] = {}  # chain -> [index now, step] of each rule added
    for step in steps:
        op, fam, name = step[0], step[1], step[2]
        if op == "skip":
            continue
        kt = after[fam]
        assert kt is not None
        if (fam, name) not in placed:
            kc0 = kt.chains[name]
            kt.chains[name] = KChain(name, kc0.base, kc0.policy, list(kc0.keys), list(kc0.handles))
            placed[(fam, name)] = []
        kc, mine = kt.chains[name], placed[(fam, name)]
        if op == "delete":
            i = kc.handles.index(step[4])
            del kc.keys[i]
            del kc.handles[i]
            for m in mine:
                if m[0] > i:
                    m[0] -= 1
            continue
        if op == "add":
            kc.keys.append(step[3])
            kc.handles.append(None)
            mine.append([len(kc.keys) - 1, step])
        else:
            kc.keys.insert(0, step[3])
            kc.handles.insert(0, None)
            for m in mine:
                m[0] += 1
            mine.append([0, step])
    for mine in placed.values():
        for i, step in mine:
            step[4] = i
    return after


def plan(be: Backend, views: dict[str, KTable | None] | None, rulesets: Mapping[str, Ruleset], table: str,
         user_rules: RuleFile | None = None, replace: bool = False) -> tuple[Edit, str]:
    """The one "diff, or replace when the difference is larger": the in-place edit from ``views``
    to ``rulesets``, or the full replace (``replace``, or :func:`diff` said so); and why it is a
    full replace ("" when it is not)."""
    if replace or views is None:
        return full(be, rulesets, table, user_rules), "--replace" if replace else "the table is not known"
    try:
        return diff(views, rulesets, table, user_rules), ""
    except Replace as e:
        return full(be, rulesets, table, user_rules), str(e)
