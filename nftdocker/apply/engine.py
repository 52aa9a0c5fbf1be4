"""The one orchestration of a change to nftdocker's tables: apply, resume, remove.

:func:`apply` loads a :class:`Generated` host: it reads the kernel's view (the stored state, or a
listing), plans the in-place edit or the full replace (:func:`nftdocker.nft.diff.plan`), commits
it in one transaction and stores the view it leaves. :func:`apply_scenario` (``nftdocker apply``)
first tries to *resume*: when the scenario only appends containers to the host the last apply
here loaded, only their Docker calls are replayed on the stored checkpoint
(:mod:`nftdocker.docker.checkpoint`) and sent (:func:`replay.send_calls`, the path watch's events
take too); else it generates the host and applies it. :func:`remove` deletes the tables.

Every function takes the namespace by name (and holds its lock), or a ``backend`` to run on
instead (:class:`nftdocker.nft.fake.FakeBackend` in tests). Every result is a :class:`Result`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from nftdocker.apply.replay import send_calls
from nftdocker.docker import checkpoint
from nftdocker.docker.generate import Firewall, Generated
from nftdocker.errors import ApplyError, KernelError, NftdockerError
from nftdocker.host import user_rules as urules
from nftdocker.host.accept_mark import apply as accept_marks
from nftdocker.host.sysctl import Beside, apply_sysctls
from nftdocker.model import Scenario
from nftdocker.nft.backend import Backend, Libnftables
from nftdocker.nft.commit import commit, kernel_views
from nftdocker.nft.diff import file_rules_in_place, plan
from nftdocker.nft.netns import lock, netns
from nftdocker.nft.render import DEFAULT_TABLE, nft_chains
from nftdocker.nft.replace import owned
from nftdocker.nft.state import drop_state, ignored, state_path, stored_state, store_views
from nftdocker.nft.ir import FAMILIES
from nftdocker.nft.table import USER_CHAIN, check_table_name, is_user_rules_key, rules_of
from nftdocker.nft.transaction import Op, Transaction
from nftdocker.nft.view import KTable


@dataclass
class Result:
    """What one change did (:func:`apply`, :func:`apply_scenario`, the long-running applier)."""

    families: list[str]
    removed: list[str]  # the families whose table was deleted
    commands: int
    #: apply: full | incremental | noop; the long-running applier: full | diff | fast (Docker's calls sent as they are) | noop
    mode: str
    view: str = "none"  # where the kernel's table was read from: state | listing | none
    added_rules: int = 0
    removed_rules: int = 0
    checked: bool = False
    kept_user_rules: dict[str, int] = field(default_factory=dict)
    reason: str = ""  # why a full replace
    #: full: the whole host generated; resumed: only appended containers replayed (:mod:`checkpoint`)
    generation: str = "full"
    replayed: int = 0  # containers replayed on the checkpoint (generation "resumed")
    sysctls: list[str] | None = None  # what ``sysctls=True`` set (:func:`host.sysctl.apply_sysctls`)
    seconds: float = 0.0  # the long-running applier: the whole change
    kernel_seconds: float = 0.0  # of it, in libnftables and the kernel
    resynced: bool = False  # the long-running applier read the table again first


@contextlib.contextmanager
def locked(netns_name: str | None, backend: Backend | None = None) -> Iterator[None]:
    """Inside the named namespace, under its lock; with a ``backend`` of its own (the fake), as it is."""
    if backend is not None:
        yield
        return
    with lock(netns_name), netns(netns_name):
        yield


@contextlib.contextmanager
def kernel(netns_name: str | None, backend: Backend | None = None) -> Iterator[Backend]:
    """The backend to change: ``backend``, or libnftables inside the named namespace, under its lock."""
    with locked(netns_name, backend):
        yield backend if backend is not None else Libnftables()


def user_families(gen: Generated) -> list[str]:
    """The families whose generated table has ``filter-DOCKER-USER`` (where ``--user-rules`` go)."""
    return [f for f in gen.families() if any(c.nft_name == USER_CHAIN for c in nft_chains(gen.rulesets[f]))]


def kept_user_rules(views: dict[str, KTable | None], fams: list[str]) -> dict[str, int]:
    """Per family, the user's own rules in ``filter-DOCKER-USER`` (all but its ``return``)."""
    return {f: len([k for k in kt.chains[USER_CHAIN].keys if k != "return" and not is_user_rules_key(k)])
            for f in fams if (kt := views.get(f)) is not None and USER_CHAIN in kt.chains}


def apply(gen: Generated, netns_name: str | None = None, table: str = DEFAULT_TABLE, check: bool = False,
          replace: bool = False, store: bool = True,
          user_rules: urules.UserRules | None = None, backend: Backend | None = None) -> Result:
    """Load ``gen``, sending only the difference when the table is loaded (``replace``: always the
    whole table; ``check``: the kernel validates, nothing changes). ``store``: keep the table's view
    for the next apply here. ``user_rules``: the ``--user-rules`` file's rules, first in
    ``filter-DOCKER-USER``."""
    check_table_name(table)
    with kernel(netns_name, backend) as be:
        return _apply_in(be, gen, table, check, replace, store=store, user_rules=user_rules)


