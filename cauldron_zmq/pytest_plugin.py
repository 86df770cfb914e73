"""pytest fixtures for testing dispatchers and clients: ``pytest_plugins = ["cauldron_zmq.pytest_plugin"]``.

* ``cauldron_service`` -- a function ``start(source, service="test", **options)``
  that starts a router and a dispatcher on free loopback ports and returns a
  connected ``ktl.Service``; everything started is shut down after the test.
* ``cauldron_harness`` -- the same, returning the
  :class:`~cauldron_zmq.testing.ServiceHarness` (to kill or restart servers).

Example (tests/test_demo.py)::

    pytest_plugins = ["cauldron_zmq.pytest_plugin"]

    def test_write(cauldron_service):
        svc = cauldron_service("tests/demo.toml", service="demo")
        assert svc["MODE"].write("ON") == "ON"
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import pytest

from .testing import ServiceHarness, running_service

__all__ = ["cauldron_service", "cauldron_harness"]


@pytest.fixture
def cauldron_service() -> Iterator[Callable[..., Any]]:
    """Start services with :func:`~cauldron_zmq.testing.running_service`; closed after the test."""
    with contextlib.ExitStack() as stack:
        def start(source: Any, service: str = "test", **options: Any) -> Any:
            return stack.enter_context(running_service(source, service, **options))
        yield start


@pytest.fixture
def cauldron_harness() -> Iterator[Callable[..., ServiceHarness]]:
    """Start :class:`~cauldron_zmq.testing.ServiceHarness` objects; closed after the test."""
    with contextlib.ExitStack() as stack:
        def start(source: Any = None, service: str = "test", **options: Any) -> ServiceHarness:
            return stack.enter_context(ServiceHarness(source, service, **options))
        yield start
