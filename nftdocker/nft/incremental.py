"""Incremental apply: send the kernel only the difference between its table and the generated one.

:func:`plan` compares the kernel's table (read with rule handles) with the generated rulesets and
returns one transaction that edits the table in place: rules deleted by handle, new rules put at
the head (``insert``) or tail (``add``) of their chain, chains added or removed, base-chain
policies changed. Rules are compared as canonical IR (the kernel's JSON goes through
:func:`nftdocker.compat.parse_expr`, both sides are rendered with :func:`render.rule_text`).
``filter-DOCKER-USER`` is never diffed: it is only created (with its ``return``) when absent, and
gets a ``return`` appended when it has none, exactly as a full replace does; the rules of a
``--user-rules`` file (:mod:`user_rules`, told by their comment) lead it, and are deleted and
inserted again, all of them, when they are not exactly the file's, in its order, at its head.
:func:`plan` returns None, meaning "do a full replace", when asked (``replace``), when no family's table exists yet,
when the edit is larger than the table, or when a chain would have to be created before chains
that exist (``nft list table`` lists chains in creation order, and the result must list exactly as
a fresh full apply does).

Why no ``add rule ... position H``: libnftables 1.0.6 fetches the whole rule cache for any rule
command that names a position or index (4 s for a 26,000-rule table, more than loading the table
afresh), and ``--echo`` fetches a full cache too. So a block of new rules that lands between two
kept rules is made contiguous with the head or tail of its chain instead: the longest run of kept
rules with no new rule inside it stays, and the rules on the shorter side are deleted and re-added.
Docker's own operations (``-A``/``-I``/``-D``) only ever touch the ends of a chain, so adding or
removing a container or network costs a handful of commands.

Handles of the rules a transaction adds are learnt from the kernel's own notifications: a
netlink socket on the nftables multicast group is open while the transaction commits, and the
``NEWRULE`` messages (in batch order) up to the ``NEWGEN`` message carrying our thread id are ours.
That costs in proportion to the change, and the generation id tells whether anything committed
since: :func:`apply` stores the table's view (rule keys and handles) in
``/run/nftdocker/state/``, and the next :func:`apply` uses it without listing the table when the
namespace, the table's handle and the ruleset generation are unchanged.

:func:`apply_scenario` (``nftdocker apply``) also stores a generation checkpoint beside the view
(:mod:`resume`): when the next scenario only appends containers to the host, it replays just their
Docker calls on that checkpoint and sends them, instead of generating the whole host and diffing.

:class:`IncrementalApplier` is the long-running path (``watch``, benchmarks): it keeps the model
(an indexed :class:`generate.Firewall`) and the kernel's handles in memory, so adding a container
replays only that container's Docker calls and sends them, with no listing and no re-parse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Iterable, Literal

from nftdocker.nft import kernel
from nftdocker.docker import checkpoint as resume
from nftdocker.host import user_rules as urules
from nftdocker.host.accept_mark import apply as accept_marks
from nftdocker.compat.translate import parse_expr
from nftdocker.errors import ApplyError, CompatError, EnvironmentProblem, KernelError, NftdockerError, UsageError
from nftdocker.docker.generate import Firewall, Generated
from nftdocker.docker.iptables import Iptables
from nftdocker.nft.ir import BUILTIN_CHAINS, Chain, Rule, Ruleset
from nftdocker.model import Container, Scenario
from nftdocker.nft.render import DEFAULT_TABLE, chain_header, nft_chains, rule_text

USER_CHAIN = kernel.USER_CHAIN
STATE_DIR = kernel.LOCK_DIR / "state"
FAMILIES = ("ip", "ip6")

# ---------------------------------------------------------------------- generation with an index


class IndexedIptables(Iptables):
    """:class:`generate.Iptables` that can record what Docker does.

    With ``log`` set to a list, every change is recorded as ``(op, table, chain, rule)``
    (``op``: add, insert, delete, chain, policy), in the order Docker makes it.
    """

    def __init__(self, family: Literal["ip", "ip6"]) -> None:
        super().__init__(family)
        self.log: list[tuple[str, str, str, Rule | None]] | None = None

    def chain(self, table: str, name: str) -> Chain:
        if self.log is not None and (table, name) not in self.rs.chains:
            self.log.append(("chain", table, name, None))
        return super().chain(table, name)

    def append(self, table: str, chain: str, r: Rule) -> None:
        if self.log is not None and not self.has(table, chain, r):
            self.log.append(("add", table, chain, r))
        super().append(table, chain, r)

    def insert(self, table: str, chain: str, r: Rule) -> None:
        if self.log is not None and not self.has(table, chain, r):
            self.log.append(("insert", table, chain, r))
        super().insert(table, chain, r)

    def delete(self, table: str, chain: str, r: Rule) -> None:
        if self.log is not None and self.has(table, chain, r):
            self.log.append(("delete", table, chain, r))
        super().delete(table, chain, r)

    def set_policy(self, table: str, chain: str, policy: Literal["ACCEPT", "DROP"]) -> None:
        if self.log is not None and self.rs.chains.get((table, chain), Chain(table, chain)).policy != policy:
            self.log.append(("policy", table, chain, None))
        super().set_policy(table, chain, policy)


class IndexedFirewall(Firewall):
    """:class:`generate.Firewall` over :class:`IndexedIptables`, kept to replay later containers on
    (:meth:`Firewall.add_containers` runs them exactly as ``run()`` would have run them last)."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.ipt = {4: IndexedIptables("ip"), 6: IndexedIptables("ip6")}  # type: ignore[dict-item]


def generate_fast(scenario: Scenario) -> Generated:
    """:func:`generate.generate`, through :class:`IndexedFirewall` (the same result)."""
    return IndexedFirewall(scenario).run()


# ---------------------------------------------------------------------- netlink (nftables group)

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
        """(generation id, events) of the commit made by thread ``tid``; None if it cannot be told."""
        self._commits = []
        deadline = time.monotonic() + timeout
        while True:
            for i, c in enumerate(self._commits):
                gen = c[-1]
                if gen.pid == tid:
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


def anchors(views: dict[str, KTable | None], table: str) -> list[list[Any]] | None:
    """What binds a stored view to the kernel: for every chain with rules, its first and last rule's
    handle and the digest of what the kernel holds there. None when a handle is not known."""
    out: list[list[Any]] = []
    for fam, kt in views.items():
        if kt is None:
            continue
        for name, kc in kt.chains.items():
            for h in {kc.handles[0], kc.handles[-1]} if kc.handles else ():
                if h is None:
                    return None
                out.append([fam, name, h, rule_digest(fam, table, name, h)])
    return sorted(out)


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


def table_handle(family: str, table: str) -> int | None:
    """The kernel's handle of ``table`` (unique until reboot), or None if it does not exist."""
    info = table_info(family, table)
    return info.handle if info is not None else None


def check_owned(family: str, table: str) -> Event | None:
    """The table (as :func:`table_info`), or None if it is not there. Raises UsageError for a table
    nftdocker did not create (no :data:`kernel.TABLE_MARK` comment): nftdocker neither changes nor removes it."""
    info = table_info(family, table)
    if info is None:
        return None
    if info.comment != kernel.TABLE_MARK:
        raise UsageError(
            f"table {family} {table} exists and was not created by nftdocker (its comment is not {kernel.TABLE_MARK!r}): "
            f"nftdocker neither replaces nor removes it; choose another --table (if it is an older nftdocker's "
            f"table, delete it once with: nft delete table {family} {table})")
    return info


def netns_id() -> list[int]:
    st = os.stat("/proc/self/ns/net")
    return [st.st_dev, st.st_ino]


# ---------------------------------------------------------------------- the kernel's table, as keys and handles