def _apply_in(be: Backend, gen: Generated, table: str, check: bool, replace: bool,
              checkpoint: dict[str, Any] | None = None, known: tuple[dict[str, KTable | None], str] | None = None, store: bool = True,
              user_rules: urules.UserRules | None = None) -> Result:
    """:func:`apply` on ``be`` (inside the namespace, under the lock); ``known``: the views already read."""
    urules.check(be, table, user_rules, user_families(gen))
    views, source = (None, "none") if replace else known if known is not None else kernel_views(be, table)
    tx, reason = plan(be, views, gen.rulesets, table, user_rules, replace)
    commit(be, tx, table, check, store=store, checkpoint=checkpoint)
    return Result(gen.families(), list(tx.dropped), tx.commands(), tx.mode, source, tx.added, tx.removed, check,
                  {**kept_user_rules(tx.after, gen.families()), **tx.kept}, reason)


def apply_scenario(sc: Scenario, netns_name: str | None = None, table: str = DEFAULT_TABLE, check: bool = False,
                   replace: bool = False, sysctls: bool = False, accept_mark: tuple[int, int] | None = None,
                   user_rules: urules.UserRules | None = None, backend: Backend | None = None) -> Result:
    """Generate ``sc`` and apply it; when it only appends containers to the host the last apply
    here loaded, replay just those on the stored checkpoint instead of generating the host.

    ``sysctls``: also set what Docker sets beside its rules (not with ``check``). ``accept_mark``:
    (VALUE, MASK) of :mod:`nftdocker.host.accept_mark`; the host is then always generated whole (the checkpoint's
    replay knows Docker's rules, not the marked ones) and no checkpoint is stored. ``user_rules``:
    the ``--user-rules`` file's rules (the host is resumed only when the table holds them already,
    as the file has them; else it is generated and diffed).
    """
    check_table_name(table)
    with kernel(netns_name, backend) as be:
        known: tuple[dict[str, KTable | None], str] | None = None
        got: tuple[Result, Beside] | None = None
        if not replace and not check:
            st = stored_state(be, table)
            if st is None:
                known = kernel_views(be, table, use_state=False)
            else:
                views, genid, cp = st
                known = (views, "state")
                if cp is not None and accept_mark is None and _user_rules_loaded(views, user_rules):
                    got = _resume(be, sc, views, genid, cp, table)
        if got is None:
            fw = Firewall(sc)
            gen = accept_marks(fw.run(), accept_mark)
            got = _apply_in(be, gen, table, check, replace, known=known, user_rules=user_rules,
                            checkpoint=checkpoint.checkpoint(fw) if accept_mark is None else None), \
                Beside.of_generated(gen)
    res, beside = got
    if sysctls and not check:
        res.sysctls = apply_sysctls(beside, netns_name)
    return res


def _resume(be: Backend, sc: Scenario, views: dict[str, KTable | None], genid: int,
            cp: dict[str, Any], table: str) -> tuple[Result, Beside] | None:
    """Replay the containers ``sc`` appends to the checkpoint's host and send their calls; None: not possible."""
    tables = {f: ({n: kc.keys for n, kc in kt.chains.items()} if kt is not None else None) for f, kt in views.items()}
    try:
        n_new = checkpoint.appended(cp, sc)
        if n_new is None:
            return None
        fw = checkpoint.ResumedFirewall(sc, cp, tables)
        fw.add_containers(sc, sc.containers[len(sc.containers) - n_new:])
    except checkpoint.Damaged as e:
        ignored(state_path(be, table), f"{e}")
        return None
    except (checkpoint.Unsupported, NftdockerError):
        return None  # the whole host is generated instead (and says what is wrong, if anything is)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        ignored(state_path(be, table), f"unreadable checkpoint: {type(e).__name__}: {e}")
        return None
    mon = be.monitor()
    try:
        sent = send_calls(be, mon, views, fw.logs(), table)
    finally:
        mon.close()
    if sent is None:
        return None
    tx, after, new_genid = sent
    if not tx:
        after, new_genid = views, genid
    elif new_genid != (genid + 1) & 0xFFFFFFFF:
        after = None  # another commit came between reading the state and ours: list the table next time
    store_views(be, table, after, new_genid, checkpoint.checkpoint(fw))
    fams = [f for f in FAMILIES if views.get(f) is not None]
    return (Result(fams, [], tx.commands(), tx.mode, "state", tx.added, tx.removed, False, kept_user_rules(views, fams),
                   generation="resumed", replayed=n_new), Beside.of(sc, fw.sysctls.values()))


def _user_rules_loaded(views: dict[str, KTable | None], user_rules: urules.UserRules | None) -> bool:
    """Do the views' ``filter-DOCKER-USER`` chains hold the file's rules as the planner leaves them?"""
    return all(file_rules_in_place(kt.chains[USER_CHAIN].keys, rules_of(user_rules, f))
               for f, kt in views.items() if kt is not None and USER_CHAIN in kt.chains)


def remove(netns_name: str | None = None, table: str = DEFAULT_TABLE, backend: Backend | None = None) -> list[str]:
    """Delete nftdocker's tables (both families) in one transaction; returns the families removed.

    A table of that name that nftdocker did not create (no mark) is refused, exit 2."""
    check_table_name(table)
    with kernel(netns_name, backend) as be:
        fams = [f for f in FAMILIES if owned(be, f, table)]
        if fams:
            try:
                be.run(Transaction([Op("delete", "table", f, table) for f in fams]))
            except ApplyError as e:
                raise KernelError(f"the kernel refused to delete the tables: {e.message}") from None
        drop_state(be, table)
        return fams
