"""The thread that runs a Service's keyword callbacks, never the I/O thread."""
from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, List, Optional

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
        self._batch: Optional[List[Any]] = None    # being gathered by _batcher's thread
        self._batcher: Optional[int] = None

    def begin_batch(self) -> None:
        """From now on this thread's items are gathered, to be handed over in one go.

        The I/O thread drains a socket of many broadcasts at once: handing
        their callbacks over as one batch wakes this thread once, not once a
        message (each wake-up is a GIL hand-over).  Other threads' items
        (direct replies) still go straight to the queue.
        """
        self._batch, self._batcher = [], threading.get_ident()

    def end_batch(self) -> None:
        """Hand the gathered items over, in the order they came."""
        batch, self._batch, self._batcher = self._batch, None, None
        if batch:
            self._put(batch if len(batch) > 1 else batch[0])

    def fire(self, keyword: "Keyword", state: _State) -> None:
        """Run ``keyword``'s callbacks, showing them ``state`` (the value that fired them)."""
        self._add((keyword, state))

    def call(self, fn: Callable[[], Any]) -> None:
        self._add(fn)

    def _add(self, item: Any) -> None:
        batch = self._batch
        if batch is not None and self._batcher == threading.get_ident():
            batch.append(item)
        else:
            self._put(item)

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
            for one in item if isinstance(item, list) else (item,):
                try:
                    if isinstance(one, tuple):
                        one[0]._run_callbacks(one[1])
                    else:
                        one()
                except Exception:  # noqa: BLE001 - the thread must survive anything
                    self._log.exception("callback dispatch failed")
