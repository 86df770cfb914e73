"""The router: an address book that tells clients where each dispatcher listens.

From pure to I/O, one file each:

* :class:`~cauldron_zmq.protocol.book.Book` -- the state machine.
  Plain data and methods that take ``now`` and return result dicts (or
  raise :class:`~cauldron_zmq.protocol.entries.RouterRefusal`); no
  sockets, files, clock or logging module, so
  ``tests/protocol`` drives it directly.  ``docs/router.rst`` states the
  rules it implements.
* :mod:`cauldron_zmq.router.state` -- the state file:
  :func:`~cauldron_zmq.router.state.save_state` writes the book atomically,
  :func:`~cauldron_zmq.router.state.read_state` reads it back,
  :func:`~cauldron_zmq.router.state.quarantine` moves a corrupt file aside
  so a human can look at it.
* :mod:`cauldron_zmq.router.serving` -- the serving loop: one ROUTER socket,
  the thread that runs it, :mod:`cauldron_zmq.protocol` to decode and
  encode, the book to decide.
* :mod:`cauldron_zmq.router.launch` -- :class:`Router`, which runs that loop
  in the caller's thread, a thread of its own or a ``python -m
  cauldron_zmq.router`` process.
* :mod:`cauldron_zmq.router.client` -- :class:`RouterClient`, the DEALER side
  used by dispatchers, clients and the ``cauldron-zmq services`` command,
  and :func:`ask_routers` / :func:`first_good` for several routers at once.
* :mod:`cauldron_zmq.router.cli` -- ``main``, the ``Cauldron-router-zmq``
  console script (also ``python -m cauldron_zmq.router``).

Every name above is importable from ``cauldron_zmq.router``, as it was when
the router was one module.
"""
from __future__ import annotations

from ..protocol.book import Book
from ..protocol.entries import DOWN, LIVE, STALE, Caller, Entry, RouterRefusal
from .cli import main
from .client import RouterClient, ask_routers, first_good
from .launch import Router
from .serving import RouterBindError, RouterStartError
from .state import quarantine, read_state, save_state

# Importable from here as when the router was one module, outside __all__.
from ..protocol.bookfile import STATE_FORMAT, STATE_VERSION  # noqa: F401
from ..protocol.entries import BLOCK_RETRY, NOBODY, Block  # noqa: F401
from .cli import setup_logging  # noqa: F401
from .client import PARALLEL_COMMANDS  # noqa: F401
from .logs import NOTICE, PROG, TRACE, VERBOSITY_LEVELS, log  # noqa: F401
from .serving import ADMIN_COMMANDS, REFUSAL_TYPE, bind_address  # noqa: F401

__all__ = [
    "Book",
    "Caller",
    "Entry",
    "RouterRefusal",
    "Router",
    "RouterClient",
    "ask_routers",
    "first_good",
    "RouterStartError",
    "RouterBindError",
    "save_state",
    "read_state",
    "quarantine",
    "main",
    "LIVE",
    "STALE",
    "DOWN",
]
