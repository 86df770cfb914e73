"""Files that must survive a crash: atomic replacement and setting aside.

The router's book and a dispatcher's persisted values are both written here,
so that a crash at any instant leaves either the old file or the new one,
and a file that cannot be read is kept for a person to look at, never
silently discarded.
"""
from __future__ import annotations

import os
import tempfile
import time


def write_atomically(path: str, data: bytes, *, dir_mode: int = 0o777) -> None:
    """Replace ``path`` with ``data``: temporary file in the same directory,
    fsync, rename over the old file, fsync the directory so the rename itself
    is durable."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:          # not every platform can open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def set_aside(path: str) -> str:
    """Move an unreadable file to ``<file>.corrupt-<timestamp>[-n]``; returns the new
    name.  Raises OSError when it cannot be moved (the caller says so)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target, n = f"{path}.corrupt-{stamp}", 1
    while os.path.lexists(target):
        target, n = f"{path}.corrupt-{stamp}-{n}", n + 1
    os.replace(path, target)
    return target
