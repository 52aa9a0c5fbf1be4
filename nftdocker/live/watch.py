"""Follow a live Docker Engine and keep nftdocker's table in step with it.

``Watcher.run()``: one full sync (read the daemon with ``live.scenario_from_live``, generate,
a full replace in one transaction), then the Engine's event stream (``live.events``: container
start/stop/die/destroy, network create/destroy/connect/disconnect). Events arriving within
``debounce`` seconds of each other (10 ms) are one change: the daemon is read again (a handful of
API calls), the rules generated, and if they differ from what is loaded, the change is applied and
logged as one line::

    2026-11-25T12:00:00Z container start c1: +7 -0 rules (12 ms)

(+/- count the rules added and removed, by comparing the old and new rulesets; the time runs
from the first event's arrival until the kernel took the change.) A batch that changes no rule
(the network connect that precedes a container's start, say) applies and logs nothing.

When the event stream ends or the daemon stops answering, the watcher logs one line and
reconnects with exponential backoff (0.2 s doubling to 5 s); after reconnecting it syncs fully
again, since anything may have changed meanwhile. The table is never removed: ``stop()`` (the CLI calls it on SIGTERM/SIGINT) ends
``run()`` within ~0.1 s and leaves the table as it is, so traffic keeps flowing across a restart
of the watcher.

Failing to reach the daemon or the kernel at the first sync raises (the CLI exits 3): a service
manager restarts the watcher. After that, a change that cannot be generated or applied (e.g. a
state that Docker 28.0.1 would refuse) is logged and the table left as it was; the next event or
reconnect tries again.

Applying a change: ``Watcher(applier=...)``; the default, ``make_applier``, is
``nftdocker.apply.applier.IncrementalApplier`` (only the difference, in one transaction). Full syncs (start, reconnect)
always replace the whole table (``nftdocker.apply.engine.apply``), so that a re-sync is exact whatever happened.

An Engine that is not 28.x (whose firewall nftdocker does not write) gets one warning line on
standard error (``warn``), and with ``json_logs`` a ``"kind": "warning"`` log line, when first read
and again only if a reconnect finds another version.

Self-healing (``heal=True``, the default): after the first sync a :class:`heal.KernelWatch` follows
the kernel's nftables notifications of the namespace. A commit by another process that deletes the
table (``nft flush ruleset``, ``nft delete table``) or adds or deletes anything in one of the
chains nftdocker generates is undone at once: a deleted table is loaded again whole
(a full replace, with the ``--user-rules`` file's rules, as every sync and change has them), then
the ``filter-DOCKER-USER`` rules and user chains it held as they last were, right after in a
second transaction (libnftables JSON); anything else goes through the
applier (only the difference). One line says what happened and what was restored::

    2026-11-25T12:00:00Z ruleset flushed by nft[4242]: restored with 1 DOCKER-USER rule, 1 user chain: +36 -0 rules (31 ms)

(the time runs from the notification until the kernel took the restore). Changes to
``filter-DOCKER-USER`` and to chains nftdocker does not generate are the user's: they are kept,
and remembered for the next restore.

``sysctls=True`` (``watch --sysctls``) also sets, after each sync and change, what Docker sets
beside its rules (``host.sysctl.apply_sysctls``: ip_forward, route_localnet on new bridges, hairpin on
new bridge ports); only failures are logged.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from nftdocker.errors import DockerError, NftdockerError
from nftdocker.nft.table import USER_CHAIN
from nftdocker.nft.render import DEFAULT_TABLE

#: Seconds of quiet after an event before the batch is applied; a batch is never held longer than MAX_BATCH.
DEBOUNCE = 0.01
MAX_BATCH = 0.25
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
#: How often run() looks at the stop flag while waiting.
POLL = 0.1


class Applier(Protocol):
    """Loads a change into the kernel: ``apply(new, old)`` with the Generated now wanted and the
    one loaded before (None when unknown)."""

    def apply(self, new: Any, old: Any | None) -> Any: ...


def make_applier(netns: str | None, table: str, user_rules: Any = None) -> Applier:
    """The applier the watcher uses for event-driven changes (full syncs always replace the table).

    :class:`nftdocker.apply.applier.IncrementalApplier`: keeps the kernel's rule handles in memory and
    sends only the difference, in one transaction; it notices foreign commits (a full sync, a
    user's ``nft`` command) through the kernel's notifications and reads the table again.
    """
    from nftdocker.apply.applier import IncrementalApplier

    return IncrementalApplier(netns, table, user_rules)


@dataclass
class Change:
    """What one sync or event batch did."""

    what: str
    added: int
    removed: int
    ms: float
    applied: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    #: how the applier sent it (IncrementalApplier: diff, full, noop, ...) and in how many commands
    apply_mode: str = ""
    commands: int = 0


@dataclass
class _Item:
    conn: int
    kind: str  # "event" | "lost" | "kernel"
    event: dict[str, Any] | None = None
    error: DockerError | None = None
    at: float = 0.0
    tamper: Any = None  # heal.Tamper, for "kernel"


class Watcher:
    """See the module docstring. ``log`` takes one line (text, or JSON with ``json_logs``)."""

    def __init__(
        self,
        docker_host: str | None = None,
        netns: str | None = None,
        table: str = DEFAULT_TABLE,
        daemon_config: str | None = None,
        ipv4_forwarding: str | bool | None = None,
        ipv6_forwarding: str | bool | None = None,
        *,
        log: Callable[[str], None] | None = None,
        json_logs: bool = False,
        applier: Applier | None = None,
        debounce: float = DEBOUNCE,
        max_batch: float = MAX_BATCH,
        backoff: tuple[float, float] = (BACKOFF_MIN, BACKOFF_MAX),
        sysctls: bool = False,
        warn: Callable[[str], None] | None = None,
        heal: bool = True,
        accept_mark: tuple[int, int] | None = None,
        user_rules: Any = None,
    ) -> None:
        from nftdocker.nft.table import check_table_name

        #: (VALUE, MASK) set on the accepted container traffic (:mod:`accept_mark`), or None
        self.accept_mark = accept_mark
        self.docker_host = docker_host
        self.netns = netns
        self.table = check_table_name(table)
        self.daemon_config = daemon_config
        self.ipv4_forwarding = ipv4_forwarding
        self.ipv6_forwarding = ipv6_forwarding
        self._log = log or (lambda line: print(line, flush=True))
        self.json_logs = json_logs
        self.user_rules = user_rules  # user_rules.UserRules (--user-rules): in every apply and sync
        self.applier = applier if applier is not None else make_applier(netns, table, user_rules)
        self.debounce = debounce
        self.max_batch = max_batch
        self.backoff_min, self.backoff_max = backoff
        self.sysctls = sysctls
        self._warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self._warned: list[str] = []  # the Engine warnings given for the daemon as last read
        self.heal = heal
        self._kernel_watch: Any = None  # heal.KernelWatch while run() runs
        self._kept: dict[str, Any] = {}  # family -> heal.UserState, as last read
        self.heals = 0
        self._replay: Any = None  # replay.EventReplay while events are replayed on the applier's model
        self.current: Any = None  # the Generated loaded now
        self._signature: Any = None  # _signature(self.current), once known
        self.changes: list[Change] = []
        self.syncs = 0
        self.reconnects = 0
        self._stopping = False  # a plain flag: stop() must be safe in a signal handler (no locks)
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._conn = 0
        self._since = 0.0

    # ------------------------------------------------------------------ public

    def stop(self) -> None:
        """Make run() return soon (safe from a signal handler or another thread)."""
        self._stopping = True

    def _wait(self, seconds: float) -> bool:
        """Wait up to seconds, waking every POLL to look at the stop flag (and restoring the table
        when the kernel says someone changed it); True if stopped."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            item = self._next(min(POLL, left))
            if item is not None and item.kind == "kernel":
                self._on_tamper(item.tamper)
        return True

    def run(self) -> None:
        """Sync, then follow events until stop(). The first sync's errors propagate."""
        self.sync("start")
        if self.heal:
            from nftdocker.live.heal import KernelWatch

            self._kernel_watch = KernelWatch(self.netns, self.table, lambda t: self._queue.put(
                _Item(-1, "kernel", tamper=t, at=t.at)))
        backoff = self.backoff_min
        while not self._stopping:
            self._subscribe()
            lost = self._follow()
            if lost is None:
                break
            self.emit("lost", f"lost the Docker daemon: {lost.message}; reconnecting "
                      f"(backoff {self.backoff_min:g}..{self.backoff_max:g} s)", error=lost.message)
            t_lost = time.monotonic()
            attempts = 0
            while not self._wait(backoff):
                attempts += 1
                try:
                    self.reconnects += 1
                    self.sync(f"reconnected after {time.monotonic() - t_lost:.1f} s, {attempts} attempt(s)")
                    backoff = self.backoff_min
                    break
                except DockerError:
                    backoff = min(backoff * 2, self.backoff_max)
                except NftdockerError as e:
                    self.emit("error", f"error: {e.message}; the table is left as it was", error=e.message)
                    backoff = min(backoff * 2, self.backoff_max)
        self._conn += 1  # whatever the reader thread still delivers is stale
        if self._kernel_watch is not None:
            self._kernel_watch.close()
            self._kernel_watch = None
        close = getattr(self.applier, "close", None)
        if callable(close):
            close()
        self.emit("stop", "stopped; the table is left in place")

    def sync(self, reason: str) -> Change:
        """Read the daemon and load the whole table (always a full replacement); keep the model
        that later events are replayed on (:mod:`replay`)."""
        from nftdocker.apply.engine import apply

        t0 = time.monotonic()
        self._since = time.time()
        dump: dict[str, Any] = {}
        sc = self._scenario(dump)
        old = self.current.rulesets if self.current is not None else self._loaded_rulesets()
        self._replay = None
        if self._replays():
            from nftdocker.live.engine import inspect_one
            from nftdocker.live.replay import EventReplay

            self.applier.load(sc, replace=True)  # type: ignore[attr-defined]
            gen = self.applier.gen  # type: ignore[attr-defined]
            self._replay = EventReplay(sc, dump, lambda kind, ident: inspect_one(self.docker_host, kind, ident))
        else:
            gen = self._marked(sc)
            apply(gen, self.netns, self.table, replace=True, store=False, user_rules=self.user_rules)
        ms = (time.monotonic() - t0) * 1000
        added, removed = _rule_diff(old, gen.rulesets)
        self.current, self._signature = gen, None
        self._remember()
        self._set_sysctls(gen)
        self.syncs += 1
        sc = gen.scenario
        ch = Change(f"sync ({reason})", added, removed, ms, True)
        self.changes.append(ch)
        self.emit("sync", f"sync ({reason}): {len(sc.networks)} networks, {len(sc.containers)} containers: "
                          f"+{added} -{removed} rules ({ms:.0f} ms)",
                  reason=reason, networks=len(sc.networks), containers=len(sc.containers),
                  added=added, removed=removed, ms=round(ms, 1))
        return ch

    def emit(self, kind: str, text: str, **fields: Any) -> None:
        now = datetime.now(timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.json_logs:
            self._log(json.dumps({"time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                                  "kind": kind, "message": text, **fields}))
        else:
            self._log(f"{stamp} {text}")

    # ------------------------------------------------------------------ internals

    def _replays(self) -> bool:
        """Are events replayed on a kept model? (With the default applier and no accept mark: the
        replay knows Docker's rules, not marked copies of them.)"""
        from nftdocker.apply.applier import IncrementalApplier

        return isinstance(self.applier, IncrementalApplier) and self.accept_mark is None

    def _generate(self) -> Any:
        return self._marked(self._scenario())

    def _marked(self, sc: Any) -> Any:
        from nftdocker.host.accept_mark import apply as accept_marks
        from nftdocker.docker.generate import generate

        return accept_marks(generate(sc), self.accept_mark)

    def _scenario(self, dump: dict[str, Any] | None = None) -> Any:
        """The daemon as a Scenario (every network and container read: O(host))."""
        from nftdocker.live.engine import scenario_from_live

        warnings: list[str] = []
        sc = scenario_from_live(self.docker_host, self.daemon_config, self.ipv4_forwarding, self.ipv6_forwarding,
                                warnings=warnings, dump_out=dump)
        if warnings != self._warned:  # once per daemon, not per event; again if a restart changed it
            for line in warnings:
                self._warn(f"nftdocker: warning: {line}")
                if self.json_logs:
                    self.emit("warning", f"warning: {line}", warning=line)
            self._warned = warnings
        return sc

    def _set_sysctls(self, gen: Any) -> None:
        if not self.sysctls:
            return
        from nftdocker.host.sysctl import apply_sysctls

        for attempt in (1, 2):
            try:
                lines = apply_sysctls(gen, self.netns)
                break
            except Exception as e:  # noqa: BLE001 - e.g. a bridge port that vanished mid-way (pyroute2 NetlinkError)
                if attempt == 2:
                    msg = f"{type(e).__name__}: {e}"
                    self.emit("error", f"sysctls: {msg}; the rules are applied, the sysctls may be incomplete",
                              error=msg)
                    return
        for line in lines:
            if ": failed: " in line or "pyroute2 is not installed" in line:
                self.emit("error", f"sysctl {line}", error=line)

    def _loaded_rulesets(self) -> dict[str, Any]:
        """The rules in the kernel now (for the first sync's +/- counts); empty if unreadable."""
        try:
            from nftdocker.compat.translate import rulesets_from_json
            from nftdocker.nft.listing import list_objects

            return rulesets_from_json(list_objects(self.netns, self.table), self.table)
        except Exception:  # noqa: BLE001 - only the log line's counts depend on it
            return {}

    def _subscribe(self) -> None:
        """Start a reader thread for a new connection; events since the last sync began are replayed."""
        self._conn += 1
        conn = self._conn
        since = f"{self._since:.6f}"
        t = threading.Thread(target=self._reader, args=(conn, since), name=f"nftdocker-events-{conn}", daemon=True)
        t.start()

    def _reader(self, conn: int, since: str) -> None:
        from nftdocker.live.engine import events

        q = self._queue
        try:
            for ev in events(self.docker_host, since=since):
                q.put(_Item(conn, "event", event=ev, at=time.monotonic()))
                if self._stopping or conn != self._conn:
                    return
        except DockerError as e:
            q.put(_Item(conn, "lost", error=e, at=time.monotonic()))
        except Exception as e:  # noqa: BLE001 - any failure of the stream is a lost daemon
            q.put(_Item(conn, "lost", error=DockerError(f"the event stream failed: {type(e).__name__}: {e}"),
                        at=time.monotonic()))

    def _next(self, timeout: float) -> _Item | None:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return item if item.conn == self._conn or item.kind == "kernel" else None

    def _follow(self) -> DockerError | None:
        """Apply event batches until the stream is lost (returns the error) or stop() (returns None)."""
        while not self._stopping:
            item = self._next(POLL)
            if item is None:
                continue
            if item.kind == "lost":
                return item.error
            if item.kind == "kernel":
                self._on_tamper(item.tamper)
                continue
            batch = [item.event]
            tampers = []
            first = item.at
            lost: DockerError | None = None
            quiet_until = time.monotonic() + self.debounce
            while True:
                wait = min(quiet_until, first + self.max_batch) - time.monotonic()
                if wait <= 0:
                    break
                nxt = self._next(wait)
                if nxt is None:
                    if time.monotonic() >= quiet_until:
                        break
                    continue
                if nxt.kind == "lost":
                    lost = nxt.error
                    break
                if nxt.kind == "kernel":
                    tampers.append(nxt.tamper)  # restored after the batch
                    continue
                batch.append(nxt.event)
                quiet_until = time.monotonic() + self.debounce
            try:
                self._apply_batch([e for e in batch if e is not None], first)
            except DockerError as e:
                lost = e
            except NftdockerError as e:
                self.emit("error", f"{_describe(batch)}: error: {e.message}; the table is left as it was",
                          error=e.message)
            for t in tampers:
                self._on_tamper(t)
            if lost is not None:
                return lost
        return None

    def _apply_batch(self, batch: list[dict[str, Any]], first: float) -> Change:
        if self._replay is not None and getattr(self.applier, "fw", None) is not None:
            return self._replay_batch(batch, first)
        gen = self._generate()
        old = self.current
        sig = _signature(gen)
        changed = old is None or (self._signature if self._signature is not None else _signature(old)) != sig
        stats = self.applier.apply(gen, old) if changed else None
        ms = (time.monotonic() - first) * 1000
        self.current, self._signature = gen, sig
        if changed:
            self._set_sysctls(gen)
        added, removed = _rule_diff(old.rulesets if old is not None else {}, gen.rulesets)
        what = _describe(batch)
        ch = Change(what, added, removed, ms, changed, list(batch),
                    getattr(stats, "mode", ""), getattr(stats, "commands", 0))
        self.changes.append(ch)
        if not changed:
            return ch  # e.g. the network connect that precedes a container's start: nothing to log
        self.emit("change", f"{what}: +{added} -{removed} rules ({ms:.0f} ms)",
                  events=[{k: e.get(k) for k in ("type", "action", "id")} | {"name": e.get("attributes", {}).get("name")}
                          for e in batch],
                  added=added, removed=removed, ms=round(ms, 1),
                  **({"apply_mode": stats.mode, "commands": stats.commands} if hasattr(stats, "mode") else {}))
        return ch

    def _replay_batch(self, batch: list[dict[str, Any]], first: float) -> Change:
        """The events as Docker's operations on the kept model, sent in one transaction: one or
        two API calls an event, the rules of the objects they name; a log line per event."""
        from nftdocker.errors import GenerationError
        from nftdocker.live.replay import Unreplayable

        steps: list[tuple[str, int, int, dict[str, Any]]] = []

        def operation(fw: Any) -> None:
            logs = (fw.ipt[4].log, fw.ipt[6].log)
            for ev in batch:
                before = [len(l) for l in logs]
                what = self._replay.step(fw, ev)  # type: ignore[union-attr]
                ops = [op for l, n in zip(logs, before) for op, *_ in l[n:]]
                if what is not None or ops:
                    steps.append((what or _describe([ev]), sum(o in ("add", "insert") for o in ops), ops.count("delete"), ev))

        try:
            stats = self.applier.replay(operation)  # type: ignore[attr-defined]
        except (Unreplayable, GenerationError) as e:
            reason = e.message if isinstance(e, GenerationError) else str(e)
            return self.sync(f"re-sync, the kept model cannot follow {_describe(batch)}: {reason}")
        gen = self.applier.gen  # type: ignore[attr-defined]
        ms = (time.monotonic() - first) * 1000
        self.current, self._signature = gen, None
        added, removed = sum(s[1] for s in steps), sum(s[2] for s in steps)
        if steps:
            self._set_sysctls(gen)
        ch = Change(_describe(batch), added, removed, ms, bool(steps), list(batch), stats.mode, stats.commands)
        self.changes.append(ch)
        for what, a, r, ev in steps:
            self.emit("change", f"{what}: +{a} -{r} rules ({ms:.0f} ms)",
                      events=[{k: ev.get(k) for k in ("type", "action", "id")} | {"name": (ev.get("attributes") or {}).get("name")}],
                      added=a, removed=r, ms=round(ms, 1), apply_mode=stats.mode, commands=stats.commands)
        return ch

    # ------------------------------------------------------------------ self-healing

    def _remember(self) -> None:
        """Read the user's part of the table (DOCKER-USER rules, user chains) for the next restore."""
        if not self.heal or self.current is None:
            return
        from nftdocker.live.heal import read_user_state

        try:
            self._kept = read_user_state(self.netns, self.table, self.current) or self._kept
        except NftdockerError as e:
            self.emit("error", f"cannot read the user's rules: {e.message}", error=e.message)

    def _on_tamper(self, tamper: Any) -> None:
        """Another process changed the table: restore it, or (the user's own part) remember it."""
        from nftdocker.live.heal import restore, touches_ours

        if self.current is None:
            return
        try:
            if not touches_ours(tamper, self.current):
                self._remember()
                return
            done = restore(self.current, self.netns, self.table, self.applier, self._kept, self.user_rules)
        except NftdockerError as e:
            self.emit("error", f"{tamper.describe(self.table)}: cannot restore the table: {e.message}",
                      error=e.message)
            return
        if done is None:  # nothing of ours differed after all
            self._remember()
            return
        ms = (time.monotonic() - tamper.at) * 1000
        self.heals += 1
        self._remember()
        what = tamper.describe(self.table)
        self.changes.append(Change(f"restore ({what})", done.added, done.removed, ms, True, apply_mode=done.mode))
        self.emit("heal", f"{what}: restored{done.kept_text()}: +{done.added} -{done.removed} rules ({ms:.0f} ms)",
                  what=what, families=done.families, added=done.added, removed=done.removed, ms=round(ms, 1),
                  apply_mode=done.mode)


# ---------------------------------------------------------------------- helpers


def _signature(gen: Any) -> Any:
    from nftdocker.nft.render import render_json_objects

    return render_json_objects(gen.rulesets)


def _rule_counter(rulesets: dict[str, Any]) -> Counter:
    c: Counter = Counter()
    for fam, rs in rulesets.items():
        for (t, n), ch in rs.chains.items():
            if ch.nft_name == USER_CHAIN:
                continue  # its user rules are kept on every change
            for r in ch.rules:
                c[(fam, t, n, r)] += 1
    return c


def _rule_diff(old: dict[str, Any], new: dict[str, Any]) -> tuple[int, int]:
    """(rules added, rules removed) from old to new, as multisets per chain (DOCKER-USER left out)."""
    a, b = _rule_counter(old), _rule_counter(new)
    return sum((b - a).values()), sum((a - b).values())


def _describe(batch: list[dict[str, Any] | None]) -> str:
    """``container start c1`` / ``network create n1, container start c1``; a network connect or
    disconnect of a container that has its own event in the batch is left out."""
    evs = [e for e in batch if e]
    ctr_ids = {e.get("id") for e in evs if e.get("type") == "container"}
    parts: list[str] = []
    for e in evs:
        attrs = e.get("attributes") or {}
        if e.get("type") == "network" and e.get("action") in ("connect", "disconnect") and attrs.get("container") in ctr_ids:
            continue
        name = attrs.get("name") or str(e.get("id", ""))[:12]
        text = f"{e.get('type')} {e.get('action')} {name}"
        if text not in parts:
            parts.append(text)
    return ", ".join(parts) or "events"


__all__ = ["Watcher", "Change", "Applier", "make_applier"]
