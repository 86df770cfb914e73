"""Persisted keyword values: survive a dispatcher restart.

Keywords created with ``persist=True`` have their last value saved to
``<persist-dir>/<service>.<dispatcher>.json`` whenever it changes, and
restored by ``Service.begin()`` (a restored value wins over ``initial``).
The file name is :func:`cauldron_zmq.names.file_stem`: names are escaped so
that no name leaves the directory and no two (service, dispatcher) pairs
share a file; a file saved under the old, unescaped name is read when the new
one does not exist yet, and its values are saved under the new name.

Saving happens on a thread of its own, never on the I/O thread or in the
caller of ``set()``: a change only records the value and wakes the writer,
which waits a moment to coalesce a burst of changes into one write.  Every
write is atomic (temporary file, fsync, rename, fsync of the directory), so
a crash leaves either the old file or the new one, never half of one.  A file
that cannot be parsed (including one nested too deeply for Python's JSON
decoder: the same guarded decoder as the router's state file reads it) is
logged and moved aside (``.corrupt-<time>``), and the dispatcher starts with
its initial values.  A save that fails (full disk, read-only directory) is
retried with back-off (:mod:`cauldron_zmq.protocol.retry`), logging one line per
interval with a count, never once per change.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Dict, Optional

from .files import set_aside, write_atomically
from .names import file_stem, legacy_file_stem
from .protocol import loads
from .protocol.retry import Retry

__all__ = ["Persister", "persist_path", "legacy_persist_path", "FORMAT"]

FORMAT = 1
#: Seconds the writer waits after a change for more changes to coalesce.
COALESCE = 0.05


def _base(directory: Optional[str]) -> str:
    from .config import DEFAULT_PERSIST_DIR
    return os.path.expanduser(directory or DEFAULT_PERSIST_DIR)


def persist_path(directory: Optional[str], service: str, dispatcher: str) -> str:
    """``<directory>/<file_stem(service, dispatcher)>.json`` (default directory from config)."""
    return os.path.join(_base(directory), file_stem(service, dispatcher) + ".json")


def legacy_persist_path(directory: Optional[str], service: str, dispatcher: str) -> Optional[str]:
    """Where releases before 0.2 saved the values (unescaped names), if that was a file
    of the directory and differs from :func:`persist_path`; else None."""
    stem = legacy_file_stem(service, dispatcher)
    if stem is None:
        return None
    path = os.path.join(_base(directory), stem + ".json")
    return None if path == persist_path(directory, service, dispatcher) else path


class Persister:
    """Load, and save in the background, the persisted values of one dispatcher."""

    def __init__(self, path: str, log: Optional[logging.Logger] = None,
                 legacy: Optional[str] = None) -> None:
        self.path = path
        self.legacy = legacy             # read when ``path`` does not exist yet
        self.log = log or logging.getLogger(__name__)
        self.retry = Retry(f"saving persisted values to {path}")
        self._values: Dict[str, Any] = {}
        self._dirty = False
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    # ----------------------------------------------------------------- load

    def load(self) -> Dict[str, Any]:
        """The saved ``{KEYWORD: wire value}``; {} when there is none or it is corrupt.

        Without a file at ``path``, the ``legacy`` one is read (an upgrade
        from unescaped file names); its values are then saved under ``path``.
        """
        path = self.path
        if self.legacy and not os.path.lexists(path) and os.path.isfile(self.legacy):
            path = self.legacy
        loaded = self._read(path)
        if loaded is None:
            return {}
        with self._cond:
            self._values.update(loaded)
            if path != self.path:
                self._dirty = True
        if path != self.path:
            self.log.info("read persisted values from %s (the name before 0.2); they are "
                          "saved as %s from now on", path, self.path)
        return loaded

    def _read(self, path: str) -> Optional[Dict[str, Any]]:
        try:
            with open(path, "rb") as stream:
                data = loads(stream.read())
        except (FileNotFoundError, NotADirectoryError):
            return None             # nothing saved yet (a save will say what is wrong)
        except (OSError, ValueError) as exc:
            self._set_aside(path, f"cannot be read: {exc}")
            return None
        values = data.get("keywords") if isinstance(data, dict) else None
        if not isinstance(values, dict):
            self._set_aside(path, "has no 'keywords' table")
            return None
        return {str(k).upper(): v.get("value") for k, v in values.items()
                if isinstance(v, dict) and "value" in v}

    def _set_aside(self, path: str, why: str) -> None:
        try:
            aside = set_aside(path)
        except OSError as exc:
            self.log.error("persisted values %s %s, and could not be moved aside: %s",
                           path, why, exc)
            return
        self.log.error("persisted values %s %s; moved to %s; starting from initial values",
                       path, why, aside)

    # ----------------------------------------------------------------- save

    def note(self, keyword: str, value: Any) -> None:
        """Record a new value (JSON-able); it is written soon, off this thread."""
        with self._cond:
            self._values[keyword] = value
            self._dirty = True
            self._cond.notify()

    def start(self, name: str = "persist") -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0, flush: bool = True) -> None:
        """Write what is pending (unless ``flush`` is false) and stop the writer thread.

        A dispatcher that failed to begin closes without writing: it served
        nothing, and the file may belong to a copy that does serve.
        """
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        if flush and not self.flush() and self.retry.failures > 1:
            self.log.error("persisted values could not be saved to %s before stopping: the "
                           "last changes are lost", self.path)

    def flush(self) -> bool:
        """Write now if anything changed (on the calling thread); False if that failed.

        A failure is logged through :attr:`retry`: the first one, then one
        line per interval with a count, then one when saving works again.
        """
        with self._cond:
            if not self._dirty:
                return True
            values = dict(self._values)
            self._dirty = False
        try:
            self._write(values)
        except (OSError, ValueError) as exc:
            line = self.retry.failed(time.monotonic(), str(exc))
            if line:
                self.log.error("%s", line)
            with self._cond:
                self._dirty = True
            return False
        line = self.retry.succeeded(time.monotonic())
        if line:
            self.log.warning("%s", line)
        return True

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
            if not self.flush():
                self._back_off()

    def _back_off(self) -> None:
        """After a failed save: wait for the retry schedule (or stop), not for a change."""
        with self._cond:
            while not self._stopping:
                at = self.retry.next_attempt()
                remaining = 0.0 if at is None else at - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _write(self, values: Dict[str, Any]) -> None:
        body = {"format": FORMAT, "saved": time.time(),
                "keywords": {k: {"value": v} for k, v in sorted(values.items())}}
        data = json.dumps(body, indent=1, allow_nan=False).encode("utf-8")
        write_atomically(self.path, data, dir_mode=0o700)
