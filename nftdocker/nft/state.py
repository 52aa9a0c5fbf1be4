"""The stored state: the table's view saved after our own commit, and its binding to the kernel.

After each commit whose result it knows exactly, the engine saves the table's view (chains, rule
keys and handles) in ``/run/nftdocker/state/<netns dev>-<ino>-<table>.json``, with the ruleset
generation of that commit and the apply's generation checkpoint (:mod:`nftdocker.docker.checkpoint`).
The next apply in that namespace uses it instead of listing the table while it is still true:
the namespace, the table's handle and the ruleset generation are unchanged, and the first and last
rule of each chain (handle and a digest of the kernel's expressions: :func:`anchors`) are what the
state says. A damaged or forged state (bad shape or types, anchors that differ) is ignored with
one line on stderr; a stale one (another commit since) silently.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from nftdocker.nft.backend import Backend
from nftdocker.nft.netns import LOCK_DIR, NETNS_DIR, netns, netns_id
from nftdocker.nft.render import DEFAULT_TABLE
from nftdocker.nft.ir import FAMILIES
from nftdocker.nft.view import KTable, is_int as _is_int

STATE_DIR = LOCK_DIR / "state"


def _table_handle(be: Backend, family: str, table: str) -> int | None:
    info = be.table_info(family, table)
    return info.handle if info is not None else None


def anchors(be: Backend, views: dict[str, KTable | None], table: str) -> list[list[Any]] | None:
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
                out.append([fam, name, h, be.rule_digest(fam, table, name, h)])
    return sorted(out)


def state_path(be: Backend, table: str) -> Path:
    dev, ino = be.netns_id()
    return STATE_DIR / f"{dev}-{ino}-{table}.json"


STATE_LIMIT = 256 << 20  # bytes: a stored state larger than this is not read


def ignored(path: Path, why: str) -> None:
    """The stored state is not used (the table is listed instead): one warning on the ``nftdocker``
    logger, which the command line prints as one line on stderr."""
    logging.getLogger("nftdocker").warning("ignoring the stored state %s: %s; listing the table instead", path, why)


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


def stored_state(be: Backend, table: str) -> tuple[dict[str, KTable | None], int, dict[str, Any] | None] | None:
    """The views saved after our last commit here, if nothing has committed since; with its genid
    and checkpoint. The state is checked for shape, and bound to the kernel: the table's handle,
    the ruleset generation, and the first and last rule of every chain (handle and a digest of the
    kernel's expressions, one GETRULE each: :func:`anchors`) must be what the state says. Anything else is ignored (one warning, a line on stderr from the command line, when the file is damaged or forged)."""
    path = state_path(be, table)
    try:
        with open(path, "rb") as f:
            raw = f.read(STATE_LIMIT + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        ignored(path, e.strerror or str(e))
        return None
    if len(raw) > STATE_LIMIT:
        ignored(path, f"larger than {STATE_LIMIT >> 20} MiB")
        return None
    try:
        d = json.loads(raw)
        views = _views_of(d)
    except (ValueError, UnicodeDecodeError) as e:
        ignored(path, f"damaged ({e})")
        return None
    genid = d.get("genid")
    if d.get("version") != 1 or d.get("netns") != be.netns_id() or not _is_int(genid) or genid != be.genid():
        return None  # written before another commit: stale, not damaged
    for fam in FAMILIES:
        kt = views[fam]
        if _table_handle(be, fam, table) != (kt.handle if kt is not None else None):
            return None

    stored = d.get("anchors")
    if stored is None or stored != anchors(be, views, table):
        ignored(path, f"its view of table {table} is not the kernel's (the first and last rule of each chain differ)")
        return None
    cp = d.get("checkpoint")
    return views, genid, (cp if isinstance(cp, dict) else None)


def _prune_state(be: Backend) -> None:
    """Drop stored views of namespaces that are gone (named ones, the host's and the current one are kept)."""
    alive = {tuple(be.netns_id())}
    for p in [Path("/proc/1/ns/net"), *NETNS_DIR.glob("*")] if NETNS_DIR.is_dir() else [Path("/proc/1/ns/net")]:
        with _suppress():
            st = p.stat()
            alive.add((st.st_dev, st.st_ino))
    with _suppress():
        for f in STATE_DIR.glob("*.json"):
            dev, _, rest = f.name.partition("-")
            ino = rest.partition("-")[0]
            if dev.isdigit() and ino.isdigit() and (int(dev), int(ino)) not in alive:
                f.unlink()


def drop_state(be: Backend, table: str) -> None:
    """Remove the view stored for ``table`` in the backend's namespace."""
    with _suppress():
        state_path(be, table).unlink()


def forget(netns_name: str | None = None, table: str = DEFAULT_TABLE) -> None:
    """Remove the view stored for ``table`` in that namespace (call it before deleting the namespace)."""
    with netns(netns_name), _suppress():
        (STATE_DIR / f"{'-'.join(map(str, netns_id()))}-{table}.json").unlink()


def store_views(be: Backend, table: str, views: dict[str, KTable | None] | None, genid: int | None,
                 checkpoint: dict[str, Any] | None = None) -> None:
    """Save the table's view after our commit ``genid`` (and the apply's generation checkpoint: opaque here)."""
    _prune_state(be)
    path = state_path(be, table)
    if views is None or genid is None or any(v is not None and v.handle is None for v in views.values()):
        with _suppress():
            path.unlink()
        return
    with _suppress():
        STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        doc: dict[str, Any] = {"version": 1, "netns": be.netns_id(), "genid": genid,
                               "tables": {f: (v.to_json() if v is not None else None) for f, v in views.items()},
                               "anchors": anchors(be, views, table)}
        if checkpoint is not None:
            doc["checkpoint"] = checkpoint
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, e: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, OSError)
