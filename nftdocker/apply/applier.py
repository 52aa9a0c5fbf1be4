"""The long-running applier (``watch``, the benchmark's in-process add-one): the model and the
kernel's rule handles kept in memory, each change sending only its difference.

``load(scenario)`` once (it reads the table, or the stored view, once); then ``replay(operation)``
per change: the operation (Docker's run, stop, connect, ...) runs on the kept
:class:`~nftdocker.docker.record.RecordingFirewall`, and its recorded calls go to the kernel as
they are (:func:`replay.send_calls`, the path ``apply``'s resume takes): no generation of the host,
no listing, no diff; the new rules' handles come from the kernel's notifications. A change the
calls cannot carry (a new chain, a policy) is diffed against the kept view instead. ``apply(new,
old)`` (the :class:`nftdocker.live.watch.Applier` interface) loads a host the caller generated. Changes made to
the table by anyone else are noticed (the notifications of their commits) and the table is read
again before the next change.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from nftdocker.apply.engine import Result, locked, user_families
from nftdocker.apply.replay import send_calls
from nftdocker.docker.generate import Generated
from nftdocker.docker.record import RecordingFirewall
from nftdocker.errors import NftdockerError
from nftdocker.host import user_rules as urules
from nftdocker.model import Scenario
from nftdocker.nft.backend import Backend, Libnftables, Monitor
from nftdocker.nft.commit import commit, kernel_views
from nftdocker.nft.diff import plan
from nftdocker.nft.netlink import MSG_NEWGEN
from nftdocker.nft.render import DEFAULT_TABLE
from nftdocker.nft.table import check_table_name
from nftdocker.nft.transaction import Edit
from nftdocker.nft.view import KTable

#: the applier's words for the engine's modes (watch logs them)
MODES = {"incremental": "diff"}


class IncrementalApplier:
    """See the module docstring. ``backend``: run on it instead of the namespace's libnftables."""

    def __init__(self, netns: str | None = None, table: str = DEFAULT_TABLE,
                 user_rules: urules.UserRules | None = None, backend: Backend | None = None) -> None:
        self.netns = netns
        self.table = check_table_name(table)
        self.user_rules = user_rules  # --user-rules: the file's rules lead filter-DOCKER-USER
        self._checked: list[str] | None = None  # the families the file's rules were checked for
        self.gen: Generated | None = None
        self.fw: RecordingFirewall | None = None
        self.views: dict[str, KTable | None] | None = None
        self.last: Result | None = None
        self._fixed = backend
        self._be: Backend | None = None
        self._mon: Monitor | None = None

    @property
    def scenario(self) -> Scenario | None:
        return self.gen.scenario if self.gen is not None else None

    def close(self) -> None:
        if self._mon is not None:
            self._mon.close()
            self._mon = None
        self._be = None

    def __enter__(self) -> IncrementalApplier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def load(self, scenario: Scenario, replace: bool = False) -> Result:
        """Take ``scenario`` as the model and bring the kernel's table to it."""
        fw = RecordingFirewall(scenario)
        gen = fw.run()
        st = self._send(gen, full_replace=replace)
        self.fw = fw
        return st

    def apply(self, new: Generated, old: Generated | None = None) -> Result:
        """:class:`nftdocker.live.watch.Applier`: load ``new`` (a Generated); ``old`` is what the caller loaded before."""
        if new is not self.gen:
            self.fw = None  # the caller generated this one: no model to replay on
        return self._send(new)

    def replay(self, operation: Callable[[RecordingFirewall], Any]) -> Result:
        """Run ``operation(firewall)`` (Docker's operations: run, stop, connect, ...) on the kept
        model, and send the kernel exactly the rules it added and deleted, in one transaction."""
        t0 = time.perf_counter()
        if self.gen is None or self.fw is None:
            raise NftdockerError("IncrementalApplier: load() a scenario first")
        fw = self.fw
        try:
            with fw.recording() as logs:
                operation(fw)
        except Exception:
            self.fw = None  # half-replayed: the next change starts from scratch
            self.gen = None
            raise
        gen = self.gen = fw.generated()
        try:
            with locked(self.netns, self._fixed):
                be, mon = self._enter()
                resynced = self._resync(be, mon, use_state=False)
                assert self.views is not None
                sent = send_calls(be, mon, self.views, logs, self.table) if not resynced else None
                if sent is None:  # a new chain or policy, or the table was read again: diff the whole host
                    tx, _ = plan(be, self.views, gen.rulesets, self.table, self.user_rules)
                    self._commit(be, mon, tx)
                    mode = MODES.get(tx.mode, tx.mode)
                else:
                    tx, self.views, _ = sent
                    mode = "fast" if tx else "noop"
        except Exception:
            self.fw = None
            self.gen = None
            self.views = None
            raise
        return self._result(gen, tx, mode, t0, resynced)

    # -------------------------------------------------------------- internals

    def _enter(self) -> tuple[Backend, Monitor]:
        """Inside the namespace: the backend and the monitor, made once per applier (and again after :meth:`close`)."""
        if self._be is None or self._mon is None:
            self._be = self._fixed if self._fixed is not None else Libnftables()
            self._mon = self._be.monitor()
            self.views = None
        return self._be, self._mon

    def _resync(self, be: Backend, mon: Monitor, use_state: bool = True) -> bool:
        """Read the table again if anyone else changed it since our last commit (or it is not known)."""
        mon.drain()
        stale = mon.lost or any(e.table == self.table and e.msg != MSG_NEWGEN for e in mon.foreign)
        mon.foreign.clear()
        mon.lost = False
        if stale or self.views is None:
            self.views, _ = kernel_views(be, self.table, use_state=use_state)
            return True
        return False

    def _send(self, gen: Generated, full_replace: bool = False) -> Result:
        t0 = time.perf_counter()
        with locked(self.netns, self._fixed):
            be, mon = self._enter()
            fams = user_families(gen)
            if self.user_rules is not None and self._checked != fams:
                urules.check(be, self.table, self.user_rules, fams)
                self._checked = fams
            resynced = self._resync(be, mon)
            tx, _ = plan(be, self.views, gen.rulesets, self.table, self.user_rules, full_replace)
            self._commit(be, mon, tx)
        self.gen = gen
        return self._result(gen, tx, MODES.get(tx.mode, tx.mode), t0, resynced)

    def _result(self, gen: Generated, tx: Edit, mode: str, t0: float, resynced: bool) -> Result:
        self.last = Result(gen.families(), list(tx.dropped), tx.commands(), mode, added_rules=tx.added,
                           removed_rules=tx.removed, seconds=time.perf_counter() - t0, resynced=resynced,
                           kernel_seconds=tx.kernel_seconds)
        return self.last

    def _commit(self, be: Backend, mon: Monitor, tx: Edit) -> None:
        if tx.mode == "full":
            # A full replace would flood the monitor with a notification per rule: close it for the
            # commit, and reopen it after; the generation tells whether anything came in between.
            mon.close()
            self._mon = None
            try:
                after, genid = commit(be, tx, self.table, store=False)
            except Exception:
                self.views = None
                raise
            finally:
                self._mon = be.monitor()
            self.views = after if genid is not None and be.genid() == genid else None
            return
        try:
            after, _genid = commit(be, tx, self.table, monitor=mon, store=False)
        except Exception:
            self.views = None
            raise
        self.views = after  # None: read the table again before the next change
