"""Blocking until a condition on keywords holds, re-tested on every change."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, List, Optional

from ..errors import TimeoutError
from .task import _fmt_s

if TYPE_CHECKING:
    from .keyword import Keyword


def _wait_until(keywords: List["Keyword"], holds: Callable[[], bool], limit: Optional[float],
                what: str, raise_on_timeout: bool, fresh: bool = True) -> bool:
    """Block until ``holds()`` is true, re-testing it on every change of ``keywords``.

    The one loop every wait of the client runs, woken the one way keywords
    wake waiters (an Event each keyword sets on every change, liveness
    change and shutdown).  With ``fresh`` the keywords are read first unless
    monitoring keeps them fresh (a read the dispatcher does not answer
    raises: that is no timeout), and kept fresh while waiting (re-read after
    any loss of broadcasts); ``wait()`` for the next update passes False.
    ``limit`` None waits as long as it takes, as KTL does.  Driven by
    updates, never by polling.
    """
    deadline = None if limit is None else time.monotonic() + limit
    changed = threading.Event()
    for kw in keywords:
        if fresh:
            kw._watch(+1)
        kw._add_listener(changed)
    try:
        if fresh:
            _prime([kw for kw in keywords if not kw._monitored or not kw.populated_value])
        while True:
            changed.clear()
            for kw in keywords:
                kw._check_open()
            if holds():
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return _timed_out(keywords, what, limit, raise_on_timeout)
            changed.wait(remaining)
    finally:
        for kw in keywords:
            kw._remove_listener(changed)
            if fresh:
                kw._watch(-1)


def _prime(keywords: List["Keyword"]) -> None:
    """Read, in parallel and with each service's timeout, the keywords named."""
    tasks = [kw.read(wait=False) for kw in keywords]
    for task in tasks:
        task.get()


def _timed_out(keywords: List["Keyword"], what: str, limit: Optional[float],
               raise_on_timeout: bool) -> bool:
    """False (KTL's answer to an expired timeout), unless it was no mere timeout.

    A keyword whose dispatcher is silent when the time is up means the wait
    could not be decided: that raises TimeoutError whatever
    ``raise_on_timeout`` says, so a script never takes the "timed out" branch
    for a dispatcher that is gone.
    """
    seen = ", ".join(f"{kw.full_name}={kw.ascii!r}" for kw in keywords)
    silent = [kw.full_name for kw in keywords if not kw.connected]
    if silent:
        raise TimeoutError(f"{what}: not decided within {_fmt_s(limit)}: the dispatcher of "
                           f"{', '.join(silent)} is silent (no heartbeat within liveness); "
                           f"last values seen: {seen}")
    if raise_on_timeout:
        raise TimeoutError(f"{what}: not satisfied within {_fmt_s(limit)}; "
                           f"last values seen: {seen}")
    return False
