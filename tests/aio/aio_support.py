"""Helpers of the asyncio client's tests.

They run under pytest-asyncio, marked one module at a time (``pytestmark =
pytest.mark.asyncio``): strict mode, so no other test is affected.  (Not a
conftest.py: tests elsewhere import the root one as ``conftest``.)"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


async def eventually(condition: Callable[[], Any], timeout: float = 5.0,
                     message: str = "condition") -> Any:
    """Poll ``condition`` on the loop (without blocking it) until true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s")
        await asyncio.sleep(0.01)