@dataclass
class KChain:
    """One chain as the kernel holds it: header, and per rule its key (canonical nft text) and handle."""

    name: str
    base: tuple[str, str, int] | None = None  # type, hook, priority
    policy: str | None = None  # accept / drop (base chains)
    keys: list[str] = field(default_factory=list)
    handles: list[int | None] = field(default_factory=list)


@dataclass
class KTable:
    family: str
    handle: int | None
    chains: dict[str, KChain] = field(default_factory=dict)  # in the kernel's (creation) order
    #: sets, maps and stateful objects in the table (all the user's: nftdocker makes none)
    user_objects: int = 0

    def rule_count(self) -> int:
        return sum(len(c.keys) for c in self.chains.values())

    def to_json(self) -> dict[str, Any]:
        return {"handle": self.handle, "user_objects": self.user_objects,
                "chains": [[c.name, list(c.base) if c.base else None, c.policy, c.keys, c.handles] for c in self.chains.values()]}

    @classmethod
    def from_json(cls, family: str, d: dict[str, Any]) -> KTable:
        t = cls(family, d.get("handle"), user_objects=d.get("user_objects", 0) if _is_int(d.get("user_objects", 0)) else 0)
        for name, base, policy, keys, handles in d["chains"]:
            t.chains[name] = KChain(name, tuple(base) if base else None, policy, list(keys), list(handles))  # type: ignore[arg-type]
        return t


# (a ``mangle`` is parsed: nftdocker's own accepts set the packet mark with --accept-mark)
_FOREIGN_STMTS = ("counter", "comment", "log", "limit", "meta", "quota", "xt", "notrack", "queue")


def _key_of(body: dict[str, Any], family: str, stub: Ruleset) -> str:
    """The canonical text of a listed rule, or a key no generated rule has (for anything else)."""
    handle = body.get("handle")
    foreign = f"\0foreign rule {handle}"
    chain = str(body.get("chain", ""))
    if chain == USER_CHAIN and isinstance(body.get("comment"), str):
        tagged = urules.key_of_comment(body["comment"])  # one of the --user-rules file's rules
        if tagged is not None:
            return tagged
    ipt_table, _, name = chain.partition("-")
    if ipt_table not in BUILTIN_CHAINS or not name or "comment" in body:
        return foreign
    exprs = body.get("expr", [])
    for e in exprs:
        if isinstance(e, dict) and (set(e) & set(_FOREIGN_STMTS) - {"meta"} or
                                    ("match" in e and "nfproto" in json.dumps(e["match"].get("left", "")))):
            return foreign
    try:
        matches, action = parse_expr(exprs, ipt_table, chain)
        return rule_text(Rule(tuple(matches), action), stub, ipt_table)
    except (CompatError, KeyError, ValueError, TypeError, AttributeError):
        return foreign


def read_table(nft: kernel.Nft, family: str, table: str) -> KTable | None:
    """``nft -j -a list table FAMILY TABLE`` as a :class:`KTable`; None if the table does not exist."""
    ctx = nft.ctx
    ctx.set_json_output(True)
    ctx.set_handle_output(True)
    try:
        rc, out, err = ctx.cmd(f"list table {family} {table}")
    finally:
        ctx.set_json_output(False)
        ctx.set_handle_output(False)
    if rc != 0:
        kernel._raise_environment(err)
        if "No such file or directory" in err:
            return None
        raise KernelError(f"cannot list table {family} {table}: {kernel._kernel_message(err)}")
    objs = json.loads(out).get("nftables", []) if out.strip() else []
    kt = KTable(family, None)
    stub = Ruleset(family)  # type: ignore[arg-type]
    for o in objs:
        if "table" in o:
            kt.handle = o["table"].get("handle")
        elif not {"chain", "rule", "metainfo"} & set(o):
            kt.user_objects += 1
        elif "chain" in o:
            c = o["chain"]
            base = (c["type"], c["hook"], int(c["prio"])) if "hook" in c else None
            kt.chains[c["name"]] = KChain(c["name"], base, c.get("policy") if base else None)
        elif "rule" in o:
            r = o["rule"]
            kc = kt.chains.get(r.get("chain"))
            if kc is None:
                continue
            kc.keys.append(_key_of(r, family, stub))
            kc.handles.append(r.get("handle"))
    return kt


# ---------------------------------------------------------------------- the generated table, as keys


@dataclass
class WChain:
    name: str
    chain: Chain
    header: str | None
    base: tuple[str, str, int] | None
    policy: str | None
    keys: list[str]


def wanted(rs: Ruleset) -> dict[str, WChain]:
    """The generated chains in ``nft_chains`` order, with their rules' keys."""
    out: dict[str, WChain] = {}
    for c in nft_chains(rs):
        base = policy = None
        if c.builtin:
            base = c.base
            policy = "drop" if c.policy == "DROP" else "accept"
        out[c.nft_name] = WChain(c.nft_name, c, chain_header(c), base, policy, [rule_text(r, rs, c.table) for r in c.rules])
    return out


# ---------------------------------------------------------------------- the edit


class Replace(Exception):
    """The edit is not worth it (or not possible in place): do a full replace."""


@dataclass
class ChainEdit:
    deletes: list[int]
    head: list[str]  # final order
    tail: list[str]
    handles: list[int | None]  # the chain's handles afterwards (None: added by this edit)


def chain_edit(keys: list[str], handles: list[int | None], new: list[str]) -> ChainEdit | None:
    """Delete/insert/append that turn ``keys`` into ``new`` without positional adds; None if equal.

    Matching blocks come from difflib (no autojunk); the longest run of kept rules with no new
    rule inside it stays where it is, new rules before it are inserted at the head, those after
    it appended, and every other old rule deleted.
    """
    if keys == new:
        return None
    n_old, n_new = len(keys), len(new)
    pre = 0
    while pre < n_old and pre < n_new and keys[pre] == new[pre]:
        pre += 1
    suf = 0
    while suf < n_old - pre and suf < n_new - pre and keys[n_old - 1 - suf] == new[n_new - 1 - suf]:
        suf += 1
    pairs: list[tuple[int, int]] = [(i, i) for i in range(pre)]
    mid_old, mid_new = keys[pre:n_old - suf], new[pre:n_new - suf]
    if mid_old and mid_new:
        sm = SequenceMatcher(None, mid_old, mid_new, autojunk=False)
        for i, j, n in sm.get_matching_blocks():
            pairs.extend((pre + i + t, pre + j + t) for t in range(n))
    pairs.extend((n_old - suf + t, n_new - suf + t) for t in range(suf))
    best: tuple[int, int] = (0, 0)  # [start, end) into pairs
    start = 0
    for p in range(1, len(pairs) + 1):
        if p == len(pairs) or pairs[p][1] != pairs[p - 1][1] + 1:
            if p - start > best[1] - best[0]:
                best = (start, p)
            start = p
    run = pairs[best[0]:best[1]]
    kept = {i for i, _ in run}
    deletes = [h for i, h in enumerate(handles) if i not in kept and h is not None]
    if any(h is None for i, h in enumerate(handles) if i not in kept):
        raise Replace("a rule without a known handle would have to be deleted")
    if run:
        j0, j1 = run[0][1], run[-1][1] + 1
        head, tail = new[:j0], new[j1:]
        after = [None] * j0 + [handles[i] for i, _ in run] + [None] * (n_new - j1)
    else:
        head, tail = [], list(new)
        after = [None] * n_new
    return ChainEdit(deletes, head, tail, after)


