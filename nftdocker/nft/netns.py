"""Network namespaces: enter one by its ``ip netns`` name, tell one's identity, and lock it.

:func:`netns` runs a block inside a named namespace (``setns`` on this thread) and comes back;
:func:`netns_identity` gives the (device, inode) that names a namespace however it was entered;
:func:`lock` serialises nftdocker's changes per namespace (an flock on a file named for that
identity, removed when the change is done).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from nftdocker.errors import EnvironmentProblem, UsageError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
LOCK_DIR = Path("/run/nftdocker")

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


def netns_id() -> list[int]:
    """(device, inode) of this thread's namespace (``/proc/thread-self``, as :func:`netns` and
    :func:`lock` use: the thread may have entered another), as the stored state names it."""
    st = os.stat("/proc/thread-self/ns/net")
    return [st.st_dev, st.st_ino]
