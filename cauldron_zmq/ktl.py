"""KTL's Python client API (``ktl``) over cauldron_zmq.

Scripts written for Keck's ``ktl`` module run after changing one import::

    from cauldron_zmq import ktl

    svc = ktl.Service("mysvc")
    svc["TEMP"].write(21.5)             # returns once the dispatcher applied it
    print(svc["TEMP"].read())           # '21.5'
    ktl.waitFor("$mysvc.MODE == 'ON'", timeout=30)

The classes live in :mod:`cauldron_zmq.client`; this module adds KTL's
procedural functions (``ktl.read("svc", "KW")``...), which share a per-module
cache of :class:`Service` objects (:func:`cache`, :func:`cache_clear`), and
:func:`waitFor` for expressions over keywords of any services.
``docs/client.rst`` describes it all, including where it differs from the
original Cauldron.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .client import _services as _client_services
from .client import HistorySlice, Keyword, Service, ServiceShutDown, Task, UnknownKeyword
from .config import Config
from .errors import (AuthenticationError, CauldronError, DispatcherError, DispatcherRestarted,
                     RouterError, ServiceNotFound, TimeoutError)
from .expression import ExpressionError
from .expression import parse as parse_expression

__all__ = [
    "Service", "Keyword", "Task", "HistorySlice",
    "CauldronError", "DispatcherError", "RouterError", "ServiceNotFound", "TimeoutError",
    "UnknownKeyword", "ServiceShutDown", "ExpressionError", "DispatcherRestarted",
    "AuthenticationError",
    "cache", "cache_clear", "read", "write", "monitor", "subscribe", "wait", "callback",
    "poll", "waitFor", "waitfor",
]

ConfigArg = Union[str, Config, None]

_cache: Dict[str, Service] = {}
_cache_lock = threading.Lock()


# --------------------------------------------------------------------- cache

def cache(service: str, keyword: Optional[str] = None, *,
          config: ConfigArg = None) -> Union[Service, Keyword]:
    """The cached Service of that name (created on first use), or one of its keywords.

    Without ``config``, a live Service of that name that the program created
    itself is used before a new one is made.  ``config`` only matters when the
    Service is created; a Service that was shut down is replaced.  Every procedural function goes through here.
    """
    if not isinstance(service, str):
        raise TypeError(f"service must be a str, not {type(service).__name__}")
    if keyword is not None and not isinstance(keyword, str):
        raise TypeError(f"keyword must be a str, not {type(keyword).__name__}")
    name = service.strip().lower()
    with _cache_lock:
        svc = _cache.get(name)
        if svc is None or svc.closed:
            svc = _open_service(name) if config is None else None
            if svc is None:
                svc = Service(name, config=config)
                _cache[name] = svc
    return svc if keyword is None else svc[keyword]


def _open_service(name: str) -> Optional[Service]:
    """A Service of that name the program already opened itself, if any.

    ``waitFor("$demo.TEMP > 24")`` after ``ktl.Service("demo", config=...)``
    then uses that Service and its configuration.  It stays the program's:
    :func:`cache_clear` does not shut it down.
    """
    for svc in list(_client_services):
        if svc.name == name and not svc.closed:
            return svc
    return None


def cache_clear() -> None:
    """Shut down and forget every cached Service."""
    with _cache_lock:
        services = list(_cache.values())
        _cache.clear()
    for svc in services:
        svc.shutdown()


# ---------------------------------------------------------------- procedural

def read(service: str, keyword: str, *args: Any, **kwargs: Any) -> Any:
    """``cache(service, keyword).read(...)``."""
    return cache(service, keyword).read(*args, **kwargs)  # type: ignore[union-attr]


def write(service: str, keyword: str, value: Any, *args: Any, **kwargs: Any) -> Any:
    """``cache(service, keyword).write(value, ...)``."""
    return cache(service, keyword).write(value, *args, **kwargs)  # type: ignore[union-attr]


def monitor(service: str, keyword: str, *args: Any, **kwargs: Any) -> Any:
    """``cache(service, keyword).monitor(...)``."""
    return cache(service, keyword).monitor(*args, **kwargs)  # type: ignore[union-attr]


subscribe = monitor


def wait(service: str, keyword: str, *args: Any, **kwargs: Any) -> bool:
    """``cache(service, keyword).wait(...)``."""
    return cache(service, keyword).wait(*args, **kwargs)  # type: ignore[union-attr]


def callback(service: str, keyword: str, function: Callable[[Keyword], Any],
             *args: Any, **kwargs: Any) -> None:
    """``cache(service, keyword).callback(function, ...)``."""
    cache(service, keyword).callback(function, *args, **kwargs)  # type: ignore[union-attr]


def poll(service: str, keyword: str, *args: Any, **kwargs: Any) -> None:
    """``cache(service, keyword).poll(...)``."""
    cache(service, keyword).poll(*args, **kwargs)  # type: ignore[union-attr]


# ------------------------------------------------------------------- waitFor

def waitFor(expression: str, timeout: Optional[float] = None, case: bool = False) -> bool:  # noqa: N802
    """Block until ``expression`` (e.g. ``"$svc.KW == 3 and $svc.MODE != 'OFF'"``) is true.

    Keywords come from the module cache and are kept fresh while waiting
    (re-read after any loss of broadcasts).  The expression is re-evaluated
    on each update, never by polling.  Returns True; raises TimeoutError
    listing the last values seen once ``timeout`` s (default: the longest
    timeout of the services involved) pass.  ``case=False`` compares strings
    ignoring case, as KTL does.
    """
    expr = parse_expression(expression)
    pairs = expr.keywords
    if not pairs:
        raise ExpressionError(f"expression {expression!r} reads no keyword ($service.KEYWORD)")
    keywords: Dict[Tuple[str, str], Keyword] = {
        pair: cache(*pair) for pair in pairs}  # type: ignore[misc]
    limit = float(timeout) if timeout is not None else max(
        kw.service.timeout for kw in keywords.values())
    return _wait_expression(expr, keywords, limit, case)


waitfor = waitFor


def _wait_expression(expr: Any, keywords: Dict[Tuple[str, str], Keyword],
                     limit: float, case: bool) -> bool:
    deadline = time.monotonic() + limit
    changed = threading.Event()
    for kw in keywords.values():
        kw._watch(+1)
        kw._add_listener(changed)
    try:
        _prime([kw for kw in keywords.values() if not kw._monitored or not kw.populated_value],
               limit)
        while True:
            changed.clear()
            for kw in keywords.values():
                kw._check_open()
            if expr.evaluate(lambda s, k: keywords[(s, k)]._snapshot(), case):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"waitFor({expr.text!r}) not satisfied within {limit:g} s; "
                                   f"last values seen: {_last_values(keywords)}")
            changed.wait(remaining)
    finally:
        for kw in keywords.values():
            kw._remove_listener(changed)
            kw._watch(-1)


def _prime(keywords: List[Keyword], limit: float) -> None:
    """Read, in parallel, what is not kept fresh by monitoring already."""
    tasks = [kw.read(wait=False, timeout=limit) for kw in keywords]
    for task in tasks:
        task.get()


def _last_values(keywords: Dict[Tuple[str, str], Keyword]) -> str:
    return ", ".join(f"{kw.full_name}={kw.ascii!r}" for kw in keywords.values())