@dataclass
class IncrementalTransaction(kernel.Transaction):
    """A :class:`kernel.Transaction` that edits the table in place, and what the kernel will hold after it."""

    after: dict[str, KTable | None] = field(default_factory=dict)
    #: per add/insert command, in order: (family, chain, index in the chain afterwards)
    slots: list[tuple[str, str, int]] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    mode: str = "incremental"
    #: time spent in libnftables and the kernel (the ``cmd`` call), once committed
    kernel_seconds: float = 0.0
    #: the families whose table the transaction deletes
    dropped: list[str] = field(default_factory=list)
    #: the number of commands, for a transaction in block form (:func:`full`)
    n_commands: int | None = None
    #: the same transaction one command per line (block form only), to name an offending command
    flat: Any = None
    #: families whose table a full replace edits in place (the user's objects are kept there)
    in_place: list[str] = field(default_factory=list)
    #: per family replaced in place, the user's rules kept in filter-DOCKER-USER
    kept: dict[str, int] = field(default_factory=dict)

    def commands(self) -> int:
        return self.n_commands if self.n_commands is not None else super().commands()

    def extend(self, part: kernel.Transaction) -> None:
        super().extend(part)
        if self.n_commands is not None:
            self.n_commands += part.commands()


def diff(views: dict[str, KTable | None], gen: Generated, table: str,
         user_rules: urules.UserRules | None = None) -> IncrementalTransaction:
    """The in-place edit from ``views`` (the kernel's tables, by family) to ``gen``; raises Replace.

    ``user_rules``: the ``--user-rules`` file's rules lead ``filter-DOCKER-USER``; without it, the
    rules an earlier file put there are deleted. The user's own rules there are kept as they are."""
    tx = IncrementalTransaction()
    fams = gen.families()
    if not any(views.get(f) is not None for f in FAMILIES):
        raise Replace("no table loaded yet")
    total_rules = sum(v.rule_count() for v in views.values() if v is not None)
    edits = 0
    deletes: list[str] = []
    adds: list[tuple[str, str, str, int, str]] = []  # (verb, family, chain, index, key)
    chain_adds: list[str] = []
    chain_dels: list[str] = []
    table_dels: list[str] = []
    for fam in FAMILIES:
        kt = views.get(fam)
        if fam not in fams:
            if kt is not None:
                if kt.user_objects or any(not is_own_chain(n) for n in kt.chains) or \
                        any(k != "return" for k in kt.chains.get(USER_CHAIN, KChain(USER_CHAIN)).keys):
                    raise Replace(f"{fam}: the table is no longer needed, but holds the user's objects")
                table_dels.append(f"delete table {fam} {table}")
                tx.dropped.append(fam)
                edits += 1
                tx.removed += kt.rule_count()
            tx.after[fam] = None
            continue
        rs = gen.rulesets[fam]
        want = wanted(rs)
        def new_chain(w: WChain, after: KTable) -> int:
            """Create chain ``w`` whole; returns the edits it costs."""
            chain_adds.append(f"add chain {fam} {table} {w.name}" + (f" {{ {w.header} }}" if w.header else ""))
            after.chains[w.name] = KChain(w.name, w.base, w.policy, list(w.keys), [None] * len(w.keys))
            for i, k in enumerate(w.keys):
                adds.append(("add", fam, w.name, i, k))
            tx.added += len(w.keys)
            return 1 + len(w.keys)

        if kt is None:  # this family's table is new: create it whole
            after = KTable(fam, None)
            chain_adds.append(f"add table {fam} {table} {{ {kernel.TABLE_COMMENT} }}")
            for w in want.values():
                edits += new_chain(w, after)
            tx.after[fam] = after
            continue
        # chains: kept ones must be a prefix of the wanted order (nft lists chains in creation order)
        # (filter-DOCKER-USER aside: a replace in place keeps it, and the user's chains, where they were)
        kept_names = [n for n in kt.chains if n in want and n != USER_CHAIN]
        if kept_names != [n for n in want if n != USER_CHAIN][:len(kept_names)]:
            raise Replace(f"{fam}: a chain would be created before existing ones")
        after = KTable(fam, kt.handle, user_objects=kt.user_objects)
        for n, kc in kt.chains.items():
            if not is_own_chain(n):  # the user's chain: kept as it is
                after.chains[n] = KChain(n, kc.base, kc.policy, list(kc.keys), list(kc.handles))
            elif n not in want:
                chain_dels.append(f"flush chain {fam} {table} {n}")
                chain_dels.append(f"delete chain {fam} {table} {n}")
                edits += 1
                tx.removed += len(kc.keys)
        for w in want.values():
            kc = kt.chains.get(w.name)
            if kc is None:
                edits += new_chain(w, after)
                continue
            if kc.base != w.base:
                raise Replace(f"{fam} {w.name}: the kernel's chain has other hook settings")
            if kc.policy != w.policy:
                chain_adds.append(f"add chain {fam} {table} {w.name} {{ {w.header} }}")
                edits += 1
            if w.name == USER_CHAIN:  # the user's chain: the file's rules first, and a return
                keys, handles = list(kc.keys), list(kc.handles)
                file_rules = urules.rules_of(user_rules, fam)
                if not _file_rules_in_place(keys, file_rules):
                    stale = [h for k, h in zip(keys, handles) if urules.is_key(k)]
                    if None in stale:
                        raise Replace("a --user-rules rule without a known handle would have to be deleted")
                    deletes.extend(f"delete rule {fam} {table} {w.name} handle {h}" for h in stale)
                    kept_k = [(k, h) for k, h in zip(keys, handles) if not urules.is_key(k)]
                    for i in range(len(file_rules) - 1, -1, -1):
                        adds.append(("insert", fam, w.name, i, file_rules[i].command_text))
                    keys = [r.key for r in file_rules] + [k for k, _ in kept_k]
                    handles = [None] * len(file_rules) + [h for _, h in kept_k]
                    edits += len(stale) + len(file_rules)
                    tx.added += len(file_rules)
                    tx.removed += len(stale)
                if "return" not in keys:
                    adds.append(("add", fam, w.name, len(keys), "return"))
                    keys.append("return")
                    handles.append(None)
                    edits += 1
                    tx.added += 1
                after.chains[w.name] = KChain(w.name, w.base, w.policy, keys, handles)
                continue
            ed = chain_edit(kc.keys, kc.handles, w.keys)
            if ed is None:
                after.chains[w.name] = KChain(w.name, w.base, w.policy, list(kc.keys), list(kc.handles))
                continue
            deletes.extend(f"delete rule {fam} {table} {w.name} handle {h}" for h in ed.deletes)
            for i in range(len(ed.head) - 1, -1, -1):
                adds.append(("insert", fam, w.name, i, ed.head[i]))
            base_i = len(w.keys) - len(ed.tail)
            for i, k in enumerate(ed.tail):
                adds.append(("add", fam, w.name, base_i + i, k))
            n = len(ed.deletes) + len(ed.head) + len(ed.tail)
            edits += n
            tx.added += len(ed.head) + len(ed.tail)
            tx.removed += len(ed.deletes)
            after.chains[w.name] = KChain(w.name, w.base, w.policy, list(w.keys), ed.handles)
        tx.after[fam] = after
    if edits > total_rules:
        raise Replace(f"the edit ({edits} commands) is larger than the table ({total_rules} rules)")
    for line in chain_adds:
        tx.add(line)
    for line in deletes:
        tx.add(line)
    for verb, fam, chain, idx, key in adds:
        tx.add(f"{verb} rule {fam} {table} {chain} {key}", f"{chain}: {'head' if verb == 'insert' else 'tail'}")
        tx.slots.append((fam, chain, idx))
    for line in chain_dels + table_dels:
        tx.add(line)
    if not tx.lines:
        tx.mode = "noop"
    return tx


# ---------------------------------------------------------------------- views: stored, listed, learnt


def _state_path(table: str) -> Path:
    dev, ino = netns_id()
    return STATE_DIR / f"{dev}-{ino}-{table}.json"


