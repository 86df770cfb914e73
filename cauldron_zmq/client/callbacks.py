"""The thread that runs a Service's keyword callbacks, never the I/O thread."""
from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from .keyword import Keyword, _State


class _CallbackRunner:
    """The thread of a Service that runs user callbacks, in arrival order.

    Started by the first thing it is given: a Service nobody registers a
    callback with costs no thread.
    """

    _STOP = object()

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._log = logger
        self._name = name
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def fire(self, keyword: "Keyword", state: _State) -> None:
        """Run ``keyword``'s callbacks, showing them ``state`` (the value that fired them)."""
        self._put((keyword, state))

    def call(self, fn: Callable[[], Any]) -> None:
        self._put(fn)

    def _put(self, item: Any) -> None:
        self._queue.put(item)
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stopped:
                    self._thread = threading.Thread(target=self._run, name=self._name,
                                                    daemon=True)
                    self._thread.start()

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    def stop(self, timeout: float) -> None:
        with self._lock:
            self._stopped = True
            thread = self._thread
        if thread is None:
            return
        self._queue.put(self._STOP)
        if threading.current_thread() is not thread:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            try:
                if isinstance(item, tuple):
                    item[0]._run_callbacks(item[1])
                else:
                    item()
            except Exception:  # noqa: BLE001 - the thread must survive anything
                self._log.exception("callback dispatch failed")
