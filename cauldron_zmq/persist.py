"""Persisted keyword values: survive a dispatcher restart.

Keywords created with ``persist=True`` have their last value saved to
``<persist-dir>/<service>.<dispatcher>.json`` whenever it changes, and
restored by ``Service.begin()`` (a restored value wins over ``initial``).

Saving happens on a thread of its own, never on the I/O thread or in the
caller of ``set()``: a change only records the value and wakes the writer,
which waits a moment to coalesce a burst of changes into one write.  Every
write is atomic (temporary file, fsync, rename, fsync of the directory), so
a crash leaves either the old file or the new one, never half of one.  A file
that cannot be parsed is logged and moved aside (``.corrupt-<time>``), and
the dispatcher starts with its initial values.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Dict, Optional

from .files import set_aside, write_atomically

__all__ = ["Persister", "persist_path", "FORMAT"]

FORMAT = 1
#: Seconds the writer waits after a change for more changes to coalesce.
COALESCE = 0.05


def persist_path(directory: Optional[str], service: str, dispatcher: str) -> str:
    """``<directory>/<service>.<dispatcher>.json`` (default directory from config)."""
    from .config import DEFAULT_PERSIST_DIR
    base = os.path.expanduser(directory or DEFAULT_PERSIST_DIR)
    safe = dispatcher.replace(os.sep, "_")
    return os.path.join(base, f"{service}.{safe}.json")


class Persister:
    """Load, and save in the background, the persisted values of one dispatcher."""

    def __init__(self, path: str, log: Optional[logging.Logger] = None) -> None:
        self.path = path
        self.log = log or logging.getLogger(__name__)
        self._values: Dict[str, Any] = {}
        self._dirty = False
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    # ----------------------------------------------------------------- load

    def load(self) -> Dict[str, Any]:
        """The saved ``{KEYWORD: wire value}``; {} when there is none or it is corrupt."""
        try:
            with open(self.path, "rb") as stream:
                data = json.loads(stream.read().decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self._set_aside(f"cannot be read: {exc}")
            return {}
        values = data.get("keywords") if isinstance(data, dict) else None
        if not isinstance(values, dict):
            self._set_aside("has no 'keywords' table")
            return {}
        loaded = {str(k).upper(): v.get("value") for k, v in values.items()
                  if isinstance(v, dict) and "value" in v}
        with self._cond:
            self._values.update(loaded)
        return loaded

    def _set_aside(self, why: str) -> None:
        try:
            aside = set_aside(self.path)
        except OSError as exc:
            self.log.error("persisted values %s %s, and could not be moved aside: %s",
                           self.path, why, exc)
            return
        self.log.error("persisted values %s %s; moved to %s; starting from initial values",
                       self.path, why, aside)

    # ----------------------------------------------------------------- save

    def note(self, keyword: str, value: Any) -> None:
        """Record a new value (JSON-able); it is written soon, off this thread."""
        with self._cond:
            self._values[keyword] = value
            self._dirty = True
            self._cond.notify()

    def forget(self, keyword: str) -> None:
        with self._cond:
            if self._values.pop(keyword, None) is not None:
                self._dirty = True
                self._cond.notify()

    def start(self, name: str = "persist") -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending and stop the writer thread."""
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        self.flush()

    def flush(self) -> None:
        """Write now if anything changed (on the calling thread)."""
        with self._cond:
            if not self._dirty:
                return
            values = dict(self._values)
            self._dirty = False
        try:
            self._write(values)
        except OSError as exc:
            self.log.error("cannot save persisted values to %s: %s", self.path, exc)
            with self._cond:
                self._dirty = True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                # Let a burst of changes arrive: note() notifies, which must not
                # cut this wait short, or a burst is written every other change.
                deadline = time.monotonic() + COALESCE
                remaining = COALESCE
                while remaining > 0 and not self._stopping:
                    self._cond.wait(remaining)
                    remaining = deadline - time.monotonic()
            self.flush()

    def _write(self, values: Dict[str, Any]) -> None:
        body = {"format": FORMAT, "saved": time.time(),
                "keywords": {k: {"value": v} for k, v in sorted(values.items())}}
        data = json.dumps(body, indent=1, allow_nan=False).encode("utf-8")
        write_atomically(self.path, data, dir_mode=0o700)