STATE_LIMIT = 256 << 20  # bytes: a stored state larger than this is not read


def _ignored(path: Path, why: str) -> None:
    """One line on stderr: the stored state is not used (the table is listed instead)."""
    print(f"nftdocker: ignoring the stored state {path}: {why}; listing the table instead", file=sys.stderr)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _views_of(d: Any) -> dict[str, KTable | None]:
    """The views in a stored state document, checked for shape and type; raises ValueError."""
    if not isinstance(d, dict) or not isinstance(d.get("tables"), dict):
        raise ValueError("no 'tables'")
    views: dict[str, KTable | None] = {}
    for fam in FAMILIES:
        t = d["tables"].get(fam)
        if t is None:
            views[fam] = None
            continue
        if not isinstance(t, dict) or not (t.get("handle") is None or _is_int(t["handle"])) or not isinstance(t.get("chains"), list):
            raise ValueError(f"tables.{fam} is not a table")
        for c in t["chains"]:
            ok = (isinstance(c, list) and len(c) == 5 and isinstance(c[0], str)
                  and (c[1] is None or (isinstance(c[1], list) and len(c[1]) == 3 and isinstance(c[1][0], str)
                                        and isinstance(c[1][1], str) and _is_int(c[1][2])))
                  and (c[2] is None or c[2] in ("accept", "drop"))
                  and isinstance(c[3], list) and all(isinstance(k, str) for k in c[3])
                  and isinstance(c[4], list) and len(c[4]) == len(c[3]) and all(h is None or _is_int(h) for h in c[4]))
            if not ok:
                raise ValueError(f"tables.{fam}: a chain is damaged")
        views[fam] = KTable.from_json(fam, t)
    return views


def _stored_state(table: str) -> tuple[dict[str, KTable | None], int, dict[str, Any] | None] | None:
    """The views saved after our last commit here, if nothing has committed since; with its genid
    and checkpoint. The state is checked for shape, and bound to the kernel: the table's handle,
    the ruleset generation, and the first and last rule of every chain (handle and a digest of the
    kernel's expressions, one GETRULE each: :func:`anchors`) must be what the state says. Anything else is ignored (one line on stderr when the file is damaged or forged)."""
    path = _state_path(table)
    try:
        with open(path, "rb") as f:
            raw = f.read(STATE_LIMIT + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        _ignored(path, e.strerror or str(e))
        return None
    if len(raw) > STATE_LIMIT:
        _ignored(path, f"larger than {STATE_LIMIT >> 20} MiB")
        return None
    try:
        d = json.loads(raw)
        views = _views_of(d)
    except (ValueError, UnicodeDecodeError) as e:
        _ignored(path, f"damaged ({e})")
        return None
    genid = d.get("genid")
    if d.get("version") != 1 or d.get("netns") != netns_id() or not _is_int(genid) or genid != ruleset_genid():
        return None  # written before another commit: stale, not damaged
    for fam in FAMILIES:
        kt = views[fam]
        if table_handle(fam, table) != (kt.handle if kt is not None else None):
            return None

    stored = d.get("anchors")
    if stored is None or stored != anchors(views, table):
        _ignored(path, f"its view of table {table} is not the kernel's (the first and last rule of each chain differ)")
        return None
    cp = d.get("checkpoint")
    return views, genid, (cp if isinstance(cp, dict) else None)


def _prune_state() -> None:
    """Drop stored views of namespaces that are gone (named ones, the host's and the current one are kept)."""
    alive = {tuple(netns_id())}
    for p in [Path("/proc/1/ns/net"), *kernel.NETNS_DIR.glob("*")] if kernel.NETNS_DIR.is_dir() else [Path("/proc/1/ns/net")]:
        with _suppress():
            st = p.stat()
            alive.add((st.st_dev, st.st_ino))
    with _suppress():
        for f in STATE_DIR.glob("*.json"):
            dev, _, rest = f.name.partition("-")
            ino = rest.partition("-")[0]
            if dev.isdigit() and ino.isdigit() and (int(dev), int(ino)) not in alive:
                f.unlink()


def forget(netns_name: str | None = None, table: str = DEFAULT_TABLE) -> None:
    """Remove the view stored for ``table`` in that namespace (call it before deleting the namespace)."""
    with kernel.netns(netns_name), _suppress():
        _state_path(table).unlink()


def _store_views(table: str, views: dict[str, KTable | None] | None, genid: int | None,
                 checkpoint: dict[str, Any] | None = None) -> None:
    """Save the table's view after our commit ``genid`` (and the generation checkpoint, see :mod:`resume`)."""
    _prune_state()
    path = _state_path(table)
    if views is None or genid is None or any(v is not None and v.handle is None for v in views.values()):
        with _suppress():
            path.unlink()
        return
    with _suppress():
        STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        doc: dict[str, Any] = {"version": 1, "netns": netns_id(), "genid": genid,
                               "tables": {f: (v.to_json() if v is not None else None) for f, v in views.items()},
                               "anchors": anchors(views, table)}
        if checkpoint is not None:
            doc["checkpoint"] = checkpoint
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, e: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, OSError)


def kernel_views(nft: kernel.Nft, table: str, use_state: bool = True) -> tuple[dict[str, KTable | None], str]:
    """Both families' tables as the kernel holds them, and where that came from (state or listing)."""
    if use_state:
        stored = _stored_state(table)
        if stored is not None:
            return stored[0], "state"
    views: dict[str, KTable | None] = {}
    for fam in FAMILIES:
        views[fam] = read_table(nft, fam, table) if check_owned(fam, table) else None
    return views, "listing"


def plan(nft: kernel.Nft, gen: Generated, table: str = DEFAULT_TABLE, replace: bool = False) -> kernel.Transaction | None:
    """The in-place transaction from the loaded table to ``gen``; None: do a full replace.

    Call it inside the namespace, under :func:`kernel.lock`. The transaction may be empty
    (``commands() == 0``: nothing to change). For the stored view to be kept up to date (and the
    next plan to need no listing), commit it with :func:`commit`.
    """
    if replace:
        return None
    views, _ = kernel_views(nft, table)
    try:
        return diff(views, gen, table)
    except Replace:
        return None


def _new_handles(events: list[Event], table: str, expected: list[tuple[str, str]]) -> list[int] | None:
    """The handles of the rules our commit added, from its NEWRULE messages (in batch order);
    None unless they are exactly the ``(family, chain)`` adds ``expected``."""
    new = [e for e in events if e.msg == MSG_NEWRULE and e.table == table]
    if len(new) != len(expected) or any(e.family != f or e.chain != c for e, (f, c) in zip(new, expected)):
        return None
    return [e.handle for e in new]


def _learn(tx: IncrementalTransaction, events: list[Event], table: str) -> dict[str, KTable | None] | None:
    """Fill in the handles of the rules ``tx`` added, from the kernel's NEWRULE messages."""
    after = tx.after
    handles = _new_handles(events, table, [(fam, chain) for fam, chain, _ in tx.slots])
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


def is_own_chain(name: str) -> bool:
    """Is ``name`` one of nftdocker's chains (an iptables built-in or ``DOCKER*`` chain, as
    ``<table>-<chain>``)? Every other chain in its tables is the user's and is kept."""
    ipt_table, _, rest = name.partition("-")
    return ipt_table in BUILTIN_CHAINS and (rest in BUILTIN_CHAINS[ipt_table] or rest == "DOCKER" or rest.startswith("DOCKER-"))


