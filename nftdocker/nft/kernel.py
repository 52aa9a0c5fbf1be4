"""Kernel I/O: apply, list and remove nftdocker's tables through libnftables, in any netns.

Every change is one transaction (one libnftables ``cmd`` call): replace = add table, delete
table, add table with its contents (nft 1.0.6 has no ``destroy``), so the kernel takes all of
it or none. Only tables named ``--table`` (default ``nftdocker``) in families ``ip``/``ip6`` are
ever touched. Rules a user added to ``filter-DOCKER-USER`` are read back and re-added in the
same transaction, as Docker never flushes DOCKER-USER; a ``--user-rules`` file's rules
(:mod:`user_rules`) go first in it, in the same transaction too.

``nftables`` (python3-nftables) and ``pyroute2`` are imported lazily.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from nftdocker.errors import ApplyError, EnvironmentProblem, KernelError, UsageError  # ApplyError: kernel.ApplyError for callers
from nftdocker.docker.generate import Generated, sysctl_path
from nftdocker.nft.ir import Ruleset
from nftdocker.nft.render import DEFAULT_TABLE, nft_chains, chain_header, rule_text

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
LOCK_DIR = Path("/run/nftdocker")
RESERVED_TABLES = {"filter", "nat", "raw", "mangle", "security", "docker-bridges", "firewalld", "broute"}
USER_CHAIN = "filter-DOCKER-USER"
#: the comment nftdocker gives every table it creates; a table of that name without it is not ours
TABLE_MARK = "managed by nftdocker"
TABLE_COMMENT = f'comment "{TABLE_MARK}";'
NFT_FAMILIES = {"ip", "ip6", "inet", "arp", "bridge", "netdev"}
_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def check_table_name(table: str) -> str:
    if not _NAME_OK.match(table):
        raise UsageError(f"--table {table!r}: use letters, digits, '_', '.', '-' (at most 64)")
    if table in NFT_FAMILIES:
        raise UsageError(f"--table {table!r} is an nft family name, not a table name")
    if table in RESERVED_TABLES:
        raise UsageError(f"--table {table!r} belongs to iptables-nft, Docker or firewalld; nftdocker only touches its own tables")
    return table


# ---------------------------------------------------------------------- namespaces


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)  # type: ignore[attr-defined]
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@contextlib.contextmanager
def netns(name: str | None) -> Iterator[None]:
    """Run the block inside the named network namespace (``ip netns`` name), then come back."""
    if not name:
        yield
        return
    check_netns_name(name)
    path = NETNS_DIR / name
    if not path.exists():
        raise EnvironmentProblem(f"no network namespace {name!r} (ip netns list shows them; create one with: ip netns add {name})")
    if os.geteuid() != 0:
        raise EnvironmentProblem("entering a network namespace needs root: run nftdocker as root")
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)  # this thread's namespace, not the main thread's
    try:
        there = os.open(path, os.O_RDONLY)
        try:
            _setns(there)
        except OSError as e:
            raise EnvironmentProblem(f"cannot enter network namespace {name!r}: {e.strerror}") from None
        finally:
            os.close(there)
        try:
            yield
        finally:
            _setns(here)
    finally:
        os.close(here)


def check_netns_name(name: str | None) -> str | None:
    """``--netns`` takes an ``ip netns`` name, never a path: no '/', not '.' or '..' (exit 2)."""
    if name is None:
        return None
    if not name or "/" in name or "\0" in name or name in (".", "..") or len(name.encode()) > 255:
        raise UsageError(f"--netns {name!r}: not a network namespace name (an `ip netns` name: no '/', not '.' or '..')")
    return name


def netns_identity(name: str | None) -> tuple[int, int]:
    """(device, inode) of the namespace's nsfs file: the same whichever way a caller entered it."""
    check_netns_name(name)
    path = NETNS_DIR / name if name else Path("/proc/thread-self/ns/net")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EnvironmentProblem(f"no network namespace {name!r} (ip netns list shows them; create one with: ip netns add {name})") from None
    except OSError as e:
        raise EnvironmentProblem(f"cannot read network namespace {name or 'of this process'}: {e.strerror}") from None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def lock(name: str | None, timeout: float = 60.0) -> Iterator[None]:
    """One nftdocker change at a time per network namespace: an flock on a file named for the
    namespace's identity (not its name), so ``--netns X`` and ``ip netns exec X nftdocker`` share it.

    The file is removed when the change is done; a waiter that then holds a removed file retries.
    """
    dev, ino = netns_identity(name)
    path = LOCK_DIR / f"netns-{dev}-{ino}.lock"
    where = f"namespace {name!r}" if name else "this network namespace"
    try:
        LOCK_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise EnvironmentProblem(f"{LOCK_DIR} is not a directory: nftdocker keeps its locks and state there") from None
    except OSError as e:
        raise EnvironmentProblem(f"cannot create {LOCK_DIR}: {e.strerror}") from None
    deadline = time.monotonic() + timeout
    for _ in range(100000):  # bounded: each pass either locks, waits 20 ms, or finds the file replaced
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise EnvironmentProblem(f"cannot create a lock in {LOCK_DIR}: {e.strerror}"
                                     + (": run nftdocker as root" if e.errno == errno.EACCES else "")) from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EnvironmentProblem(f"another nftdocker change in {where} held the lock for {timeout:.0f} s") from None
                    time.sleep(0.02)
            held = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # the holder removed it as we waited: lock the file that is there now
    else:
        raise EnvironmentProblem(f"cannot take the lock for {where}")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


