"""Shared test fixtures.

The harness fixtures of :mod:`cauldron_zmq.pytest_plugin` are imported here
(``pytest_plugins`` only works in the rootdir's conftest), and port helpers
live in :mod:`cauldron_zmq.testing` (``free_port``, ``free_ports``), so every
test module can start routers and dispatchers on free loopback ports.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterator, List

import pytest
from hypothesis import settings

from cauldron_zmq.pytest_plugin import cauldron_harness, cauldron_service  # noqa: F401
from cauldron_zmq.testing import free_port, free_ports

# Property tests draw the same examples on every run (a suite that goes red on
# one run in ten is no signal): ``derandomize`` seeds each test from its name.
# HYPOTHESIS_PROFILE=explore searches afresh, for finding new failures by hand.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture
def ports() -> Callable[..., List[int]]:
    """``ports(n, consecutive=False)``: free loopback ports (cauldron_zmq.testing.free_ports)."""
    return free_ports


def client_threads() -> List[threading.Thread]:
    """Threads a cauldron_zmq client (ktl.Service) runs."""
    return [t for t in threading.enumerate() if t.name.startswith("cauldron_zmq.client.")]


@pytest.fixture
def no_client_threads_left() -> Iterator[None]:
    """Fails a test that leaves client threads running (a Service not shut down)."""
    before = set(client_threads())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = [t for t in client_threads() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left, f"threads left running: {[t.name for t in left]}"


__all__ = ["free_port", "free_ports", "client_threads"]