@dataclass
class Kept:
    """What the user keeps in one of our tables (see :func:`user_content`)."""

    own: list[str]  # our chains now in the table, in the kernel's order
    user_rules: int  # rules in filter-DOCKER-USER other than a bare return (and the file's)
    has_return: bool  # filter-DOCKER-USER holds a bare return
    #: handles of the --user-rules file's rules in filter-DOCKER-USER (told by their comment)
    tagged: list[int] = field(default_factory=list)


def user_content(nft: kernel.Nft, family: str, table: str, info: Event) -> Kept | None:
    """What the user keeps in our table, or None when there is nothing of the user's: no rule but
    ``return`` in ``filter-DOCKER-USER``, no chain, set, map or stateful object of the user's."""
    chains = chain_names(family, table)
    own = [c for c in chains if is_own_chain(c)]
    users, has_return, tagged = 0, False, []
    if USER_CHAIN in own:
        nft.ctx.set_handle_output(True)
        try:
            listed = nft.list_json(f"list chain {family} {table} {USER_CHAIN}")
        finally:
            nft.ctx.set_handle_output(False)
        for o in listed:
            if "rule" in o:
                comment = o["rule"].get("comment")
                if o["rule"].get("expr") == [{"return": None}]:
                    has_return = True
                elif isinstance(comment, str) and urules.key_of_comment(comment) is not None:
                    tagged.append(o["rule"].get("handle"))
                else:
                    users += 1
    if users == 0 and len(own) == len(chains) and (info.use or 0) <= len(chains):
        return None
    return Kept(own, users, has_return, tagged)


def full(nft: kernel.Nft, gen: Generated, table: str, user_rules: urules.UserRules | None = None) -> IncrementalTransaction:
    """The full replace, with the view it leaves.

    A table that holds nothing of the user's is replaced whole: ``add table`` + ``delete table``,
    then the table in nft's block form (``table ... { chain ... { ... } }``; libnftables parses it
    faster than one command per line, and it adds the same objects in the same order). Created
    anew, the kernel numbers its chains and then its rules 1, 2, ... in that order: the view's
    handles are known in advance. ``tx.flat()`` gives the one-command-per-line form, to find an
    offending rule.

    A table that holds the user's rules in ``filter-DOCKER-USER``, or chains, sets or other
    objects of the user's, is replaced in place (:func:`in_place`): nothing of the user's is
    deleted, so nothing of theirs is read back or parsed again.

    ``user_rules``: the ``--user-rules`` file's rules, first in ``filter-DOCKER-USER`` (in place:
    the file's rules there before are deleted, the file's inserted at the head).
    """
    tx = IncrementalTransaction(mode="full")
    fams = gen.families()
    parts: list[Any] = []  # per family, what gives its commands one per line
    count = 0
    for fam in FAMILIES:
        info = check_owned(fam, table)
        kept = user_content(nft, fam, table, info) if info is not None else None
        if kept is not None:
            part = in_place(gen.rulesets[fam] if fam in fams else None, fam, table, kept, urules.rules_of(user_rules, fam))
            tx.extend(part)
            parts.append(lambda part=part: part)
            tx.in_place.append(fam)
            tx.kept[fam] = kept.user_rules
            tx.after[fam] = None
            tx.added += sum(1 for l in part.lines if l.startswith("add rule"))
            continue
        if fam not in fams:
            if info is not None:
                tx.add(f"delete table {fam} {table}")
                tx.dropped.append(fam)
                parts.append(lambda fam=fam: kernel.Transaction([f"delete table {fam} {table}"]))
                count += 1
            tx.after[fam] = None
            continue
        exists = info is not None
        file_rules = urules.rules_of(user_rules, fam)
        parts.append(lambda fam=fam, exists=exists, file_rules=file_rules: kernel.full_transaction(
            gen.rulesets[fam], table, exists, [(r.command_text, f"--user-rules {r.where}") for r in file_rules]))
        if exists:
            tx.add(f"add table {fam} {table}")
            tx.add(f"delete table {fam} {table}")
            count += 2
        want = wanted(gen.rulesets[fam])
        kt = KTable(fam, None)
        tx.add(f"table {fam} {table} {{")
        tx.add(f"\t{kernel.TABLE_COMMENT}")
        handle = len(want)
        count += 1 + len(want)
        for w in want.values():
            tx.add(f"\tchain {w.name} {{")
            if w.header:
                tx.add(f"\t\t{w.header}")
            keys = list(w.keys)
            if w.name == USER_CHAIN and file_rules:
                tx.lines.extend([f"\t\t{r.command_text}" for r in file_rules])
                keys = [r.key for r in file_rules] + keys
            tx.lines.extend([f"\t\t{k}" for k in w.keys])
            tx.add("\t}")
            kt.chains[w.name] = KChain(w.name, w.base, w.policy, keys, list(range(handle + 1, handle + 1 + len(keys))))
            handle += len(keys)
            count += len(keys)
        tx.add("}")
        tx.after[fam] = kt
        tx.added += kt.rule_count()
    tx.n_commands = count

    def flat() -> kernel.Transaction:
        ft = kernel.Transaction()
        for part in parts:
            ft.extend(part())
        return ft

    tx.flat = flat
    return tx


def in_place(rs: Ruleset | None, fam: str, table: str, kept: Kept,
             file_rules: list[urules.UserRule] | None = None) -> kernel.Transaction:
    """Our chains of ``fam``'s table replaced in place, one command per line: the user's objects
    and ``filter-DOCKER-USER`` stay as they are (it gets a ``return`` only if it has none); with
    ``rs`` None our chains are removed. The kernel's new handles are not known in advance, so the
    table is listed again next time. ``file_rules`` (``--user-rules``) replace the file's rules
    that ``filter-DOCKER-USER`` held, at its head."""
    tx = kernel.Transaction()
    redo = [c for c in kept.own if c != USER_CHAIN]
    for c in redo:
        tx.add(f"flush chain {fam} {table} {c}")
    for c in redo:
        tx.add(f"delete chain {fam} {table} {c}")
    if rs is None:
        return tx
    keep_user = USER_CHAIN in kept.own
    file_rules = file_rules or []

    def user_chain(t: kernel.Transaction, c: Chain) -> None:
        if keep_user:  # the user's rules stay; the file's are replaced at its head
            for h in kept.tagged:
                t.add(f"delete rule {fam} {table} {USER_CHAIN} handle {h}")
            for r in reversed(file_rules):
                t.add(f"insert rule {fam} {table} {USER_CHAIN} {r.command_text}", f"--user-rules {r.where}")
            if not kept.has_return:
                t.add(f"add rule {fam} {table} {USER_CHAIN} return", "setupUserChain")
            return
        for r in file_rules:
            t.add(f"add rule {fam} {table} {USER_CHAIN} {r.command_text}", f"--user-rules {r.where}")
        for r in c.rules:
            t.add(f"add rule {fam} {table} {USER_CHAIN} {rule_text(r, rs, c.table)}", r.origin or USER_CHAIN)

    tx.extend(kernel.chain_commands(rs, table, user_chain, create_user_chain=not keep_user))
    return tx


def commit(nft: kernel.Nft, tx: kernel.Transaction, table: str = DEFAULT_TABLE, check: bool = False,
           monitor: Monitor | None = None, store: bool = True,
           checkpoint: dict[str, Any] | None = None) -> tuple[dict[str, KTable | None] | None, int | None]:
    """Run ``tx`` (one libnftables call); learn what the kernel holds afterwards.

    Returns (views, generation id). The generation id is that of our own commit, or None when
    another commit may have come between. Views are None when they cannot be told (check mode,
    a plain :class:`kernel.Transaction`, lost notifications). With ``store``, views known to be
    exact are saved for the next :func:`plan` in this namespace (any later commit, by anyone,
    makes them stale). Raises ApplyError, naming the offending command, if the kernel refuses.

    A full transaction's handles are known in advance (:func:`full`); the generation is read
    before and after. An in-place one's come from the kernel's notifications (``monitor``, or one
    opened here for the call).
    """
    views, genid = _commit(nft, tx, table, check, monitor)
    if store and not check and tx.lines:
        _store_views(table, views, genid, checkpoint)
    return views, genid