# ---------------------------------------------------------------------- libnftables


def _nftables_module():
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

    def run(self, text: str, check: bool = False) -> tuple[int, str, str]:
        self.ctx.set_dry_run(check)
        try:
            rc, out, err = self.ctx.cmd(text)
        finally:
            self.ctx.set_dry_run(False)
        return rc, out, err

    def list_json(self, what: str) -> list[dict[str, Any]]:
        self.ctx.set_json_output(True)
        try:
            rc, out, err = self.ctx.cmd(what)
        finally:
            self.ctx.set_json_output(False)
        if rc != 0:
            _raise_environment(err)
            return []
        return json.loads(out).get("nftables", []) if out.strip() else []

    def list_text(self, what: str) -> tuple[int, str, str]:
        return self.ctx.cmd(what)


def _raise_environment(err: str) -> None:
    low = err.lower()
    if "operation not permitted" in low:
        raise EnvironmentProblem("changing or listing nftables needs root (CAP_NET_ADMIN): run nftdocker as root")
    if "protocol not supported" in low or "operation not supported" in low and "netlink" in low:
        raise EnvironmentProblem("this kernel has no nf_tables (CONFIG_NF_TABLES); load the nf_tables module")


# ---------------------------------------------------------------------- transactions


@dataclass
class Transaction:
    """The text of one libnftables transaction and, per line, the origin of what it adds."""

    lines: list[str] = field(default_factory=list)
    origins: dict[int, str] = field(default_factory=dict)

    def add(self, line: str, origin: str = "") -> None:
        self.lines.append(line)
        if origin:
            self.origins[len(self.lines)] = origin

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def commands(self) -> int:
        return sum(1 for l in self.lines if l.startswith(("add ", "delete ", "insert ", "replace ", "flush ")))

    def extend(self, part: Transaction) -> None:
        """Append ``part``'s lines, with their origins."""
        base = len(self.lines)
        self.lines.extend(part.lines)
        self.origins.update({base + k: v for k, v in part.origins.items()})


