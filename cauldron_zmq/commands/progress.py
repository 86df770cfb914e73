"""``modify`` on a terminal: show that a slow write is still in progress.

A five-second move used to look like a hung command.  While a write waits,
one status line on the terminal says how long it has waited and, when the
keyword's dispatcher names a progress keyword (``progress`` in its
description: keyword file key, DFW argument), that keyword's latest value.
Nothing is shown when the stream is not a terminal (scripts, pipes), and
the line is cleared before anything else is printed.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

__all__ = ["write_showing_progress", "status_line"]

_QUIET_FOR = 0.5        # s: fast writes show nothing at all
_REFRESH = 0.2          # s between two status lines


def status_line(name: str, elapsed: float, progress: Optional[str] = None,
                progress_value: Optional[str] = None) -> str:
    """'FOCUS: waiting 3.2 s (FOCUSPROG = 45 %)' — pure, so tested without a terminal."""
    line = f"{name}: waiting {elapsed:.1f} s"
    if progress:
        line += f" ({progress} = {progress_value if progress_value is not None else '?'})"
    return line


def write_showing_progress(svc: Any, kw: Any, value: Any, binary: bool = False,
                           stream: Optional[TextIO] = None) -> Any:
    """``kw.write(value)``, with a status line on ``stream`` (stderr) if it is a terminal."""
    stream = stream if stream is not None else sys.stderr
    task = kw.write(value, wait=False, binary=binary)
    if not _is_terminal(stream):
        return task.get()
    watched = _watch_progress(svc, kw)
    start = time.monotonic()
    shown = 0
    try:
        while not task.wait(_REFRESH):
            elapsed = time.monotonic() - start
            if elapsed < _QUIET_FOR:
                continue
            line = status_line(kw.name, elapsed, watched.name if watched else None,
                               watched["ascii"] if watched else None)
            stream.write("\r" + line.ljust(shown))
            stream.flush()
            shown = len(line)
    finally:
        if shown:
            stream.write("\r" + " " * shown + "\r")
            stream.flush()
        if watched is not None:
            watched.monitor(start=False)
    return task.get()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _watch_progress(svc: Any, kw: Any) -> Any:
    """The progress keyword, monitored (its priming read not waited for); None if none."""
    name = getattr(kw, "progress", None)
    if not name:
        return None
    try:
        watched = svc[name]
        watched.monitor(wait=False)
    except Exception:  # noqa: BLE001 - a missing progress keyword must not fail the write
        return None
    return watched