def _commit(nft: kernel.Nft, tx: kernel.Transaction, table: str, check: bool,
            monitor: Monitor | None) -> tuple[dict[str, KTable | None] | None, int | None]:
    if not isinstance(tx, IncrementalTransaction) or check:
        _run(nft, tx, check)
        return None, None
    if not tx.lines:
        return dict(tx.after), None
    if tx.mode == "full":
        g0 = ruleset_genid()
        _run(nft, tx)
        if tx.in_place:  # the kernel's handles of what was replaced in place are not known
            g1 = ruleset_genid()
            return None, (g1 if g0 is not None and g1 == (g0 + 1) & 0xFFFFFFFF else None)
        after = dict(tx.after)
        for fam, kt in after.items():
            if kt is not None:
                kt.handle = table_handle(fam, table)
        g1 = ruleset_genid()
        return after, (g1 if g0 is not None and g1 == (g0 + 1) & 0xFFFFFFFF else None)
    own = monitor is None
    mon = Monitor() if own else monitor
    assert mon is not None
    try:
        mon.drain()
        _run(nft, tx)
        got = mon.own_commit(threading.get_native_id())
        if got is None:
            return None, None
        genid, events = got
        return _learn(tx, events, table), genid
    finally:
        if own:
            mon.close()


def _run(nft: kernel.Nft, tx: kernel.Transaction, check: bool = False) -> None:
    t0 = time.perf_counter()
    rc, _, err = nft.run(tx.text, check=check)
    if isinstance(tx, IncrementalTransaction):
        tx.kernel_seconds = time.perf_counter() - t0
    if rc != 0:
        kernel._raise_environment(err)
        where = tx.flat() if isinstance(tx, IncrementalTransaction) and tx.flat is not None else tx
        raise ApplyError(f"the kernel refused the transaction, nothing changed: {kernel._offending(nft, where, err)}")


# ---------------------------------------------------------------------- apply (process to process)


@dataclass
class Result:
    """What :func:`apply` did; ``commands`` counts the transaction's commands."""

    families: list[str]
    removed: list[str]
    commands: int
    mode: str  # full | incremental | noop
    view: str  # where the kernel's table was read from: state | listing | none
    added_rules: int
    removed_rules: int
    checked: bool
    kept_user_rules: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    #: full: the whole host generated; resumed: only appended containers replayed (:mod:`resume`)
    generation: str = "full"
    #: containers replayed on the checkpoint (generation "resumed")
    replayed: int = 0
    #: what ``sysctls=True`` set (:func:`kernel.apply_sysctls`)
    sysctls: list[str] | None = None


def apply(gen: Generated, netns_name: str | None = None, table: str = DEFAULT_TABLE, check: bool = False,
          replace: bool = False, extra: dict[str, kernel.Transaction] | None = None, store: bool = True,
          user_rules: urules.UserRules | None = None) -> Result:
    """Load ``gen``, sending only the difference when the table is loaded (``replace``: always the
    whole table). ``store``: keep the table's view for the next apply here (see :func:`commit`).
    ``user_rules``: the ``--user-rules`` file's rules, first in ``filter-DOCKER-USER``."""
    kernel.check_table_name(table)
    with kernel.lock(netns_name), kernel.netns(netns_name):
        return _apply_in(kernel.Nft(), gen, table, check, replace, extra, store=store, user_rules=user_rules)


def apply_scenario(sc: Scenario, netns_name: str | None = None, table: str = DEFAULT_TABLE, check: bool = False,
                   replace: bool = False, sysctls: bool = False, accept_mark: tuple[int, int] | None = None,
                   user_rules: urules.UserRules | None = None) -> Result:
    """Generate ``sc`` and :func:`apply` it; when it only appends containers to the host the last
    apply here loaded, replay just those on the stored checkpoint instead of generating the host.

    ``sysctls``: also set what Docker sets beside its rules (not with ``check``). ``accept_mark``:
    (VALUE, MASK) of :mod:`accept_mark`; the host is then always generated whole (the checkpoint's
    replay knows Docker's rules, not the marked ones) and no checkpoint is stored. ``user_rules``:
    the ``--user-rules`` file's rules (the host is resumed only when the table holds them already,
    as the file has them; else it is generated and diffed).
    """
    kernel.check_table_name(table)
    with kernel.lock(netns_name), kernel.netns(netns_name):
        nft = kernel.Nft()
        known: tuple[dict[str, KTable | None], str] | None = None
        res: Result | None = None
        extras: Any = None
        if not replace and not check:
            st = _stored_state(table)
            if st is not None and accept_mark is not None:
                st = (st[0], st[1], None)
            if st is None:
                known = kernel_views(nft, table, use_state=False)
            else:
                views, genid, cp = st
                known = (views, "state")
                if cp is not None and _user_rules_loaded(views, user_rules):
                    got = _resume(nft, sc, views, genid, cp, table)
                    if got is not None:
                        res, extras = got
        if res is None:
            fw = Firewall(sc)
            gen = accept_marks(fw.run(), accept_mark)
            res = _apply_in(nft, gen, table, check, replace, None, known=known,
                            checkpoint=resume.checkpoint(fw) if accept_mark is None else None, user_rules=user_rules)
            extras = gen
    if sysctls and not check:
        res.sysctls = kernel.apply_sysctls(extras, netns_name)
    return res


def _resume(nft: kernel.Nft, sc: Scenario, views: dict[str, KTable | None], genid: int,
            cp: dict[str, Any], table: str) -> tuple[Result, Generated] | None:
    """Replay the containers ``sc`` appends to the checkpoint's host and send their calls; None: not possible."""
    tables = {f: ({n: kc.keys for n, kc in kt.chains.items()} if kt is not None else None) for f, kt in views.items()}
    try:
        n_new = resume.appended(cp, sc)
        if n_new is None:
            return None
        fw = resume.ResumedFirewall(sc, cp, tables)
        fw.add_containers(sc, sc.containers[len(sc.containers) - n_new:])
    except resume.Damaged as e:
        _ignored(_state_path(table), f"{e}")
        return None
    except (resume.Unsupported, NftdockerError):
        return None  # the whole host is generated instead (and says what is wrong, if anything is)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        _ignored(_state_path(table), f"unreadable checkpoint: {type(e).__name__}: {e}")
        return None
    got = ops_transaction(views, fw.logs(), table)
    if got is None:
        return None
    tx, steps = got
    if tx.lines:
        with Monitor() as mon:
            mon.drain()
            after, new_genid = commit_steps(nft, mon, tx, steps, views, table)
        if new_genid != (genid + 1) & 0xFFFFFFFF:
            after = None  # another commit came between reading the state and ours: list the table next time
    else:
        after, new_genid = views, genid
    _store_views(table, after, new_genid, resume.checkpoint(fw))
    fams = [f for f in FAMILIES if views.get(f) is not None]
    mode = "incremental" if tx.lines else "noop"
    return (Result(fams, [], tx.commands(), mode, "state", tx.added, tx.removed, False, _kept_user_rules(views, fams),
                   generation="resumed", replayed=n_new), fw.generated())


def _file_rules_in_place(keys: list[str], file_rules: list[urules.UserRule]) -> bool:
    """Does ``filter-DOCKER-USER`` (its keys) begin with exactly ``file_rules``, and hold no other
    rule of a ``--user-rules`` file?"""
    n = len(file_rules)
    return keys[:n] == [r.key for r in file_rules] and not any(urules.is_key(k) for k in keys[n:])


