"""KTL's Python client API (``ktl``) over cauldron_zmq.

Scripts written for Keck's ``ktl`` module run after changing one import::

    from cauldron_zmq import ktl

    svc = ktl.Service("mysvc")
    svc["TEMP"].write(21.5)             # returns once the dispatcher applied it
    print(svc["TEMP"].read())           # '21.5'
    if ktl.waitFor("$mysvc.MODE == ON", timeout=30) is False:   # False: timed out
        print("MODE is not ON")

The classes live in :mod:`cauldron_zmq.client`; this module adds KTL's
procedural functions (``ktl.read("svc", "KW")``...), which share a per-module
cache of :class:`Service` objects (:func:`cache`, :func:`cache_clear`), and
:func:`waitFor` and :class:`Expression` for expressions over keywords of any
services.  Every KTL name keeps KTL's meaning, return values included (a wait
returns False on a timeout); ``docs/client.rst`` describes it all and
``docs/migrating.rst`` lists each difference from KTL.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import client as _client
from .client import _services as _client_services
from .client import HistorySlice, Keyword, Service, ServiceShutDown, Task, UnknownKeyword
from .config import Config
from .errors import (AuthenticationError, CauldronError, ConversionError, DispatcherDown,
                     DispatcherError, DispatcherRestarted, DispatcherSilent, KeywordBusy, MessageTooLarge, RouterError,
                     ServiceNotFound, TimeoutError)
from .expression import ExpressionError
from .expression import parse as parse_expression

# What ``dir(ktl)`` and ``from cauldron_zmq.ktl import *`` show: KTL's names and
# the errors a script catches.
__all__ = [
    "Service", "Keyword", "Task", "HistorySlice", "Expression",
    "CauldronError", "DispatcherError", "RouterError", "ServiceNotFound", "TimeoutError",
    "UnknownKeyword", "ServiceShutDown", "ExpressionError", "DispatcherRestarted",
    "AuthenticationError", "ConversionError", "KeywordBusy", "MessageTooLarge",
    "DispatcherDown", "DispatcherSilent",
    "cache", "cache_clear", "read", "write", "monitor", "subscribe", "wait", "callback",
    "poll", "waitFor", "waitfor",
]


def __dir__() -> List[str]:
    """Only the public KTL names (``dir(ktl)``), not the imports behind them."""
    return sorted(__all__)


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
    """KTL's procedural monitor, in either of its two shapes.

    * ``monitor(service, keyword, callback, data=None, prime=True, wait=True)``
      calls ``callback(keyword, value, data)`` on every update, ``keyword``
      the :class:`Keyword` and ``value`` its ascii value, and monitors it;
    * ``monitor(service, keyword, start=True, prime=True, wait=True)`` is
      ``cache(service, keyword).monitor(...)``.

    Any other shape (a callback that is not callable, a fifth positional
    argument, an unknown option) is a TypeError, never ignored.
    """
    kw: Keyword = cache(service, keyword)  # type: ignore[assignment]
    function = kwargs.pop("callback", None)
    if function is None and args and not isinstance(args[0], (bool, int)):
        function, args = args[0], args[1:]
    if function is None:
        for name, flag in zip(("start", "prime", "wait"), args):
            if not isinstance(flag, (bool, int)):
                raise TypeError(f"ktl.monitor({service!r}, {keyword!r}, ...): {name} must be a "
                                f"bool, not {flag!r} (or pass a callable callback first)")
        if len(args) > 3:
            raise TypeError(f"ktl.monitor() takes at most start, prime, wait; got {args!r}")
        return kw.monitor(*args, **kwargs)
    return _monitor_with(kw, function, args, kwargs)


def _monitor_with(kw: Keyword, function: Any, args: Tuple[Any, ...],
                  options: Dict[str, Any]) -> Any:
    """``monitor(service, keyword, callback, data)``: callback(keyword, ascii, data)."""
    if not callable(function):
        raise TypeError(f"ktl.monitor({kw.service.name!r}, {kw.name!r}, callback, data): "
                        f"callback {function!r} is not callable")
    if len(args) > 1:
        raise TypeError(f"ktl.monitor(service, keyword, callback, data) takes one data "
                        f"argument, got {len(args)}")
    data = args[0] if args else options.pop("data", None)
    unknown = set(options) - {"prime", "wait"}
    if unknown:
        raise TypeError(f"ktl.monitor(service, keyword, callback, data): unknown option(s) "
                        f"{', '.join(sorted(unknown))}")

    def relay(k: Keyword) -> None:
        function(k, k["ascii"], data)

    kw.callback(relay)
    return kw.monitor(start=True, **options)


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

def waitFor(expression: str, timeout: Optional[float] = None, case: bool = False,  # noqa: N802
            *, raise_on_timeout: bool = False) -> bool:
    """Block until ``expression`` (``"$svc.KW == 3 and ($svc.MODE != Off)"``) is true.

    Returns True when it holds and **False when** ``timeout`` **seconds pass
    first**, as KTL does (``if ktl.waitFor(...) is False:`` takes its branch);
    ``timeout=None`` waits as long as it takes.  ``raise_on_timeout=True``
    raises TimeoutError, listing the last values seen, instead of returning
    False.  What is not a timeout raises: bad syntax
    (:class:`~cauldron_zmq.expression.ExpressionError`), an unknown service
    or keyword, a dispatcher that does not answer the priming read or is
    silent when the time is up, a Service shut down.  ``case=False`` compares
    strings ignoring case, as KTL does.

    Keywords come from the module cache (or a Service the program opened)
    and are kept fresh while waiting; the expression is re-evaluated on each
    update, never by polling.
    """
    return Expression(expression, case).wait(timeout, raise_on_timeout=raise_on_timeout)


waitfor = waitFor


class Expression:
    """KTL's ``ktl.Expression``: a parsed expression to evaluate or wait on, reusable.

    ``Expression("$kbms.focmove == 0")`` parses at once (ExpressionError on
    bad syntax) and finds its keywords (KeyError for an unknown one,
    ServiceNotFound for an unknown service); each use looks them up again in
    the cache, so an Expression outlives :func:`cache_clear`.  :meth:`evaluate`
    gives its truth now; :meth:`wait` blocks until it is true (True) or the
    timeout expires (False).
    """

    def __init__(self, expression: str, case: bool = False) -> None:
        self._parsed = parse_expression(expression)
        if not self._parsed.keywords:
            raise ExpressionError(f"expression {expression!r} reads no keyword "
                                  "($service.KEYWORD)")
        self.text = expression
        self.case = bool(case)
        _resolve(self._parsed, {})        # an unknown service or keyword raises now

    @property
    def keywords(self) -> List[Tuple[str, str]]:
        """The (service, KEYWORD) pairs the expression reads."""
        return self._parsed.keywords

    def evaluate(self) -> bool:
        """The expression's truth now: monitored keywords from the cache, others read."""
        keywords = _resolve(self._parsed, {})
        _client._prime([kw for kw in keywords.values()
                        if not kw._monitored or not kw.populated_value])
        return self._parsed.evaluate(lambda s, k: keywords[(s, k)]._snapshot(), self.case)

    def wait(self, timeout: Optional[float] = None, *, raise_on_timeout: bool = False) -> bool:
        """True once the expression holds; False if ``timeout`` s pass first (None: no limit)."""
        return _wait_parsed(self._parsed, timeout, self.case, raise_on_timeout, {})

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        case = ", case=True" if self.case else ""
        return f"ktl.Expression({self.text!r}{case})"


def _resolve(expr: Any, known: Dict[Tuple[str, str], Keyword]) -> Dict[Tuple[str, str], Keyword]:
    """Every keyword the expression reads, ``known`` ones as given, others cached."""
    keywords = dict(known)
    for pair in expr.keywords:
        if pair not in keywords:
            keywords[pair] = cache(*pair)  # type: ignore[assignment]
    return keywords


def _wait_parsed(expr: Any, timeout: Optional[float], case: bool, raise_on_timeout: bool,
                 known: Dict[Tuple[str, str], Keyword]) -> bool:
    """The waiting behind waitFor, Expression.wait and Keyword.waitFor."""
    keywords = _resolve(expr, known)
    limit = None if timeout is None else float(timeout)
    return _client._wait_until(
        list(keywords.values()),
        lambda: expr.evaluate(lambda s, k: keywords[(s, k)]._snapshot(), case),
        limit, f"waitFor({expr.text!r})", raise_on_timeout)
