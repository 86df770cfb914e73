"""The router's logger and its verbosity scale (every file of the package logs here).

0 shows NOTICE (where it listens, when it stops), -v INFO (registrations,
expiries), -vv DEBUG (look-ups, heartbeats), -vvv TRACE (every message).
The :class:`~cauldron_zmq.protocol.book.Book` is given this logger, so its
lines come under the same name and verbosity.
"""
from __future__ import annotations

import logging

from ..protocol.entries import TRACE

__all__ = ["log", "NOTICE", "TRACE", "VERBOSITY_LEVELS", "PROG"]

#: The console script's name: its log lines and error messages start with it.
PROG = "Cauldron-router-zmq"

log = logging.getLogger("cauldron_zmq.router")

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
logging.addLevelName(TRACE, "TRACE")
VERBOSITY_LEVELS = (NOTICE, logging.INFO, logging.DEBUG, TRACE)
