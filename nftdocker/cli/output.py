"""Where the CLI's output goes: standard output, or ``-o FILE`` replaced whole and atomically."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
import tempfile

from nftdocker.errors import EnvironmentProblem, UsageError


def write_output(args: argparse.Namespace, text: str) -> None:
    """To ``-o FILE`` (see ``write_file``) or standard output."""
    out = getattr(args, "output", None)
    if out and out != "-":
        write_file(out, text)
    else:
        sys.stdout.write(text)


#: A failure of the host while writing (exit 3); any other failure to write -o FILE is the path's (exit 2).
_HOST_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def write_file(path: str, text: str) -> None:
    """Replace ``path`` whole and atomically with ``text``.

    The text goes to a uniquely named temporary file in the same directory, created exclusively
    (so nothing planted there, a symlink above all, is followed or overwritten), then renamed onto
    ``path``; a symlink at ``path`` to a regular file (or to nothing) is itself replaced, not
    followed. On any failure the temporary file is removed and ``path`` is left as it was. A
    directory or anything else that is not a regular file (a device, FIFO, socket: ``/dev/null``
    must not become a file), a missing directory or a permission refused is the path's fault
    (UsageError, exit 2); no space or an I/O error is the host's (EnvironmentProblem, exit 3).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # nothing there (or unreachable: the temporary file's creation says why)
    if mode is not None and stat.S_ISDIR(mode):
        raise UsageError(f"{path}: is a directory; -o takes a file name")
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(f"{path}: is not a regular file; -o replaces a regular file (give - for standard output)")
    directory = os.path.dirname(path) or "."
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(f.fileno(), 0o666 & ~mask)  # the mode a plain open(path, "w") would give
            f.write(text.encode("utf-8"))
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise UsageError(f"{path}: is a directory; -o takes a file name") from None
        if e.errno in _HOST_WRITE_ERRNOS:
            raise EnvironmentProblem(f"{path}: cannot write: {e.strerror}") from None
        raise UsageError(f"{path}: cannot write: {e.strerror}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
