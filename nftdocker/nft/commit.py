"""Committing an edit, and learning what the kernel holds afterwards.

A full replace creates its tables anew, so their handles are known in advance (:mod:`replace`);
the ruleset generation is read before and after, to tell whether anything committed in between.
An in-place edit's new handles come from the kernel's own notifications: a monitor (a netlink
socket on the nftables multicast group) is open while the transaction commits, and the NEWRULE
messages (in batch order) up to the NEWGEN carrying our thread id are ours. That costs in
proportion to the change. Views known to be exact are stored (:mod:`state`) for the next apply.
"""

from __future__ import annotations

import threading
from typing import Any

from nftdocker.nft.backend import Backend, Monitor
from nftdocker.nft.netlink import MSG_NEWRULE, MSG_NEWTABLE, Event
from nftdocker.nft.replace import owned
from nftdocker.nft.state import store_views, stored_state
from nftdocker.nft.ir import FAMILIES
from nftdocker.nft.transaction import Edit, Transaction
from nftdocker.nft.view import KTable


def kernel_views(be: Backend, table: str, use_state: bool = True) -> tuple[dict[str, KTable | None], str]:
    """Both families' tables as the kernel holds them, and where that came from (state or listing)."""
    if use_state:
        stored = stored_state(be, table)
        if stored is not None:
            return stored[0], "state"
    return {fam: be.read_table(fam, table) if owned(be, fam, table) else None for fam in FAMILIES}, "listing"


def _next(g0: int | None, g1: int | None) -> int | None:
    """``g1`` if it is the generation right after ``g0`` (nothing else committed between)."""
    return g1 if g0 is not None and g1 == (g0 + 1) & 0xFFFFFFFF else None


def commit(be: Backend, tx: Transaction, table: str, check: bool = False, monitor: Monitor | None = None,
           store: bool = True, checkpoint: dict[str, Any] | None = None) -> tuple[dict[str, KTable | None] | None, int | None]:
    """Run ``tx`` (one transaction); learn what the kernel holds afterwards.

    Returns (views, generation id). The generation id is that of our own commit, or None when
    another commit may have come between. Views are None when they cannot be told (check mode,
    a plain :class:`Transaction`, lost notifications, a table replaced in place). With ``store``,
    views known to be exact are saved for the next apply in this namespace. Raises ApplyError,
    naming the offending operation and its rule's origin, if the kernel refuses.
    """
    views, genid = _commit(be, tx, table, check, monitor)
    if store and not check and tx:
        store_views(be, table, views, genid, checkpoint)
    return views, genid


def _commit(be: Backend, tx: Transaction, table: str, check: bool,
            monitor: Monitor | None) -> tuple[dict[str, KTable | None] | None, int | None]:
    if not isinstance(tx, Edit) or check:
        be.run(tx, check)
        return None, None
    if not tx:
        return dict(tx.after), None
    if tx.mode == "full":
        g0 = be.genid()
        tx.kernel_seconds = be.run(tx)
        if tx.in_place:  # the kernel's handles of what was replaced in place are not known
            return None, _next(g0, be.genid())
        after = dict(tx.after)
        for fam, kt in after.items():
            if kt is not None:
                info = be.table_info(fam, table)
                kt.handle = info.handle if info is not None else None
        return after, _next(g0, be.genid())
    mon = be.monitor() if monitor is None else monitor
    try:
        mon.drain()
        tx.kernel_seconds = be.run(tx)
        got = mon.own_commit(threading.get_native_id())
        if got is None:
            return None, None
        genid, events = got
        return learn(tx, events, table), genid
    finally:
        if monitor is None:
            mon.close()


def new_handles(events: list[Event], table: str, expected: list[tuple[str, str]]) -> list[int | None] | None:
    """The handles of the rules our commit added, from its NEWRULE messages (in batch order);
    None unless they are exactly the ``(family, chain)`` adds ``expected``."""
    new = [e for e in events if e.msg == MSG_NEWRULE and e.table == table]
    if len(new) != len(expected) or any(e.family != f or e.chain != c for e, (f, c) in zip(new, expected)):
        return None
    return [e.handle for e in new]


def learn(tx: Edit, events: list[Event], table: str) -> dict[str, KTable | None] | None:
    """Fill in the handles of the rules ``tx`` added, and of tables it created, from the kernel's
    notifications; None when they do not tell every one."""
    after = tx.after
    handles = new_handles(events, table, [(fam, chain) for fam, chain, _ in tx.slots])
    if handles is None or any(after.get(fam) is None for fam, _, _ in tx.slots):
        return None
    for h, (fam, chain, idx) in zip(handles, tx.slots):
        after[fam].chains[chain].handles[idx] = h  # type: ignore[union-attr]
    for fam, kt in after.items():
        if kt is None:
            continue
        for ev in events:
            if ev.msg == MSG_NEWTABLE and ev.family == fam and ev.table == table:
                kt.handle = ev.handle
        if kt.handle is None:
            return None
    return after
