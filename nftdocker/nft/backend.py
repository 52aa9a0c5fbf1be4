"""The kernel behind the apply engine: a :class:`Backend` protocol and the libnftables backend.

The engine (:mod:`diff`, :mod:`replace`, :mod:`commit`, :mod:`state`) talks to the kernel only
through a Backend: run a :class:`Transaction` (all or nothing; a refusal names the offending
operation and its rule's origin), read a table as a :class:`view.KTable`, a table's handle and
comment, the ruleset generation, one rule's digest, open a monitor of the kernel's
notifications (how the handles of added rules are learnt); and for listing and healing, ``nft -j``
and ``nft`` listings and a JSON transaction. :class:`Libnftables` is the real one
(libnftables in the current network namespace, netlink for the rest); :mod:`fake` holds one
that keeps the ruleset in memory.

``nftables`` (python3-nftables) is imported lazily.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from nftdocker.errors import ApplyError, EnvironmentProblem, KernelError
from nftdocker.nft import netlink, netns
from nftdocker.nft.netlink import Event
from nftdocker.nft.transaction import Transaction, offending
from nftdocker.nft.view import KTable, table_of_listing


class Monitor(Protocol):
    """The kernel's notifications of commits (:class:`netlink.Monitor`'s shape)."""

    foreign: list[Event]
    lost: bool

    def drain(self) -> None: ...
    def own_commit(self, tid: int, timeout: float = 2.0) -> tuple[int, list[Event]] | None: ...
    def close(self) -> None: ...


class Backend(Protocol):
    def run(self, tx: Transaction, check: bool = False) -> float:
        """Send ``tx`` (``check``: validate only); seconds spent there. Raises ApplyError, nothing changed."""
        ...

    def dry_run(self, text: str) -> tuple[int, str]:
        """Validate nft text (nothing changes): (0, "") or (rc, the kernel's message)."""
        ...

    def genid(self) -> int | None: ...
    def table_info(self, family: str, table: str) -> Event | None: ...
    def chain_names(self, family: str, table: str) -> list[str]: ...
    def read_table(self, family: str, table: str) -> KTable | None: ...
    def read_chain(self, family: str, table: str, chain: str) -> list[tuple[str, int | None]]: ...
    def rule_digest(self, family: str, table: str, chain: str, handle: int) -> str | None: ...
    def monitor(self) -> Monitor: ...
    def netns_id(self) -> list[int]: ...

    def list_json(self, what: str) -> list[dict[str, Any]]:
        """``nft -j WHAT`` (a ``list`` command)'s objects; [] where there is no such object."""
        ...

    def list_text(self, what: str) -> str:
        """``nft WHAT`` (a ``list`` command)'s text; "" where there is no such object."""
        ...

    def json_cmd(self, doc: dict[str, Any]) -> tuple[int, str]:
        """Run a libnftables JSON document (one transaction): (0, "") or (rc, the kernel's message)."""
        ...


def raise_environment(err: str) -> None:
    """Raise EnvironmentProblem when libnftables' message says nftables cannot be used here at all."""
    low = err.lower()
    if "operation not permitted" in low:
        raise EnvironmentProblem("changing or listing nftables needs root (CAP_NET_ADMIN): run nftdocker as root")
    if "protocol not supported" in low or "operation not supported" in low and "netlink" in low:
        raise EnvironmentProblem("this kernel has no nf_tables (CONFIG_NF_TABLES); load the nf_tables module")


def kernel_message(err: str) -> str:
    """The first line of libnftables' error output, without its ``Error:``."""
    first = next((l for l in err.splitlines() if l.strip()), err.strip())
    return first.removeprefix("Error: ").strip()


def _nftables_module() -> Any:
    try:
        import nftables  # type: ignore[import-not-found]
    except ImportError:
        raise EnvironmentProblem(
            "the libnftables Python binding is missing: apt-get install python3-nftables, and run nftdocker "
            "with Debian's /usr/bin/python3 (or a venv made from it with --system-site-packages)"
        ) from None
    return nftables


class Nft:
    """A libnftables context created inside the current network namespace."""

    def __init__(self) -> None:
        mod = _nftables_module()
        try:
            self.ctx = mod.Nftables()
        except Exception as e:  # noqa: BLE001 - libnftables.so missing or broken
            raise EnvironmentProblem(f"libnftables cannot be loaded: {e}") from None
        self.ctx.set_handle_output(False)
        self.last_error = ""  # libnftables' message about the last listing refused

    def run(self, text: str, check: bool = False) -> tuple[int, str, str]:
        self.ctx.set_dry_run(check)
        try:
            rc, out, err = self.ctx.cmd(text)
        finally:
            self.ctx.set_dry_run(False)
        return rc, out, err

    def list_json(self, what: str, handles: bool = False) -> list[dict[str, Any]] | None:
        """``nft -j [-a] WHAT``'s objects (``handles``: with their handles); None when the kernel
        refuses the listing (no such table or chain; the message is in :attr:`last_error`)."""
        self.ctx.set_json_output(True)
        self.ctx.set_handle_output(handles)
        try:
            rc, out, err = self.ctx.cmd(what)
        finally:
            self.ctx.set_json_output(False)
            self.ctx.set_handle_output(False)
        if rc != 0:
            raise_environment(err)
            self.last_error = err
            return None
        return json.loads(out).get("nftables", []) if out.strip() else []

    def list_text(self, what: str) -> tuple[int, str, str]:
        return self.ctx.cmd(what)


class Libnftables:
    """The :class:`Backend` of the current network namespace: libnftables and netlink."""

    def __init__(self) -> None:
        self.nft = Nft()

    def run(self, tx: Transaction, check: bool = False) -> float:
        t0 = time.perf_counter()
        rc, _, err = self.nft.run(tx.text, check=check)
        took = time.perf_counter() - t0
        if rc != 0:
            raise_environment(err)
            where = offending(tx, kernel_message(err), lambda text: self.nft.run(text, check=True)[0] == 0)
            raise ApplyError(f"the kernel refused the transaction, nothing changed: {where}")
        return took

    def dry_run(self, text: str) -> tuple[int, str]:
        rc, _, err = self.nft.run(text, check=True)
        if rc != 0:
            raise_environment(err)
        return rc, err

    def genid(self) -> int | None:
        return netlink.ruleset_genid()

    def table_info(self, family: str, table: str) -> Event | None:
        return netlink.table_info(family, table)

    def chain_names(self, family: str, table: str) -> list[str]:
        return netlink.chain_names(family, table)

    def read_table(self, family: str, table: str) -> KTable | None:
        """``nft -j -a list table FAMILY TABLE``; None if the table does not exist."""
        listed = self.nft.list_json(f"list table {family} {table}", handles=True)
        if listed is None:
            if "No such file or directory" in self.nft.last_error:
                return None
            raise KernelError(f"cannot list table {family} {table}: {kernel_message(self.nft.last_error)}")
        return table_of_listing(family, listed)

    def read_chain(self, family: str, table: str, chain: str) -> list[tuple[str, int | None]]:
        listed = self.nft.list_json(f"list chain {family} {table} {chain}", handles=True) or []
        kt = table_of_listing(family, listed)
        kc = kt.chains.get(chain)
        return list(zip(kc.keys, kc.handles)) if kc is not None else []

    def rule_digest(self, family: str, table: str, chain: str, handle: int) -> str | None:
        return netlink.rule_digest(family, table, chain, handle)

    def monitor(self) -> Monitor:
        return netlink.Monitor()

    def netns_id(self) -> list[int]:
        return netns.netns_id()

    def list_json(self, what: str) -> list[dict[str, Any]]:
        return self.nft.list_json(what) or []

    def list_text(self, what: str) -> str:
        rc, text, err = self.nft.list_text(what)
        if rc != 0:
            raise_environment(err)  # else there is no such object
            return ""
        return text

    def json_cmd(self, doc: dict[str, Any]) -> tuple[int, str]:
        rc, _, err = self.nft.ctx.json_cmd(doc)
        return rc, err
