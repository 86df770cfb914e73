"""The client side: connections to a service's dispatchers and its keywords.

:mod:`cauldron_zmq.ktl` is the KTL-named facade over this package; observers'
scripts use that.  This package holds the machinery, one module a part:

* :mod:`.task` -- :class:`Task` (what ``wait=False`` returns) and :func:`deadline`;
* :mod:`.service` -- :class:`Service`: look-up, connection, keyword objects;
* :mod:`.keyword` -- :class:`Keyword`: cache, reads, writes, callbacks, waits;
* :mod:`.values` and :mod:`.operators` -- a keyword's values encoded,
  decoded, and used as operands;
* :mod:`.engine`, :mod:`.events` and :mod:`.lookups` -- one Service's links,
  requests, sockets and router look-ups, carrying out what
  :mod:`cauldron_zmq.protocol` decides;
* :mod:`.loop` -- the one I/O thread and ZeroMQ context of the process;
* :mod:`.direct` -- synchronous reads and writes in the caller's own thread;
* :mod:`.callbacks` -- the thread that runs keyword callbacks.

Threads (ZeroMQ's rule: a socket is used by one thread only):

* **the I/O thread** (one per process, however many Services) owns every
  socket of every Service but the direct ones: a DEALER to each dispatcher's
  dispatch port, a SUB to each broadcast port, DEALERs to the routers while a
  look-up waits, and the read end of the mailbox pipe.  It sends asynchronous
  requests, matches replies by request id, enforces deadlines, watches
  heartbeats, detects lost broadcasts and restarts, and reconnects.  It never
  runs user code.
* **a callback thread** per Service that has callbacks runs them, one at a
  time, in the order their updates arrived (started by the first one).
* **user threads** (any number) send a synchronous ``read()``/``write()`` on
  a DEALER of their own (:mod:`.direct`) and wait for its reply themselves;
  everything else they hand to the I/O thread through its mailbox and wait on
  a :class:`Task` or for a keyword's next change, always with a timeout.
"""
from __future__ import annotations

from .engine import Engine, _Engine, unknown_keyword_message
from .keyword import HistorySlice, Keyword, _State
from .service import Service, _services, shutdown_all
from .task import ServiceShutDown, Task, UnknownKeyword, deadline
from .waits import _prime, _wait_until

__all__ = [
    "Task",
    "Keyword",
    "Service",
    "HistorySlice",
    "UnknownKeyword",
    "ServiceShutDown",
    "deadline",
]

# One API description each, under the name users import them by.
for _public in (Task, Keyword, Service, UnknownKeyword, ServiceShutDown, deadline):
    _public.__module__ = __name__

# Internal names other modules of the package use (ktl, tools, tests).
_INTERNAL = (Engine, _Engine, unknown_keyword_message, _State, _services, shutdown_all,
             _prime, _wait_until)
