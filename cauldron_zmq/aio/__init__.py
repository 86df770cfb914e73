"""An asyncio client on the same protocol core as ``ktl``::

    from cauldron_zmq import aio

    async with aio.Service("demo") as svc:
        temp = svc["TEMP"]                      # described on entry: no I/O
        print(await temp.read())                # '21.5'
        print(await svc["SETPOINT"].write(25))  # '25.0', as applied
        async for update in temp.monitor():     # the current value, then every change
            print(update.ascii, update.seq)
            if float(update.value) > 24:
                break                           # leaving the loop unsubscribes
        await aio.wait_for("$demo.TEMP < 30", timeout=60)

It is a second I/O layer over :mod:`cauldron_zmq.protocol` (the request
table, link state, repair and keyword cache the threaded client uses), on
``zmq.asyncio`` sockets: no Python thread of its own, any running event
loop, cancellation-safe calls.  ``docs/client.rst`` ("asyncio") describes the
semantics and the differences from ``ktl``.
"""
from __future__ import annotations

from ..client.task import ServiceShutDown, UnknownKeyword
from ..errors import (AuthenticationError, CauldronError, ConversionError, DispatcherDown,
                      DispatcherError, DispatcherRestarted, DispatcherSilent, KeywordBusy,
                      MessageTooLarge, RouterError, ServiceNotFound)
from .errors import TimeoutError
from .keyword import MONITOR_QUEUE, Keyword, Monitor, Update
from .service import Service
from .waits import Expression, wait_for

__all__ = [
    "Service", "Keyword", "Update", "Monitor", "Expression", "wait_for", "MONITOR_QUEUE",
    "CauldronError", "DispatcherError", "RouterError", "ServiceNotFound", "TimeoutError",
    "UnknownKeyword", "ServiceShutDown", "DispatcherRestarted", "AuthenticationError",
    "ConversionError", "KeywordBusy", "MessageTooLarge", "DispatcherDown", "DispatcherSilent",
]
