"""The one error class the asyncio client adds: a timeout that is asyncio's too.

``cauldron_zmq.errors.TimeoutError`` derives from the built-in TimeoutError,
which *is* ``asyncio.TimeoutError`` from Python 3.11 on; on 3.9 and 3.10
asyncio's is another class.  Every timeout the asyncio client raises itself
is this subclass, so ``except asyncio.TimeoutError`` and ``except
cauldron_zmq.errors.TimeoutError`` (and ``ktl.TimeoutError``) both catch it on
every version.
"""
from __future__ import annotations

import asyncio
import builtins

from .. import errors

__all__ = ["TimeoutError"]

if asyncio.TimeoutError is builtins.TimeoutError:      # Python >= 3.11
    class TimeoutError(errors.TimeoutError):  # noqa: A001 - the name users catch
        """No answer (or no condition met) within the timeout."""
else:  # pragma: no cover - Python 3.9 and 3.10
    class TimeoutError(errors.TimeoutError, asyncio.TimeoutError):  # type: ignore[no-redef]  # noqa: A001
        """No answer (or no condition met) within the timeout."""