def chain_commands(rs: Ruleset, table: str, user_chain: Any = None, create_user_chain: bool = True) -> Transaction:
    """``add chain`` then ``add rule`` commands for the ruleset's chains, in Docker's order.

    ``user_chain(tx, chain)``, when given, writes ``filter-DOCKER-USER``'s commands instead of its
    generated rules; ``create_user_chain`` False leaves that chain's ``add chain`` out (it is kept)."""
    tx = Transaction()
    fam = rs.family
    chains = nft_chains(rs)
    for c in chains:
        if create_user_chain or c.nft_name != USER_CHAIN:
            hdr = chain_header(c)
            tx.add(f"add chain {fam} {table} {c.nft_name}" + (f" {{ {hdr} }}" if hdr else ""), f"chain {c.nft_name}")
    for c in chains:
        if c.nft_name == USER_CHAIN and user_chain is not None:
            user_chain(tx, c)
            continue
        for r in c.rules:
            tx.add(f"add rule {fam} {table} {c.nft_name} {rule_text(r, rs, c.table)}", r.origin or c.nft_name)
    return tx


def full_transaction(rs: Ruleset, table: str, exists: bool, user: list[tuple[str, str]] | None = None) -> Transaction:
    """Replace one family's table: [add + delete] + add table (marked), chains, then rules (Docker's order).

    ``user``: (rule text, origin) of the ``--user-rules`` file's rules, put first in ``filter-DOCKER-USER``."""
    tx = Transaction()
    fam = rs.family
    if exists:
        tx.add(f"add table {fam} {table}")
        tx.add(f"delete table {fam} {table}")
    tx.add(f"add table {fam} {table} {{ {TABLE_COMMENT} }}")

    def user_chain(t: Transaction, c: Any) -> None:
        for text, origin in user or ():
            t.add(f"add rule {fam} {table} {USER_CHAIN} {text}", origin)
        for r in c.rules:
            t.add(f"add rule {fam} {table} {USER_CHAIN} {rule_text(r, rs, c.table)}", r.origin or USER_CHAIN)

    tx.extend(chain_commands(rs, table, user_chain))
    return tx


def _kernel_message(err: str) -> str:
    first = next((l for l in err.splitlines() if l.strip()), err.strip())
    return first.removeprefix("Error: ").strip()


def _locate(nft: Nft, tx: Transaction) -> int | None:
    """The first line of ``tx`` the kernel refuses, found by bisecting dry-run prefixes.

    The kernel validates a batch as a whole and libnftables then blames its first command, so
    the offending rule is found by asking the kernel (``--check``) about ever shorter prefixes.
    """
    lo, hi = 0, len(tx.lines)  # prefix of length lo passes; prefix of length hi fails
    if hi == 0:
        return None
    for _ in range(64):
        if hi - lo <= 1:
            return hi
        mid = (lo + hi) // 2
        rc, _, _ = nft.run("\n".join(tx.lines[:mid]) + "\n", check=True)
        if rc == 0:
            lo = mid
        else:
            hi = mid
    return None


def _offending(nft: Nft, tx: Transaction, err: str) -> str:
    """The kernel's message and the line (with the rule's origin) that caused it."""
    msg = _kernel_message(err)
    n = _locate(nft, tx)
    if n is None:
        return msg
    origin = tx.origins.get(n, "")
    return f"{msg}; offending command {n}: {tx.lines[n - 1]}" + (f" (origin: {origin})" if origin else "")


@dataclass
class ApplyResult:
    families: list[str]
    removed: list[str]
    commands: int
    kept_user_rules: dict[str, int]
    checked: bool


def apply(gen: Generated, netns_name: str | None = None, table: str = DEFAULT_TABLE, check: bool = False,
          extra: dict[str, Transaction] | None = None, user_rules: Any = None) -> ApplyResult:
    """Replace the generated tables in one transaction (``check``: the kernel validates, nothing changes).
    ``user_rules``: a :class:`user_rules.UserRules`, loaded first in ``filter-DOCKER-USER``.

    ``incremental.apply`` with ``replace``, leaving no stored view (the callers, ``watch``'s full
    syncs and ``verify``, do not come back through ``incremental.apply``).
    """
    from nftdocker.nft.incremental import apply as apply_incremental  # incremental builds on this module

    res = apply_incremental(gen, netns_name, table, check=check, replace=True, extra=extra, store=False,
                            user_rules=user_rules)
    return ApplyResult(res.families, res.removed, res.commands, res.kept_user_rules, res.checked)


