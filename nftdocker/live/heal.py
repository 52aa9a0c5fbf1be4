"""Notice when anyone else changes nftdocker's table, and what to put back.

``watch`` owns nftdocker's table while it runs. Others can still change it: ``nft flush ruleset``
(the first line of Debian's ``/etc/nftables.conf``, so ``systemctl restart nftables`` does it),
``nft delete table``, a rule deleted or added by hand. :class:`KernelWatch` reads the kernel's
nftables notifications of the namespace (:class:`nftdocker.nft.netlink.Monitor`, a netlink socket on the
nftables multicast group) in a thread of its own, and hands every commit that touched the table
and was not made by this process to a callback, as a :class:`Tamper` (what happened, who did it,
when it was seen). The watcher then restores the table (``watch.Watcher._on_tamper``): a commit
that deleted the table (``nft flush ruleset``, ``nft delete table``) or added or deleted anything in
one of the chains nftdocker generates is undone at once. A deleted table is loaded again whole
(a full replace, with the ``--user-rules`` file's rules, as every sync and change has them), then
what the user had in it (below) right after, in a second transaction; anything else goes through the
applier (only the difference). The log line's time runs from the notification until the kernel
took the restore.

Changes to ``filter-DOCKER-USER`` and to the user's own chains (chains in the table that nftdocker
does not generate) are the user's: they are not undone, but remembered (:func:`read_user_state`),
so that when the whole table goes, :func:`restore_commands` puts them back as they last were. They
are kept as the kernel's JSON listing and go back as libnftables JSON, in a second transaction
right after the one that re-creates the table: nft 1.0.6's JSON cannot carry the table's
ownership comment, and nft text cannot carry every string a user may have put in a comment.
The ``--user-rules`` file's rules (told by their comment) are not remembered: they are part of what
the full replace writes, at the head of ``filter-DOCKER-USER``; the user's rules that stood between
them and the ``return`` go back right after them.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from nftdocker.apply.engine import apply, kernel
from nftdocker.errors import KernelError
from nftdocker.host import user_rules as urules
from nftdocker.live.batch import POLL  # also how long the reader waits on the socket before looking at the stop flag
from nftdocker.nft.backend import Backend, kernel_message
from nftdocker.nft.listing import reading
from nftdocker.nft.netlink import (MSG_DELCHAIN, MSG_DELRULE, MSG_DELTABLE, MSG_NEWCHAIN, MSG_NEWGEN, MSG_NEWRULE, MSG_NEWTABLE,
                                   Event, Monitor)
from nftdocker.nft import netns as namespaces
from nftdocker.nft.ir import FAMILIES
from nftdocker.nft.table import USER_CHAIN, is_own_chain, key_of_comment, rules_of

_WHAT = {MSG_DELRULE: "rule deleted from", MSG_NEWRULE: "rule added to", MSG_DELCHAIN: "chain deleted:",
         MSG_NEWCHAIN: "chain added:"}


@dataclass
class Tamper:
    """One or more commits by other processes that touched the table."""

    at: float  # time.monotonic() when the notification was read
    events: list[Event] = field(default_factory=list)
    others: set[str] = field(default_factory=set)  # other tables the same commits deleted
    who: list[str] = field(default_factory=list)  # "nft[4242]"
    lost: bool = False  # the kernel dropped notifications: anything may have happened

    def describe(self, table: str) -> str:
        """``ruleset flushed by nft[4242]``, ``rule deleted from filter-DOCKER by nft[77]``, ..."""
        parts: list[str] = []
        deleted = sorted({e.family for e in self.events if e.msg == MSG_DELTABLE})
        if deleted and self.others:
            parts.append("ruleset flushed")
        elif deleted:
            parts.append(f"table {' and '.join(f'{f} {table}' for f in deleted)} deleted")
        else:
            for e in self.events:
                what = _WHAT.get(e.msg)
                if what is None:
                    continue
                text = f"{what} {e.chain}"
                if text not in parts:
                    parts.append(text)
        if not parts and self.lost:
            parts.append("notifications lost")
        text = ", ".join(parts[:3]) + (f" (+{len(parts) - 3} more)" if len(parts) > 3 else "") or "table changed"
        return text + (f" by {', '.join(self.who)}" if self.who else "")


def _ours(tid: int | None) -> bool:
    """Was the commit made by a thread of this process? (NEWGEN carries the committer's thread id.)"""
    return tid is not None and os.path.exists(f"/proc/self/task/{tid}")


def _who(tid: int | None) -> str:
    if tid is None:
        return ""
    try:
        with open(f"/proc/{tid}/comm") as f:
            return f"{f.read().strip()}[{tid}]"
    except OSError:  # it has exited already (an `nft` command does quickly)
        return f"pid {tid}"


class KernelWatch:
    """A thread that calls ``on_tamper(Tamper)`` for each foreign commit touching ``table``."""

    def __init__(self, netns: str | None, table: str, on_tamper: Callable[[Tamper], None]) -> None:
        self.table = table
        self.on_tamper = on_tamper
        with namespaces.netns(netns):  # the socket belongs to the namespace it is made in
            self.mon = Monitor()
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="nftdocker-kernel-watch", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self._stopping = True
        self.thread.join(2 * POLL + 1)
        self.mon.close()

    def _run(self) -> None:
        mon = self.mon
        while not self._stopping:
            try:
                commits = mon.commits(POLL)
                if commits:
                    commits += mon.commits(0)  # whatever else is already there: one restore for a burst
            except OSError:
                return  # the socket was closed
            lost, mon.lost = mon.lost, False
            if not commits and not lost:
                continue
            t = Tamper(time.monotonic(), lost=lost)
            for c in commits:
                tid = c[-1].pid if c and c[-1].msg == MSG_NEWGEN else None
                if _ours(tid):
                    continue
                mine = [e for e in c if e.table == self.table and e.family in FAMILIES and e.msg != MSG_NEWGEN]
                if not mine:
                    continue
                t.events.extend(mine)
                t.others |= {f"{e.family} {e.table}" for e in c if e.msg == MSG_DELTABLE and e.table != self.table}
                if (w := _who(tid)) and w not in t.who:
                    t.who.append(w)
            if t.events or t.lost:
                self.on_tamper(t)


# ---------------------------------------------------------------------- the user's part of the table


@dataclass
class UserState:
    """A family's user content as the kernel listed it, as libnftables JSON objects (handles
    dropped): its sets and maps, its own chains with their rules, and the ``filter-DOCKER-USER``
    rules (None: no such chain). It goes back as JSON, never as text a parser reads again."""

    user_rules: list[dict[str, Any]] | None
    sets: list[dict[str, Any]] = field(default_factory=list)
    chains: list[dict[str, Any]] = field(default_factory=list)
    chain_rules: list[dict[str, Any]] = field(default_factory=list)

    def count(self) -> tuple[int, int]:
        """(DOCKER-USER rules other than its return, user chains)."""
        return len([r for r in self.user_rules or [] if not _is_return(r)]), len(self.chains)


def _is_return(rule: dict[str, Any]) -> bool:
    return rule.get("expr") == [{"return": None}]


def _is_file_rule(rule: dict[str, Any]) -> bool:
    comment = rule.get("comment")
    return isinstance(comment, str) and key_of_comment(comment) is not None


def _bare(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "handle"}


def read_user_state(netns: str | None, table: str, gen: Any, backend: Backend | None = None) -> dict[str, UserState]:
    """The user's part of each loaded family's table now (families whose table is absent left out);
    ``backend``: read it instead of the namespace's libnftables."""
    out: dict[str, UserState] = {}
    with reading(netns, backend) as nft:
        for fam in FAMILIES:
            names = nft.chain_names(fam, table)
            if not names:
                continue
            st = UserState(None)
            if USER_CHAIN in names:
                st.user_rules = [_bare(o["rule"]) for o in nft.list_json(f"list chain {fam} {table} {USER_CHAIN}")
                                 if "rule" in o and not _is_file_rule(o["rule"])]
            for name in names:
                if is_own_chain(name):
                    continue
                for o in nft.list_json(f"list chain {fam} {table} {name}"):
                    if "chain" in o:
                        st.chains.append(_bare(o["chain"]))
                    elif "rule" in o:
                        st.chain_rules.append(_bare(o["rule"]))
            for kind in ("sets", "maps"):
                for o in nft.list_json(f"list {kind} {fam}"):
                    body = o.get("set") or o.get("map")
                    if body and body.get("table") == table:
                        listed = nft.list_json(f"list {kind[:-1]} {fam} {table} {body['name']}")  # with its elements
                        st.sets.extend({kind[:-1]: _bare(x[kind[:-1]])} for x in listed if kind[:-1] in x)
            out[fam] = st
    return out


def restore_commands(st: UserState, file_rules: int = 0) -> list[dict[str, Any]]:
    """libnftables JSON commands that put ``st`` back into a table just re-created
    (``filter-DOCKER-USER`` holding only ``file_rules`` rules of the ``--user-rules`` file and its
    ``return``): sets, chains, their rules, then the DOCKER-USER rules in their order around that
    return (after the file's rules)."""
    cmds: list[dict[str, Any]] = [{"add": o} for o in st.sets]
    cmds += [{"add": {"chain": c}} for c in st.chains]
    cmds += [{"add": {"rule": r}} for r in st.chain_rules]
    rules = st.user_rules or []
    last_return = max((i for i, r in enumerate(rules) if _is_return(r)), default=None)
    head, tail = (rules, []) if last_return is None else (rules[:last_return], rules[last_return + 1:])
    if file_rules:  # after the file's rules (an index: libnftables then lists the chain first)
        cmds += [{"add": {"rule": {**r, "index": file_rules - 1 + i}}} for i, r in enumerate(head)]
    else:
        cmds += [{"insert": {"rule": r}} for r in reversed(head)]  # before the chain's return, in order
    cmds += [{"add": {"rule": r}} for r in tail]
    return cmds


# ---------------------------------------------------------------------- restoring


def touches_ours(tamper: Tamper, gen: Any) -> bool:
    """Did the commits delete or create the table, or change one of nftdocker's chains (other
    than DOCKER-USER)? If not, they were the user's own changes, to be kept."""
    if tamper.lost:
        return True
    return any(e.msg in (MSG_DELTABLE, MSG_NEWTABLE) or (e.chain != USER_CHAIN and is_own_chain(e.chain))
               for e in tamper.events)


@dataclass
class Restored:
    mode: str  # full (a table was re-created) or the applier's mode
    added: int
    removed: int
    families: list[str] = field(default_factory=list)  # the families whose table was re-created
    user_rules: int = 0  # DOCKER-USER rules and user chains put back with them
    user_chains: int = 0

    def kept_text(self) -> str:
        if not (self.user_rules or self.user_chains):
            return ""
        return (f" with {self.user_rules} DOCKER-USER rule{'s' * (self.user_rules != 1)}, "
                f"{self.user_chains} user chain{'s' * (self.user_chains != 1)}")


def restore(gen: Any, netns: str | None, table: str, applier: Any, kept: dict[str, UserState],
            user_rules: urules.UserRules | None = None, backend: Backend | None = None) -> Restored | None:
    """Bring the table back to ``gen``. A family whose table is gone: the whole table again
    (a full replace, with the ``--user-rules`` file's rules), then ``kept`` (the user's part, as
    last read) in a second, JSON transaction.
    Otherwise the applier sends only the difference (DOCKER-USER and the user's chains are its
    business, as on every change). None: nothing differed. ``backend``: change it instead of the
    namespace's libnftables."""
    with reading(netns, backend) as be:
        missing = [f for f in gen.families() if be.table_info(f, table) is None]
    if not missing:
        stats = applier.apply(gen, gen)
        mode = getattr(stats, "mode", "")
        if mode == "noop":
            return None
        return Restored(mode, getattr(stats, "added_rules", 0), getattr(stats, "removed_rules", 0))
    apply(gen, netns, table, replace=True, store=False, user_rules=user_rules, backend=backend)
    back = [f for f in missing if f in kept and restore_commands(kept[f])]
    n_file = {f: len(rules_of(user_rules, f)) for f in back}
    if back:  # a second transaction: JSON, so that nothing of the user's is parsed as nft text
        with kernel(netns, backend) as be:
            rc, err = be.json_cmd({"nftables": [c for f in back for c in restore_commands(kept[f], n_file[f])]})
            if rc != 0:
                raise KernelError(f"the table is back, but the kernel refused the user's rules and chains: {kernel_message(err)}")
    added = sum(len(c.rules) for f in missing for c in gen.rulesets[f].chains.values())
    counts = [kept[f].count() for f in back]
    return Restored("full", added, 0, missing, sum(c[0] for c in counts), sum(c[1] for c in counts))


__all__ = ["KernelWatch", "Tamper", "UserState", "Restored", "read_user_state", "restore_commands",
           "touches_ours", "restore"]
