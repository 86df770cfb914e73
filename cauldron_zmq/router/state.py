"""The router's state file: the book saved atomically, read back, set aside when corrupt.

:func:`save_state` writes so that a crash leaves the old file or the new
one, :func:`read_state` parses it and :func:`quarantine` moves a corrupt
file aside for a human to look at.  :class:`StateFile` is what the serving
loop holds: it loads the book at start, saves it when it changed (before
the reply that acknowledges the change), and after a failure retries on a
back-off rather than once per request.
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict, Optional

from .. import protocol
from ..config import Config
from ..files import set_aside, write_atomically
from ..protocol.book import Book
from ..protocol.retry import Retry
from .logs import log

__all__ = ["save_state", "read_state", "quarantine", "StateFile"]


def save_state(path: str, data: Dict[str, Any]) -> None:
    """Write ``data`` as JSON so that a crash leaves the old file or the new one."""
    write_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def read_state(path: str) -> Optional[Any]:
    """The parsed JSON of a state file, or None if there is none.

    Raises OSError (unreadable) or ValueError (not UTF-8 JSON).
    """
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except (FileNotFoundError, NotADirectoryError):
        return None             # nothing saved yet (saving will say what is wrong)
    return protocol.loads(raw)


def quarantine(path: str, reason: str) -> Optional[str]:
    """Move a bad state file to ``<file>.corrupt-<timestamp>`` and say so loudly.

    Returns the new name, or None if it could not be moved (also logged).
    """
    try:
        target = set_aside(path)
    except OSError as exc:
        log.error("state file %s is unusable (%s) and cannot be moved aside: %s; "
                  "starting with an empty book", path, reason, exc)
        return None
    log.error("state file %s is unusable (%s); moved it to %s and started with an empty book",
              path, reason, target)
    return target

class StateFile:
    """The state file of one router (``path`` None: nothing is saved)."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self.saved_revision = -1
        self.retry = Retry(f"saving the router's book to {path}")

    @property
    def failing(self) -> bool:
        """A save failed and is due again on the back-off schedule (see :meth:`save`)."""
        return self.retry.failing

    def load(self, config: Config) -> Book:
        """The book saved in the file (an empty one without a file, or a corrupt one)."""
        router = config.router
        make: Dict[str, Any] = dict(first_port=router.first_port, last_port=router.last_port,
                                    expiry=router.expiry, protocol=config.zmq.protocol, log=log)
        path = self.path
        self.saved_revision = 0
        if not path:
            return Book(**make)
        try:
            data = read_state(path)
            if data is None:
                log.info("state file %s does not exist yet; starting with an empty book", path)
                return Book(**make)
            book = Book.from_data(data, now=time.time(), **make)
        except (OSError, ValueError) as exc:
            quarantine(path, f"{type(exc).__name__}: {exc}")
            return Book(**make)
        log.info("loaded %d entries from %s", len(book), path)
        return book

    def save(self, book: Optional[Book], final: bool = False) -> None:
        """Write the file when the book changed (always on the way out,
        to keep the heartbeat times that are otherwise saved lazily).

        After a failure, requests no longer try: the serving loop retries
        while :attr:`failing`, on the :attr:`retry` schedule, and the log gets
        one line per interval.
        """
        path = self.path
        if not path or book is None or (book.revision == self.saved_revision and not final):
            return
        now = time.monotonic()
        if not final and not self.retry.due(now):
            return
        try:
            save_state(path, book.to_data(time.time()))
        except OSError as exc:
            line = self.retry.failed(now, str(exc))
            if line:
                log.error("%s", line)
            elif final:
                log.error("cannot save the router's book to %s before stopping: %s", path, exc)
            return
        line = self.retry.succeeded(now)
        if line:
            log.warning("%s", line)
        self.saved_revision = book.revision
