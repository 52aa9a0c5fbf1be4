"""The raw netfilter netlink of nftables: notifications, dumps, one rule's digest, table and generation.

:class:`Monitor` is a socket on the nftables multicast group of the current namespace: the
kernel's NEWRULE/NEWTABLE/... notifications of every commit, each commit closed by a NEWGEN
carrying the committer's thread id (how a commit is told to be ours). :func:`rule_digest` asks for
one rule by handle (GETRULE) and hashes its expressions; :func:`table_info`, :func:`ruleset_genid`
and :func:`chain_names` read a table's handle, use count and comment, the ruleset generation and
the chains in creation order. Everything here works in the namespace the thread is in.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Iterable

from nftdocker.errors import EnvironmentProblem, KernelError

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
SO_RCVBUFFORCE = 33
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
SUBSYS = 10 << 8  # NFNL_SUBSYS_NFTABLES
MSG_NEWTABLE, MSG_GETTABLE, MSG_DELTABLE = 0, 1, 2
MSG_NEWCHAIN, MSG_GETCHAIN, MSG_DELCHAIN = 3, 4, 5
MSG_NEWRULE, MSG_GETRULE, MSG_DELRULE = 6, 7, 8
MSG_NEWGEN, MSG_GETGEN = 15, 16
NFPROTO = {"ip": 2, "ip6": 10}
FAMILY_OF = {2: "ip", 10: "ip6"}


def _attrs(buf: bytes | bytearray | memoryview, off: int, end: int) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    while off + 4 <= end:
        ln, ty = struct.unpack_from("=HH", buf, off)
        if ln < 4:
            break
        out.setdefault(ty & 0x3FFF, (off + 4, off + ln))
        off += (ln + 3) & ~3
    return out


def _str(buf: Any, span: tuple[int, int] | None) -> str:
    if span is None:
        return ""
    return bytes(buf[span[0]:span[1]]).split(b"\0", 1)[0].decode(errors="replace")


@dataclass
class Event:
    """One nftables notification: the parts nftdocker needs."""

    msg: int
    family: str
    table: str = ""
    chain: str = ""
    handle: int | None = None
    genid: int | None = None
    pid: int | None = None
    #: tables: how many chains, sets and objects it holds (NFTA_TABLE_USE), and its comment
    use: int | None = None
    comment: str | None = None


def _udata_comment(ud: bytes) -> str:
    """The comment (libnftnl udata type 0) in a table's NFTA_TABLE_USERDATA, or ''."""
    off = 0
    while off + 2 <= len(ud):
        ty, ln = ud[off], ud[off + 1]
        if ty == 0:
            return ud[off + 2:off + 2 + ln].split(b"\0", 1)[0].decode(errors="replace")
        off += 2 + ln
    return ""


def _parse(buf: Any, n: int, done: bool = False) -> Iterable[Event | int | None]:
    """Events, or an errno for NLMSG_ERROR messages; with ``done``, None for the end of a dump."""
    off = 0
    while off + 16 <= n:
        ln, ty, _flags, _seq, _pid = struct.unpack_from("=IHHII", buf, off)
        if ln < 16 or off + ln > n:
            break
        if ty == NLMSG_DONE and done:
            yield None
            return
        if ty == NLMSG_ERROR:
            yield -struct.unpack_from("=i", buf, off + 16)[0]
        elif ty & 0xFF00 == SUBSYS and ln >= 20:
            msg = ty & 0xFF
            fam = FAMILY_OF.get(buf[off + 16], str(buf[off + 16]))
            a = _attrs(buf, off + 20, off + ln)
            ev = Event(msg, fam)
            if msg in (MSG_NEWRULE, MSG_DELRULE):
                ev.table, ev.chain = _str(buf, a.get(1)), _str(buf, a.get(2))
                if 3 in a:
                    ev.handle = struct.unpack_from(">Q", buf, a[3][0])[0]
            elif msg in (MSG_NEWCHAIN, MSG_DELCHAIN):
                ev.table, ev.chain = _str(buf, a.get(1)), _str(buf, a.get(3))
                if 2 in a:
                    ev.handle = struct.unpack_from(">Q", buf, a[2][0])[0]
            elif msg in (MSG_NEWTABLE, MSG_DELTABLE):
                ev.table = _str(buf, a.get(1))
                if 4 in a:
                    ev.handle = struct.unpack_from(">Q", buf, a[4][0])[0]
                if 3 in a:
                    ev.use = struct.unpack_from(">I", buf, a[3][0])[0]
                if 6 in a:
                    ev.comment = _udata_comment(bytes(buf[a[6][0]:a[6][1]]))
            elif msg == MSG_NEWGEN:
                if 1 in a:
                    ev.genid = struct.unpack_from(">I", buf, a[1][0])[0]
                if 2 in a:
                    ev.pid = struct.unpack_from(">I", buf, a[2][0])[0]
            yield ev
        off += (ln + 3) & ~3