def _user_rules_loaded(views: dict[str, KTable | None], user_rules: urules.UserRules | None) -> bool:
    """Do the views' ``filter-DOCKER-USER`` chains hold the file's rules as :func:`diff` leaves them?"""
    return all(_file_rules_in_place(kt.chains[USER_CHAIN].keys, urules.rules_of(user_rules, f))
               for f, kt in views.items() if kt is not None and USER_CHAIN in kt.chains)


def _kept_user_rules(views: dict[str, KTable | None], fams: list[str]) -> dict[str, int]:
    """Per family, the user's own rules in ``filter-DOCKER-USER`` (all but its ``return``)."""
    return {f: len([k for k in kt.chains[USER_CHAIN].keys if k != "return" and not urules.is_key(k)])
            for f in fams if (kt := views.get(f)) is not None and USER_CHAIN in kt.chains}


def user_families(gen: Generated) -> list[str]:
    """The families whose generated table has ``filter-DOCKER-USER`` (where ``--user-rules`` go)."""
    return [f for f in gen.families() if any(c.nft_name == USER_CHAIN for c in nft_chains(gen.rulesets[f]))]


def _apply_in(nft: kernel.Nft, gen: Generated, table: str, check: bool, replace: bool,
              extra: dict[str, kernel.Transaction] | None, checkpoint: dict[str, Any] | None = None,
              known: tuple[dict[str, KTable | None], str] | None = None, store: bool = True,
              user_rules: urules.UserRules | None = None) -> Result:
    """:func:`apply` inside the namespace, under the lock; ``known``: the views already read."""
    urules.check(nft, table, user_rules, user_families(gen))
    views: dict[str, KTable | None] | None = None
    source, reason = "none", ""
    tx: IncrementalTransaction | None = None
    if replace:
        reason = "--replace"
    else:
        views, source = known if known is not None else kernel_views(nft, table)
        try:
            tx = diff(views, gen, table, user_rules)
        except Replace as e:
            reason = str(e)
    if tx is None:
        tx = full(nft, gen, table, user_rules)
    if extra:
        extras = [extra[f] for f in gen.families() if f in extra]
        for part in extras:
            tx.extend(part)
        if tx.flat is not None:
            block_flat = tx.flat

            def flat_with_extra() -> kernel.Transaction:
                ft = block_flat()
                for part in extras:
                    ft.extend(part)
                return ft

            tx.flat = flat_with_extra
    commit(nft, tx, table, check, store=store and not extra, checkpoint=checkpoint)  # with extra commands the view is not known
    return Result(gen.families(), list(tx.dropped), tx.commands(), tx.mode, source, tx.added, tx.removed, check,
                  {**_kept_user_rules(tx.after, gen.families()), **tx.kept}, reason)


# ---------------------------------------------------------------------- the long-running path


@dataclass
class Stats:
    """One change made by :class:`IncrementalApplier`."""

    mode: str  # fast (only the new containers' Docker calls) | diff | full | noop
    commands: int
    added: int
    removed: int
    seconds: float
    resynced: bool = False
    #: of ``seconds``, the time in libnftables and the kernel (parsing the commands, committing)
    kernel_seconds: float = 0.0


class IncrementalApplier:
    """Keeps the model and the kernel's rule handles in memory; each change sends only its difference.

    ``load(scenario)`` once (it reads the table, or the stored view, once), then
    ``add_container`` / ``remove_container`` / ``update(scenario)`` per change, or
    ``apply(generated, old)`` (the :class:`watch.Applier` interface). Adding containers at the end
    of the scenario replays only their Docker calls on the kept model: no generation of the host,
    no listing, no diff of the host; the handles of the new rules come from the kernel's
    notifications. Changes made to the table by anyone else are noticed (the notifications of
    their commits) and the table is read again before the next change.
    """

    def __init__(self, netns: str | None = None, table: str = DEFAULT_TABLE,
                 user_rules: urules.UserRules | None = None) -> None:
        self.netns = netns
        self.table = kernel.check_table_name(table)
        self.user_rules = user_rules  # --user-rules: the file's rules lead filter-DOCKER-USER
        self._checked: list[str] | None = None  # the families the file's rules were checked for
        self.gen: Generated | None = None
        self.fw: IndexedFirewall | None = None
        self.views: dict[str, KTable | None] | None = None
        self.last: Stats | None = None
        self._nft: kernel.Nft | None = None
        self._mon: Monitor | None = None

    # -------------------------------------------------------------- public

    @property
    def scenario(self) -> Scenario | None:
        return self.gen.scenario if self.gen is not None else None

    def close(self) -> None:
        if self._mon is not None:
            self._mon.close()
            self._mon = None
        self._nft = None

    def __enter__(self) -> IncrementalApplier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def load(self, scenario: Scenario, replace: bool = False) -> Stats:
        """Take ``scenario`` as the model and bring the kernel's table to it."""
        fw = IndexedFirewall(scenario)
        gen = fw.run()
        st = self._send(gen, full_replace=replace)
        self.fw = fw
        return st

    def update(self, scenario: Scenario) -> Stats:
        """Bring the table to ``scenario``; containers appended at its end take the fast path."""
        if self.gen is None or self.fw is None or not _only_appended(self.gen.scenario, scenario):
            return self.load(scenario)
        return self._fast(scenario)

    def add_container(self, ctr: Container) -> Stats:
        sc = self._need_scenario()
        return self.update(dataclasses.replace(sc, containers=sc.containers + (ctr,)))

    def remove_container(self, name: str) -> Stats:
        sc = self._need_scenario()
        return self.update(dataclasses.replace(sc, containers=tuple(c for c in sc.containers if c.name != name)))

    def apply(self, new: Generated, old: Generated | None = None) -> Stats:
        """:class:`watch.Applier`: load ``new`` (a Generated); ``old`` is what the caller loaded before."""
        if new is not self.gen:
            self.fw = None  # the caller generated this one: no model to replay on
        return self._send(new)

    # -------------------------------------------------------------- internals

    def _need_scenario(self) -> Scenario:
        if self.gen is None:
            raise NftdockerError("IncrementalApplier: load() a scenario first")
        return self.gen.scenario

    def _enter(self) -> tuple[kernel.Nft, Monitor]:
        """Inside the namespace: the libnftables context and the monitor, made once."""
        if self._nft is None or self._mon is None:
            self._nft = kernel.Nft()
            self._mon = Monitor()
            self.views = None
        return self._nft, self._mon

    def _stale(self, mon: Monitor) -> bool:
        """Did anyone else change our table since our last commit?"""
        mon.drain()
        stale = mon.lost or any(e.table == self.table and e.msg != MSG_NEWGEN for e in mon.foreign)
        mon.foreign.clear()
        mon.lost = False
        return stale

    def _send(self, gen: Generated, full_replace: bool = False) -> Stats:
        t0 = time.perf_counter()
        with kernel.lock(self.netns), kernel.netns(self.netns):
            nft, mon = self._enter()
            fams = user_families(gen)
            if self.user_rules is not None and self._checked != fams:
                urules.check(nft, self.table, self.user_rules, fams)
                self._checked = fams
            resynced = False
            if self._stale(mon) or self.views is None:
                self.views, _ = kernel_views(nft, self.table)
                resynced = True
            tx: IncrementalTransaction | None = None
            if not full_replace:
                try:
                    tx = diff(self.views, gen, self.table, self.user_rules)
                except Replace:
                    tx = None
            if tx is None:
                tx = full(nft, gen, self.table, self.user_rules)
            self._commit(nft, mon, tx)
        self.gen = gen
        mode = {"incremental": "diff"}.get(tx.mode, tx.mode)
        self.last = Stats(mode, tx.commands(), tx.added, tx.removed, time.perf_counter() - t0, resynced, tx.kernel_seconds)
        return self.last

    def _commit(self, nft: kernel.Nft, mon: Monitor, tx: IncrementalTransaction) -> None:
        if tx.mode == "full":
            # A full replace would flood the monitor with a notification per rule: close it for the
            # commit, and reopen it after; the generation tells whether anything came in between.
            mon.close()
            self._mon = None
            try:
                after, genid = commit(nft, tx, self.table, store=False)
            except Exception:
                self.views = None
                raise
            finally:
                self._mon = Monitor()
            self.views = after if genid is not None and ruleset_genid() == genid else None
            return
        try:
            after, _genid = commit(nft, tx, self.table, monitor=mon, store=False)
        except Exception:
            self.views = None
            raise
        self.views = after  # None: read the table again before the next change

    def _fast(self, scenario: Scenario) -> Stats:
        """Replay the appended containers' Docker calls on the kept model and send just those."""
        assert self.gen is not None
        old_sc = self.gen.scenario
        return self.replay(lambda fw: fw.add_containers(scenario, scenario.containers[len(old_sc.containers):]))

    def replay(self, operation: Any) -> Stats:
        """Run ``operation(firewall)`` (Docker's operations: run, stop, connect, ...) on the kept
        model, and send the kernel exactly the rules it added and deleted, in one transaction."""
        t0 = time.perf_counter()
        if self.gen is None or self.fw is None:
            raise NftdockerError("IncrementalApplier: load() a scenario first")
        fw = self.fw
        logs: dict[str, list] = {"ip": [], "ip6": []}
        fw.ipt[4].log, fw.ipt[6].log = logs["ip"], logs["ip6"]  # type: ignore[attr-defined]
        try:
            operation(fw)
        except Exception:
            self.fw = None  # half-replayed: the next change starts from scratch
            self.gen = None
            raise
        finally:
            fw.ipt[4].log = fw.ipt[6].log = None  # type: ignore[attr-defined]
        gen = self.gen = fw.generated()
        simple = all(op in ("add", "insert", "delete") for ops in logs.values() for op, *_ in ops)
        try:
            with kernel.lock(self.netns), kernel.netns(self.netns):
                nft, mon = self._enter()
                resynced = False
                if self._stale(mon) or self.views is None:
                    self.views, _ = kernel_views(nft, self.table, use_state=False)
                    resynced = True
                fast = self._ops_transaction(gen, logs) if simple and not resynced else None
                if fast is None:  # a new chain or policy, or the table was read again: diff the whole host
                    try:
                        tx = diff(self.views, gen, self.table, self.user_rules)
                    except Replace:
                        tx = full(nft, gen, self.table, self.user_rules)
                    self._commit(nft, mon, tx)
                    mode = "diff" if tx.mode == "incremental" else tx.mode
                else:
                    tx, steps = fast
                    mode = "fast" if tx.lines else "noop"
                    self._commit_steps(nft, mon, tx, steps)
        except Exception:
            self.fw = None
            self.gen = None
            self.views = None
            raise
        self.last = Stats(mode, tx.commands(), tx.added, tx.removed, time.perf_counter() - t0, resynced, tx.kernel_seconds)
        return self.last

    def _ops_transaction(self, gen: Generated, logs: dict[str, list]) -> tuple[IncrementalTransaction, list] | None:
        """The recorded Docker calls (with rules) as a transaction on the kept view; see :func:`ops_transaction`."""
        assert self.views is not None
        keyed = {fam: [(op, t, c, rule_text(r, gen.rulesets[fam], t)) for op, t, c, r in ops] for fam, ops in logs.items()}
        return ops_transaction(self.views, keyed, self.table)

    def _commit_steps(self, nft: kernel.Nft, mon: Monitor, tx: IncrementalTransaction, steps: list) -> None:
        """Send ``tx``; keep the view it leaves (None: read the table again before the next change)."""
        self.views, _ = commit_steps(nft, mon, tx, steps, self.views, self.table)


