"""A kernel in memory: the :class:`backend.Backend` for tests that have no root (knftables' Fake).

:class:`FakeBackend` applies a transaction to a copy of its ruleset and swaps only on success,
so a refused transaction changes nothing. It refuses what the kernel refuses of nftdocker's
operations: a chain, rule or table that is not there, a chain deleted while it holds rules, a
rule that jumps to (or goes to) a chain that does not exist. It numbers tables, chains and rules
as the kernel does (a table's chains and rules share one counter from 1; tables one of the whole
ruleset), keeps a generation id that each commit increments, and tells its monitors what each
commit did, as the kernel's notifications do (NEWTABLE, NEWCHAIN, NEWRULE with the handle, ...,
then NEWGEN with the committer's thread id): the engine learns handles from them exactly as from
the kernel's. :meth:`FakeBackend.dump` lists it as sorted text; :attr:`FakeBackend.last` is the
last transaction sent; :meth:`FakeBackend.external` commits as another process would.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from nftdocker.errors import ApplyError
from nftdocker.nft.netlink import (MSG_DELCHAIN, MSG_DELRULE, MSG_DELTABLE, MSG_NEWCHAIN, MSG_NEWGEN, MSG_NEWRULE,
                                   MSG_NEWTABLE, Event)
from nftdocker.nft.render import PRIO_NAMES
from nftdocker.nft.transaction import Op, Transaction
from nftdocker.nft.view import KChain, KTable

_PRIO = {name: prio for prio, name in PRIO_NAMES.items()}
_HEADER = re.compile(r"type (\S+) hook (\S+) priority ([^;]+); policy (\S+);")
_JUMP = re.compile(r"\b(?:jump|goto) (\S+)")
_COMMENT = re.compile(r'comment "([^"]*)"')
_ids = itertools.count(1)
_META: dict[str, Any] = {"metainfo": {"json_schema_version": 1}}


@dataclass
class FRule:
    handle: int
    body: str
    key: str


@dataclass
class FChain:
    name: str
    header: str
    handle: int
    rules: list[FRule] = field(default_factory=list)


@dataclass
class FTable:
    handle: int
    comment: str
    chains: dict[str, FChain] = field(default_factory=dict)
    counter: int = 0  # the last handle given to a chain or rule of this table
    #: sets, maps and stateful objects (the user's; :meth:`FakeBackend.external` can add some)
    objects: int = 0

    def next(self) -> int:
        self.counter += 1
        return self.counter


class Refused(Exception):
    """What the fake kernel says to an operation it refuses."""


class FakeMonitor:
    """The notifications of the fake's commits (:class:`backend.Monitor`)."""

    def __init__(self, be: FakeBackend) -> None:
        self.be = be
        self.commits: list[list[Event]] = []
        self.foreign: list[Event] = []
        self.lost = False
        be.monitors.append(self)

    def drain(self) -> None:
        for c in self.commits:
            self.foreign.extend(c)
        self.commits = []

    def own_commit(self, tid: int, timeout: float = 2.0) -> tuple[int, list[Event]] | None:
        for i, c in enumerate(self.commits):
            if c[-1].pid == tid:
                for other in self.commits[:i] + self.commits[i + 1:]:
                    self.foreign.extend(other)
                self.commits = []
                return c[-1].genid or 0, c[:-1]
        self.drain()
        return None

    def close(self) -> None:
        if self in self.be.monitors:
            self.be.monitors.remove(self)