class Monitor:
    """A netlink socket on the nftables multicast group of the current network namespace.

    Open it before a transaction; :meth:`own_commit` then returns what that transaction did.
    Notifications of other processes' commits are kept in :attr:`foreign`. ``lost`` is set when
    the kernel dropped notifications (the socket buffer overflowed).
    """

    def __init__(self, rcvbuf: int = 64 << 20) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, 0))
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        self.buf = bytearray(1 << 20)
        self.pending: list[Event] = []
        self.foreign: list[Event] = []
        self.lost = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout`` for the first message); False if nothing came."""
        got = False
        wait = timeout
        while True:
            if wait > 0:
                r, _, _ = select.select([self.sock], [], [], wait)
                if not r:
                    return got
            try:
                n = self.sock.recv_into(self.buf, len(self.buf), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return got
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.lost = True
                    continue
                raise
            got = True
            wait = 0
            for ev in _parse(self.buf, n):
                if isinstance(ev, int):
                    continue
                if ev.msg == MSG_NEWGEN:
                    self._close_commit(ev)
                else:
                    self.pending.append(ev)

    def _close_commit(self, gen: Event) -> None:
        self.pending.append(gen)
        self._commits.append(self.pending)
        self.pending = []

    _commits: list[list[Event]]

    def drain(self) -> None:
        """Move every complete commit seen so far to :attr:`foreign` (call before a transaction)."""
        self._commits = []
        self._read(0)
        for c in self._commits:
            self.foreign.extend(c)
        self._commits = []

    def commits(self, timeout: float) -> list[list[Event]]:
        """The commits completed within ``timeout`` (waiting for the first message), each its events
        with the NEWGEN (carrying the committer's thread id) last; [] if none."""
        self._commits = []
        self._read(timeout)
        out, self._commits = self._commits, []
        return out

    def own_commit(self, tid: int, timeout: float = 2.0) -> tuple[int, list[Event]] | None:
        """(generation id, events) of the commit made by thread ``tid``; None if it cannot be told
        (also when notifications were lost: a foreign commit's dropped NEWGEN could have merged its
        events into ours)."""
        self._commits = []
        deadline = time.monotonic() + timeout
        while True:
            for i, c in enumerate(self._commits):
                gen = c[-1]
                if gen.pid == tid and not self.lost:
                    for other in self._commits[:i] + self._commits[i + 1:]:
                        self.foreign.extend(other)
                    self._commits = []
                    return (gen.genid or 0), c[:-1]
            left = deadline - time.monotonic()
            if left <= 0 or self.lost:
                for c in self._commits:
                    self.foreign.extend(c)
                self._commits = []
                return None
            self._read(min(left, 0.05) if self._commits or self.pending else left)


def _request(msg: int, family: int, attrs: bytes = b"") -> list[Event | int]:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        s.bind((0, 0))
        hdr = struct.pack("=IHHII", 20 + len(attrs), SUBSYS | msg, NLM_F_REQUEST, 1, 0) + struct.pack("=BBH", family, 0, 0)
        s.send(hdr + attrs)
        r, _, _ = select.select([s], [], [], 2.0)
        if not r:
            return []
        buf = bytearray(65536)
        n = s.recv_into(buf)
        return list(_parse(buf, n))
    finally:
        s.close()


def rule_digest(family: str, table: str, chain: str, handle: int) -> str | None:
    """sha256 of one rule's expressions as the kernel holds them (a GETRULE of that handle), or
    None if the chain has no rule with that handle."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        s.bind((0, 0))
        attrs = _nla_str(1, table) + _nla_str(2, chain) + struct.pack("=HH", 12, 3) + struct.pack(">Q", handle)
        s.send(struct.pack("=IHHII", 20 + len(attrs), SUBSYS | MSG_GETRULE, NLM_F_REQUEST, 1, 0)
               + struct.pack("=BBH", NFPROTO[family], 0, 0) + attrs)
        r, _, _ = select.select([s], [], [], 2.0)
        if not r:
            return None
        buf = bytearray(1 << 16)
        n = s.recv_into(buf)
    finally:
        s.close()
    if n < 20:
        return None
    ln, ty = struct.unpack_from("=IH", buf, 0)
    if ty & 0xFF != MSG_NEWRULE or ty & 0xFF00 != SUBSYS:
        if ty == NLMSG_ERROR and -struct.unpack_from("=i", buf, 16)[0] == errno.EPERM:
            raise EnvironmentProblem("listing nftables needs root (CAP_NET_ADMIN): run nftdocker as root")
        return None
    span = _attrs(buf, 20, min(ln, n)).get(4)
    return hashlib.sha256(bytes(buf[span[0]:span[1]]) if span else b"").hexdigest()


def _nla_str(ty: int, text: str) -> bytes:
    b = text.encode() + b"\0"
    return struct.pack("=HH", 4 + len(b), ty) + b + b"\0" * ((-len(b)) % 4)


def ruleset_genid() -> int | None:
    """The current nftables ruleset generation of this namespace (changes with every commit)."""
    for ev in _request(MSG_GETGEN, 0):
        if isinstance(ev, Event) and ev.msg == MSG_NEWGEN:
            return ev.genid
    return None


def table_info(family: str, table: str) -> Event | None:
    """The kernel's table ``table`` (handle, use count, comment), or None if it does not exist."""
    for ev in _request(MSG_GETTABLE, NFPROTO[family], _nla_str(1, table)):
        if isinstance(ev, Event) and ev.msg == MSG_NEWTABLE:
            return ev
        if ev == errno.EPERM:
            raise EnvironmentProblem("changing or listing nftables needs root (CAP_NET_ADMIN): run nftdocker as root")
    return None


def _dump(msg: int, family: int, attrs: bytes = b"", limit: int = 1 << 30) -> list[Event]:
    """A netlink dump (NLM_F_DUMP) of ``msg``: every object, across as many messages as it takes."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    out: list[Event] = []
    try:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        s.bind((0, 0))
        hdr = struct.pack("=IHHII", 20 + len(attrs), SUBSYS | msg, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        s.send(hdr + struct.pack("=BBH", family, 0, 0) + attrs)
        buf = bytearray(1 << 20)
        got = 0
        while got < limit:  # bounded by the bytes read
            r, _, _ = select.select([s], [], [], 2.0)
            if not r:
                raise KernelError("the kernel did not finish a netlink dump within 2 s")
            n = s.recv_into(buf)
            got += n
            for ev in _parse(buf, n, done=True):
                if ev is None:
                    return out
                if isinstance(ev, int):
                    if ev == errno.EPERM:
                        raise EnvironmentProblem("listing nftables needs root (CAP_NET_ADMIN): run nftdocker as root")
                    if ev:
                        raise KernelError(f"netlink dump refused: {os.strerror(ev)}")
                    continue
                out.append(ev)
        raise KernelError("a netlink dump did not end")
    finally:
        s.close()


def chain_names(family: str, table: str) -> list[str]:
    """The chains of ``table`` in the kernel's (creation) order."""
    return [e.chain for e in _dump(MSG_GETCHAIN, NFPROTO[family]) if e.msg == MSG_NEWCHAIN and e.table == table]