def ops_transaction(views: dict[str, KTable | None], logs: dict[str, list[tuple[str, str, str, str]]],
                    table: str) -> tuple[IncrementalTransaction, list] | None:
    """Docker's recorded calls, ``(op, iptables table, chain, rule key)`` per family, as nft commands.

    Returns the transaction and the steps to replay on the view afterwards (:func:`commit_steps`);
    None if the view lacks a chain the calls touch (or they touch the user's chain). A rule added
    and deleted again within the change is left out of both.
    """
    tx = IncrementalTransaction()
    steps: list[list[Any]] = []  # [op, family, chain, key, handle or None]
    for fam in FAMILIES:
        ops = logs.get(fam, [])
        if not ops:
            continue
        kt = views.get(fam)
        if kt is None:
            return None
        added: dict[tuple[str, str], list[list[Any]]] = {}
        gone: set[int] = set()  # handles deleted by earlier steps of this change
        for op, ipt_table, chain_name, key in ops:
            name = f"{ipt_table}-{chain_name}"
            kc = kt.chains.get(name)
            if name == USER_CHAIN or kc is None or op not in ("add", "insert", "delete"):
                return None
            if op == "delete":
                mine = added.get((name, key))
                if mine:
                    mine.pop()[0] = "skip"
                    continue
                h, i = None, -1
                while h is None:
                    try:
                        i = kc.keys.index(key, i + 1)
                    except ValueError:
                        break
                    if kc.handles[i] not in gone:
                        h = kc.handles[i]
                if h is None:
                    return None
                gone.add(h)
                steps.append(["delete", fam, name, key, h])
            else:
                step = [op, fam, name, key, None]
                added.setdefault((name, key), []).append(step)
                steps.append(step)
    for op, fam, name, key, h in steps:
        if op == "delete":
            tx.add(f"delete rule {fam} {table} {name} handle {h}")
            tx.removed += 1
        elif op != "skip":
            tx.add(f"{op} rule {fam} {table} {name} {key}", name)
            tx.added += 1
    return tx, steps


def commit_steps(nft: kernel.Nft, mon: Monitor, tx: IncrementalTransaction, steps: list,
                 views: dict[str, KTable | None] | None, table: str) -> tuple[dict[str, KTable | None] | None, int | None]:
    """Send ``tx`` (from :func:`ops_transaction`); replay ``steps`` on ``views`` (in place) with the kernel's handles.

    Returns (views, generation id of our commit); views are None when the notifications did not
    tell every new rule's handle (then the table must be read again).
    """
    if not tx.lines:
        return views, None
    _run(nft, tx)
    got = mon.own_commit(threading.get_native_id())
    adds = [s for s in steps if s[0] in ("add", "insert")]
    handles = _new_handles(got[1], table, [(s[1], s[2]) for s in adds]) if got else None
    if views is None or got is None or handles is None:
        return None, None
    for h, s in zip(handles, adds):
        s[4] = h
    for op, fam, name, key, h in steps:
        kc = views[fam].chains[name]  # type: ignore[union-attr]
        if op == "add":
            kc.keys.append(key)
            kc.handles.append(h)
        elif op == "insert":
            kc.keys.insert(0, key)
            kc.handles.insert(0, h)
        elif op == "delete":
            i = kc.handles.index(h)
            del kc.keys[i]
            del kc.handles[i]
    return views, got[0]


def _only_appended(old: Scenario, new: Scenario) -> bool:
    """``new`` is ``old`` with containers added at the end (nothing else changed)?"""
    if new is old:
        return True
    n = len(old.containers)
    if len(new.containers) < n:
        return False
    same = lambda a, b: a is b or a == b  # noqa: E731
    return (same(old.daemon, new.daemon) and same(old.host, new.host) and same(old.networks, new.networks)
            and new.containers[:n] == old.containers)