class FakeBackend:
    """See the module docstring."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], FTable] = {}
        self.generation = 1
        self.table_handles = itertools.count(1)
        self.monitors: list[FakeMonitor] = []
        self.last: Transaction | None = None
        self.commits = 0
        self.ident = next(_ids)

    # -------------------------------------------------------------- changing

    def run(self, tx: Transaction, check: bool = False) -> float:
        self.last = tx
        work = copy.deepcopy(self.tables)
        events: list[Event] = []
        ops = tx.ops
        for i, op in enumerate(ops, 1):
            try:
                self._apply(work, op, events)
            except Refused as e:
                raise ApplyError(f"the kernel refused the transaction, nothing changed: {e}; offending command {i}: "
                                 f"{op.line()}" + (f" (origin: {op.origin})" if op.origin else "")) from None
        self._check_jumps(work, ops)
        if not check:
            self._commit(work, events, threading.get_native_id())
        return 0.0

    def external(self, tx: Transaction, objects: dict[tuple[str, str], int] | None = None) -> None:
        """Commit ``tx`` as another process would (the monitors see a foreign commit); ``objects``
        adds sets or maps to tables."""
        work = copy.deepcopy(self.tables)
        events: list[Event] = []
        for op in tx.ops:
            self._apply(work, op, events)
        for where, n in (objects or {}).items():
            work[where].objects += n
        self._commit(work, events, 0)

    def _commit(self, work: dict[tuple[str, str], FTable], events: list[Event], pid: int) -> None:
        self.tables = work
        self.generation = (self.generation + 1) & 0xFFFFFFFF
        self.commits += 1
        events.append(Event(MSG_NEWGEN, "", genid=self.generation, pid=pid))
        for mon in self.monitors:
            mon.commits.append(list(events))

    def _apply(self, work: dict[tuple[str, str], FTable], op: Op, events: list[Event]) -> None:
        where = (op.family, op.table)
        t = work.get(where)
        if op.obj == "table":
            if op.verb == "add" and t is None:
                m = _COMMENT.search(op.body)
                t = work[where] = FTable(next(self.table_handles), m.group(1) if m else "")
                events.append(Event(MSG_NEWTABLE, op.family, op.table, handle=t.handle, comment=t.comment))
            elif op.verb == "delete":
                if t is None:
                    raise Refused("No such file or directory")
                del work[where]
                events.append(Event(MSG_DELTABLE, op.family, op.table, handle=t.handle))
            return
        if t is None:
            raise Refused(f"No such file or directory (no table {op.family} {op.table})")
        c = t.chains.get(op.chain)
        if op.obj == "chain":
            if op.verb == "add":
                if c is None:
                    c = t.chains[op.chain] = FChain(op.chain, op.body, t.next())
                    events.append(Event(MSG_NEWCHAIN, op.family, op.table, op.chain, handle=c.handle))
                elif op.body:
                    c.header = op.body
                return
            if c is None:
                raise Refused("No such file or directory")
            if op.verb == "flush":
                for r in c.rules:
                    events.append(Event(MSG_DELRULE, op.family, op.table, op.chain, handle=r.handle))
                c.rules = []
            elif op.verb == "delete":
                if c.rules:
                    raise Refused("Device or resource busy")
                del t.chains[op.chain]
                events.append(Event(MSG_DELCHAIN, op.family, op.table, op.chain, handle=c.handle))
            return
        if c is None:
            raise Refused(f"No such file or directory (no chain {op.chain})")
        if op.verb == "delete":
            i = next((i for i, r in enumerate(c.rules) if r.handle == op.handle), None)
            if i is None:
                raise Refused("No such file or directory")
            del c.rules[i]
            events.append(Event(MSG_DELRULE, op.family, op.table, op.chain, handle=op.handle))
            return
        r = FRule(t.next(), op.body, op.rule_key)
        c.rules.insert(0, r) if op.verb == "insert" else c.rules.append(r)
        events.append(Event(MSG_NEWRULE, op.family, op.table, op.chain, handle=r.handle))

    def _check_jumps(self, work: dict[tuple[str, str], FTable], ops: list[Op]) -> None:
        for (fam, table), t in work.items():
            for c in t.chains.values():
                for r in c.rules:
                    for target in _JUMP.findall(r.body):
                        if target not in t.chains:
                            at = next((i for i, op in enumerate(ops, 1) if op.obj == "rule" and op.body == r.body
                                       and op.chain == c.name), None)
                            op = ops[at - 1] if at else None
                            raise ApplyError(
                                f"the kernel refused the transaction, nothing changed: Could not process rule: "
                                f"No such file or directory (jump to chain {target}, which {fam} {table} does not have)"
                                + (f"; offending command {at}: {op.line()}" + (f" (origin: {op.origin})" if op.origin else "")
                                   if op is not None else ""))

    def dry_run(self, text: str) -> tuple[int, str]:
        return 0, ""  # the fake does not parse nft text: every statement is accepted

    # -------------------------------------------------------------- reading

    def genid(self) -> int | None:
        return self.generation

    def table_info(self, family: str, table: str) -> Event | None:
        t = self.tables.get((family, table))
        if t is None:
            return None
        return Event(MSG_NEWTABLE, family, table, handle=t.handle, use=len(t.chains) + t.objects, comment=t.comment)

    def chain_names(self, family: str, table: str) -> list[str]:
        t = self.tables.get((family, table))
        return list(t.chains) if t is not None else []

    def read_table(self, family: str, table: str) -> KTable | None:
        t = self.tables.get((family, table))
        if t is None:
            return None
        kt = KTable(family, t.handle, user_objects=t.objects)
        for c in t.chains.values():
            m = _HEADER.match(c.header)
            prio = m.group(3).strip() if m else ""
            base = (m.group(1), m.group(2), _PRIO[prio] if prio in _PRIO else int(prio)) if m else None
            kt.chains[c.name] = KChain(c.name, base, m.group(4) if m else None, [r.key for r in c.rules],
                                       [r.handle for r in c.rules])
        return kt

    def read_chain(self, family: str, table: str, chain: str) -> list[tuple[str, int | None]]:
        t = self.tables.get((family, table))
        c = t.chains.get(chain) if t is not None else None
        return [(r.key, r.handle) for r in c.rules] if c is not None else []

    def rule_digest(self, family: str, table: str, chain: str, handle: int) -> str | None:
        t = self.tables.get((family, table))
        c = t.chains.get(chain) if t is not None else None
        r = next((r for r in c.rules if r.handle == handle), None) if c is not None else None
        return hashlib.sha256(r.body.encode()).hexdigest() if r is not None else None

    def monitor(self) -> FakeMonitor:
        return FakeMonitor(self)

    def netns_id(self) -> list[int]:
        return [0, self.ident]

    def list_json(self, what: str) -> list[dict[str, Any]]:
        """``nft -j`` of what the fake holds as nft does: tables and chains (``list table``, ``list
        chain``), no sets or maps (``list sets FAMILY``); it refuses (NotImplementedError) to list
        rules, or the user's objects, which it holds as text or a count, not as nft's JSON."""
        words = what.split()
        kind = words[1] if len(words) > 1 else ""
        if kind in ("sets", "maps") and len(words) == 3:
            if any(t.objects for (fam, _), t in self.tables.items() if fam == words[2]):
                raise NotImplementedError(f"FakeBackend.list_json({what!r}): the fake counts the user's objects, it does not hold them")
            return [_META]
        if kind not in ("table", "chain") or len(words) != (4 if kind == "table" else 5):
            raise NotImplementedError(f"FakeBackend.list_json({what!r}): only list table, list chain, list sets/maps")
        fam, table = words[2], words[3]
        t = self.tables.get((fam, table))
        chains = [] if t is None else list(t.chains.values()) if kind == "table" else \
            [t.chains[words[4]]] if words[4] in t.chains else []
        if t is None or not chains and kind == "chain":
            return []
        if any(c.rules for c in chains) or kind == "table" and t.objects:
            raise NotImplementedError(f"FakeBackend.list_json({what!r}): the fake holds rules as nft text, not as nft -j expressions")
        out: list[dict[str, Any]] = [_META]
        if kind == "table":
            out.append({"table": {"family": fam, "name": table, "handle": t.handle, **({"comment": t.comment} if t.comment else {})}})
        for c in chains:
            body: dict[str, Any] = {"family": fam, "table": table, "name": c.name, "handle": c.handle}
            m = _HEADER.match(c.header)
            if m:
                prio = m.group(3).strip()
                body.update(type=m.group(1), hook=m.group(2), prio=_PRIO[prio] if prio in _PRIO else int(prio), policy=m.group(4))
            out.append({"chain": body})
        return out

    def list_text(self, what: str) -> str:
        """``nft list table FAMILY TABLE`` as nft prints it, with the rules as they were sent (the
        kernel prints its own normal form of some statements); "" where there is no such table."""
        words = what.split()
        if len(words) != 4 or words[:2] != ["list", "table"]:
            raise NotImplementedError(f"FakeBackend.list_text({what!r}): only list table")
        t = self.tables.get((words[2], words[3]))
        if t is None:
            return ""
        out = [f"table {words[2]} {words[3]} {{"] + ([f'\tcomment "{t.comment}"'] if t.comment else [])
        for i, c in enumerate(t.chains.values()):
            out += ([""] if i else []) + [f"\tchain {c.name} {{"] + ([f"\t\t{c.header}"] if c.header else [])
            out += [f"\t\t{r.body}" for r in c.rules] + ["\t}"]
        return "\n".join(out + ["}"]) + "\n"

    def json_cmd(self, doc: dict[str, Any]) -> tuple[int, str]:
        """Refused: the fake holds rules as nft text, and cannot take nft's JSON (heal's restore)."""
        return 1, "Error: the FakeBackend does not run libnftables JSON commands"

    def dump(self) -> str:
        """The ruleset as sorted text: tables, their chains by name, each chain's rules in order."""
        out: list[str] = []
        for (fam, table), t in sorted(self.tables.items()):
            out.append(f"table {fam} {table}" + (f' comment "{t.comment}"' if t.comment else ""))
            for name in sorted(t.chains):
                c = t.chains[name]
                out.append(f"  chain {name}" + (f" {{ {c.header} }}" if c.header else ""))
                out.extend(f"    {r.body}" for r in c.rules)
        return "\n".join(out) + ("\n" if out else "")
