"""The one replay path: Docker's recorded calls sent to the kernel as they are.

Adding a container to a loaded host costs a dozen Docker calls. Whoever replayed them — ``apply``
resuming on the stored checkpoint (:class:`nftdocker.docker.checkpoint.ResumedFirewall`), or the
long-running applier running watch's events on its kept model
(:class:`nftdocker.docker.record.RecordingFirewall`) — hands the calls here: they become one
edit of the kernel's view (:func:`nftdocker.nft.diff.calls_edit`), committed in one transaction,
the new rules' handles learnt from the kernel's notifications as for any edit (:func:`nftdocker.nft.commit.commit`).
"""

from __future__ import annotations

from nftdocker.nft.backend import Backend, Monitor
from nftdocker.nft.commit import commit
from nftdocker.nft.diff import calls_edit
from nftdocker.nft.ir import Call
from nftdocker.nft.transaction import Edit
from nftdocker.nft.view import KTable


def send_calls(be: Backend, mon: Monitor, views: dict[str, KTable | None], logs: dict[str, list[Call]],
               table: str) -> tuple[Edit, dict[str, KTable | None] | None, int | None] | None:
    """Commit Docker's ``logs`` (per family) as an edit of ``views`` (left as they are). Returns the
    edit, the views afterwards (None: read the table again) and our commit's generation; None when
    the calls cannot be sent as they are (a new chain, a policy): then the host is diffed."""
    tx = calls_edit(views, logs, table)
    if tx is None:
        return None
    after, genid = commit(be, tx, table, monitor=mon, store=False)
    return tx, after, genid
