"""Follow a live Docker Engine and keep nftdocker's table in step with it.

``Watcher.run()``: one full sync (the daemon read with ``engine.scenario_from_live``, generated,
the table replaced in one transaction), then the Engine's event stream, gathered into batches by
:mod:`batch` (events within ``debounce``, 10 ms, of each other). Each batch is replayed as Docker's
own operations on the kept model (:mod:`replay`: one or two API calls an event) and its rule
changes sent in one transaction; with an accept mark, the daemon is read and generated again and
the difference (compared as rule IR) applied. One log line per event::

    2026-11-25T12:00:00Z container start c1: +7 -0 rules (12 ms)

(from the batch's first event until the kernel took the change). A full sync happens at start,
after a reconnect (backoff 0.2 s doubling to 5 s) and when the kept model cannot follow an event;
a burst whose starts came out of ``StartedAt`` order (which a full sync follows) is reordered once
quiet (:meth:`replay.EventReplay.in_start_order`). ``stop()`` ends ``run()`` within ~0.1 s and
leaves the table in place.

Failing to reach the daemon or the kernel at the first sync raises (the CLI exits 3). After that, a
change that cannot be generated or applied is logged and the table left as it was. An Engine that
is not 28.x gets one warning (standard error; ``"kind": "warning"`` with ``json_logs``).

Self-healing (``heal=True``): a :class:`heal.KernelWatch` follows the kernel's notifications, and
a commit by another process that deletes the table or changes nftdocker's chains is undone at once
(:mod:`heal`), in one log line. ``sysctls=True`` also sets what Docker sets beside its rules
(ip_forward, route_localnet, hairpin) after each sync and change; only failures are logged.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

from nftdocker.errors import DockerError, NftdockerError
from nftdocker.live.batch import (DEBOUNCE, MAX_BATCH, POLL, REORDER_QUIET, Change, EventFeed, describe, event_fields, loaded_rulesets,
                                  log_line, rule_diff)
from nftdocker.nft.render import DEFAULT_TABLE

BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0


class Applier(Protocol):
    """Loads ``new`` (a Generated) into the kernel; ``old`` is the one loaded before (None: unknown)."""

    def apply(self, new: Any, old: Any | None) -> Any: ...


def make_applier(netns: str | None, table: str, user_rules: Any = None) -> Applier:
    """:class:`nftdocker.apply.applier.IncrementalApplier`, the watcher's: the kernel's rule handles
    kept, only the difference sent; a foreign commit noticed makes it read the table again."""
    from nftdocker.apply.applier import IncrementalApplier

    return IncrementalApplier(netns, table, user_rules)


class Watcher:
    """See the module docstring. ``log`` takes one line (text, or JSON with ``json_logs``), ``warn`` one
    warning line; both default to dropping it (the CLI passes the printing ones)."""

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

        #: (VALUE, MASK) set on the accepted container traffic (:mod:`nftdocker.host.accept_mark`), or None
        self.accept_mark = accept_mark
        self.docker_host = docker_host
        self.netns = netns
        self.table = check_table_name(table)
        self.daemon_config = daemon_config
        self.ipv4_forwarding = ipv4_forwarding
        self.ipv6_forwarding = ipv6_forwarding
        self._log = log or (lambda line: None)
        self.json_logs = json_logs
        self.user_rules = user_rules  # host.user_rules.UserRules (--user-rules): in every apply and sync
        self.applier = applier if applier is not None else make_applier(netns, table, user_rules)
        self.debounce = debounce
        self.max_batch = max_batch
        self.backoff_min, self.backoff_max = backoff
        self.sysctls = sysctls
        self._warn = warn or (lambda line: None)
        self._warned: list[str] = []  # the Engine warnings given for the daemon as last read
        self.heal = heal
        self._kernel_watch: Any = None  # heal.KernelWatch while run() runs
        self._kept: dict[str, Any] = {}  # family -> heal.UserState, as last read
        self.heals = 0
        self._replay: Any = None  # replay.EventReplay while events are replayed on the applier's model
        self.current: Any = None  # the Generated loaded now
        self.changes: list[Change] = []
        self.syncs = 0
        self.reconnects = 0
        self._stopping = False  # a plain flag: stop() must be safe in a signal handler (no locks)
        self._feed = EventFeed(docker_host, lambda: self._stopping)
        self._since = 0.0

    # ------------------------------------------------------------------ public

    def stop(self) -> None:
        """Make run() return soon (safe from a signal handler or another thread)."""
        self._stopping = True

    def run(self) -> None:
        """Sync, then follow events until stop(). The first sync's errors propagate."""
        self.sync("start")
        if self.heal:
            from nftdocker.live.heal import KernelWatch

            self._kernel_watch = KernelWatch(self.netns, self.table, self._feed.tamper)
        backoff = self.backoff_min
        while not self._stopping:
            self._feed.subscribe(self._since)
            lost = self._follow()
            if lost is None:
                break
            self.emit("lost", f"lost the Docker daemon: {lost.message}; reconnecting "
                      f"(backoff {self.backoff_min:g}..{self.backoff_max:g} s)", error=lost.message)
            t_lost = time.monotonic()
            attempts = 0
            while not self._feed.wait(backoff, self._on_tamper):
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
        self._feed.close()
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
        old = self.current.rulesets if self.current is not None else loaded_rulesets(self.netns, self.table)
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
        added, removed = rule_diff(old, gen.rulesets)
        self.current = gen
        self._remember()
        self._set_sysctls(gen)
        self.syncs += 1
        sc, ch = gen.scenario, Change(f"sync ({reason})", added, removed, ms, True)
        self.changes.append(ch)
        self.emit("sync", f"sync ({reason}): {len(sc.networks)} networks, {len(sc.containers)} containers: "
                          f"+{added} -{removed} rules ({ms:.0f} ms)",
                  reason=reason, networks=len(sc.networks), containers=len(sc.containers),
                  added=added, removed=removed, ms=round(ms, 1))
        return ch

    def emit(self, kind: str, text: str, **fields: Any) -> None:
        self._log(log_line(kind, text, self.json_logs, **fields))

    # ------------------------------------------------------------------ internals

    def _replays(self) -> bool:
        """Are events replayed on a kept model? (Not with an accept mark: the replay knows Docker's rules.)"""
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
        from nftdocker.host.sysctl import Beside, apply_sysctls

        for attempt in (1, 2):
            try:
                lines = apply_sysctls(Beside.of_generated(gen), self.netns)
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

    def _follow(self) -> DockerError | None:
        """Apply event batches until the stream is lost (returns the error) or stop() (returns None)."""
        resync_at: float | None = None  # starts were replayed out of StartedAt order: sync when quiet
        while not self._stopping:
            item = self._feed.next(POLL)
            if item is None:
                if resync_at is not None and time.monotonic() >= resync_at and self._replay is not None:
                    resync_at = None
                    lost = self._quiet_resync(str(self._replay.out_of_order))
                    if lost is not None:
                        return lost
                continue
            if item.kind == "lost":
                return item.error
            if item.kind == "kernel":
                self._on_tamper(item.tamper)
                continue
            batch, tampers, lost = self._feed.gather(item, self.debounce, self.max_batch)
            try:
                self._apply_batch([e for e in batch if e is not None], item.at)
            except DockerError as e:
                lost = e
            except NftdockerError as e:
                self.emit("error", f"{describe(batch)}: error: {e.message}; the table is left as it was",
                          error=e.message)
            for t in tampers:
                self._on_tamper(t)
            if lost is not None:
                return lost
            if self._replay is not None and self._replay.out_of_order:
                resync_at = time.monotonic() + REORDER_QUIET
        return None

    def _quiet_resync(self, reason: str) -> DockerError | None:
        """After a burst whose starts came out of order: the kept model loaded in StartedAt order (no
        API call), or a full sync if that fails; the lost stream's error, if it is lost."""
        t0, old = time.monotonic(), self.current.rulesets
        try:  # DockerError: only from the fallback sync
            try:
                self.applier.load(self._replay.in_start_order(self.applier.fw))  # type: ignore[attr-defined]
            except NftdockerError as e:
                self.sync(f"re-sync, {reason}; the kept model could not be reordered: {e.message}")
                return None
            self.current = self.applier.gen  # type: ignore[attr-defined]
            (added, removed), ms = rule_diff(old, self.current.rulesets), (time.monotonic() - t0) * 1000
            self.emit("sync", f"reorder ({reason}): +{added} -{removed} rules ({ms:.0f} ms)", reason=reason,
                      added=added, removed=removed, ms=round(ms, 1))
        except DockerError as e:
            return e
        except NftdockerError as e:
            self.emit("error", f"{reason}: error: {e.message}; the table is left as it was", error=e.message)
        return None

    def _apply_batch(self, batch: list[dict[str, Any]], first: float) -> Change:
        if self._replay is not None and getattr(self.applier, "fw", None) is not None:
            return self._replay_batch(batch, first)
        gen = self._generate()
        old = self.current
        changed = old is None or old.rulesets != gen.rulesets
        stats = self.applier.apply(gen, old) if changed else None
        ms = (time.monotonic() - first) * 1000
        self.current = gen
        if changed:
            self._set_sysctls(gen)
        added, removed = rule_diff(old.rulesets if old is not None else {}, gen.rulesets)
        what = describe(batch)
        ch = Change(what, added, removed, ms, changed, list(batch),
                    getattr(stats, "mode", ""), getattr(stats, "commands", 0))
        self.changes.append(ch)
        if not changed:
            return ch  # e.g. the network connect that precedes a container's start: nothing to log
        self.emit("change", f"{what}: +{added} -{removed} rules ({ms:.0f} ms)",
                  events=[event_fields(e) for e in batch],
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
                    steps.append((what or describe([ev]), sum(o in ("add", "insert") for o in ops), ops.count("delete"), ev))

        try:
            stats = self.applier.replay(operation)  # type: ignore[attr-defined]
        except (Unreplayable, GenerationError) as e:
            reason = e.message if isinstance(e, GenerationError) else str(e)
            return self.sync(f"re-sync, the kept model cannot follow {describe(batch)}: {reason}")
        gen = self.applier.gen  # type: ignore[attr-defined]
        ms = (time.monotonic() - first) * 1000
        self.current = gen
        added, removed = sum(s[1] for s in steps), sum(s[2] for s in steps)
        if steps:
            self._set_sysctls(gen)
        ch = Change(describe(batch), added, removed, ms, bool(steps), list(batch), stats.mode, stats.commands)
        self.changes.append(ch)
        for what, a, r, ev in steps:
            self.emit("change", f"{what}: +{a} -{r} rules ({ms:.0f} ms)",
                      events=[event_fields(ev)],
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


__all__ = ["Watcher", "Applier", "make_applier"]
