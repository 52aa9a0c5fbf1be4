"""Read an input file (scenario, inspect dump, reference rules, daemon.json): the one reader.

Every file nftdocker reads from its user goes through ``read_bytes``: it must be a regular file
(a device, FIFO, socket or directory is refused before a byte is read, so ``/dev/zero`` cannot
keep it reading) of at most ``MAX_BYTES`` (64 MiB, far above any real host: a dump of 1000
containers is about 10 MiB). ``-`` is standard input where the caller allows it, with the same
limit. Every refusal is one ``ScenarioError`` naming the file (exit 2).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from nftdocker.errors import ScenarioError

MAX_BYTES = 64 * 1024 * 1024
STDIN = "-"
STDIN_NAME = "<stdin>"

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _too_large() -> str:
    return f"is larger than {MAX_BYTES // (1024 * 1024)} MiB, the limit for an input file"


def read_bytes(path: str | Path, *, stdin: bool = False) -> bytes:
    """The whole content of ``path`` (``-``: standard input, if ``stdin``); ScenarioError otherwise."""
    name = str(path)
    if stdin and name == STDIN:
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ScenarioError(STDIN_NAME, "", _too_large())
        return data
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for a regular file.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise ScenarioError(name, "", "no such file") from None
        if e.errno == errno.EISDIR:
            raise ScenarioError(name, "", "is a directory, not a regular file") from None
        raise ScenarioError(name, "", f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
            raise ScenarioError(name, "", f"is {kind}, not a regular file")
        if st.st_size > MAX_BYTES:
            raise ScenarioError(name, "", _too_large())
        chunks: list[bytes] = []
        left = MAX_BYTES + 1  # a file that grows while read is still cut at the limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise ScenarioError(name, "", f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_BYTES:
        raise ScenarioError(name, "", _too_large())
    return data