def remove(netns_name: str | None = None, table: str = DEFAULT_TABLE) -> list[str]:
    """Delete nftdocker's tables (both families) in one transaction; returns the families removed.

    A table of that name that nftdocker did not create (no :data:`TABLE_MARK`) is refused, exit 2."""
    check_table_name(table)
    from nftdocker.nft.incremental import check_owned, forget  # incremental builds on this module

    with lock(netns_name), netns(netns_name):
        nft = Nft()
        fams = [f for f in ("ip", "ip6") if check_owned(f, table)]
        if fams:
            rc, _, err = nft.run("".join(f"delete table {f} {table}\n" for f in fams))
            if rc != 0:
                _raise_environment(err)
                raise KernelError(f"the kernel refused to delete the tables: {err.strip()}")
        forget(None, table)
        return fams


def list_objects(netns_name: str | None = None, table: str = DEFAULT_TABLE) -> list[dict[str, Any]]:
    """``nft -j list table`` objects of nftdocker's tables (both families)."""
    check_table_name(table)
    with netns(netns_name):
        nft = Nft()
        objs: list[dict[str, Any]] = []
        for fam in ("ip", "ip6"):
            objs.extend(nft.list_json(f"list table {fam} {table}"))  # [] where there is no such table
        return objs


def list_text(netns_name: str | None = None, table: str = DEFAULT_TABLE) -> str:
    check_table_name(table)
    with netns(netns_name):
        nft = Nft()
        out = []
        for fam in ("ip", "ip6"):
            rc, text, err = nft.list_text(f"list table {fam} {table}")
            if rc == 0:
                out.append(text)
            else:
                _raise_environment(err)  # else there is no such table
        return "".join(out)


# ---------------------------------------------------------------------- sysctls


def apply_sysctls(gen: Generated, netns_name: str | None = None) -> list[str]:
    """What Docker sets beside its rules: forwarding, route_localnet, bridge-nf-call, port hairpin."""
    report: list[str] = []
    with netns(netns_name):
        for s in gen.sysctls:
            path = Path(sysctl_path(s.key))
            try:
                path.write_text(s.value + "\n")
                report.append(f"{s.key} = {s.value} ({s.origin})")
            except FileNotFoundError:
                report.append(f"{s.key}: skipped, not present in this namespace ({s.origin})")
            except OSError as e:
                report.append(f"{s.key}: failed: {e.strerror} ({s.origin})")
        if gen.scenario.daemon.hairpin:
            report.extend(_hairpin_ports(gen))
    return report


def _hairpin_ports(gen: Generated) -> list[str]:
    try:
        from pyroute2 import IPRoute  # type: ignore[import-not-found]
    except ImportError:
        return ["hairpin: skipped, pyroute2 is not installed (pip install pyroute2)"]
    out = []
    bridges = {n.bridge for n in gen.scenario.networks}
    with IPRoute() as ipr:
        links = ipr.get_links()  # one listing: veths come and go while containers start
        index = {l.get_attr("IFLA_IFNAME"): l["index"] for l in links}
        for br in sorted(bridges):
            if br not in index:
                out.append(f"hairpin on {br} ports: skipped, no such bridge")
                continue
            for l in links:
                if l.get_attr("IFLA_MASTER") != index[br]:
                    continue
                port = l.get_attr("IFLA_IFNAME")
                try:
                    ipr.brport("set", index=l["index"], hairpin_mode=1)
                    out.append(f"hairpin on {br} port {port}")
                except Exception as e:  # noqa: BLE001 - the port went away (ENODEV) meanwhile
                    out.append(f"hairpin on {br} port {port}: skipped ({getattr(e, 'code', e)})")
    return out
