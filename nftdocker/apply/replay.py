"""The one replay path: Docker's recorded calls sent to the kernel as they are.

Adding a container to a loaded host costs a dozen Docker calls. Whoever replayed them — ``apply``
resuming on the stored checkpoint (:class:`nftdocker.docker.checkpoint.ResumedFirewall`), or the
long-running applier running watch's events on its kept model
(:class:`nftdocker.docker.record.RecordingFirewall`) — hands the calls here: they become one
edit of the kernel's view (:func:`nftdocker.nft.diff.calls_edit`), committed in one transaction,
the new rules' handles learnt from the kernel's notifications (:func:`nftdocker.nft.commit.commit_steps`).
"""

from __future__ import annotations

from nftdocker.nft.backend import Backend, Monitor
from nftdocker.nft.commit import commit_steps
from nftdocker.nft.diff import calls_edit
from nftdocker.nft.ir import Call
from nftdocker.nft.transaction import Edit
from nftdocker.nft.view import KTable


def send_calls(be: Backend, mon: Monitor, views: dict[str, KTable | None], logs: dict[str, list[Call]],
               table: str) -> tuple[Edit, dict[str, KTable | None] | None, int | None] | None:
    """Commit Docker's ``logs`` (per family) as an edit of ``views`` (updated in place). Returns the
    edit, the views afterwards (None: read the table again) and our commit's generation; None when
    the calls cannot be sent as they are (a new chain, a policy): then the host is diffed."""
    got = calls_edit(views, logs, table)
    if got is None:
        return None
    tx, steps = got
    mon.drain()
    after, genid = commit_steps(be, mon, tx, steps, views, table)
    return tx, after, genid
