"""Awaiting a KTL expression (``"$demo.TEMP > 24 and $demo.MODE == On"``).

The expression language is ``ktl.waitFor``'s (:mod:`cauldron_zmq.expression`);
the conventions are asyncio's: the wait returns True once the expression
holds and **raises** :class:`~cauldron_zmq.aio.errors.TimeoutError` (an
``asyncio.TimeoutError`` on every Python version) when ``timeout`` passes
first, where ``ktl.waitFor`` returns False.  ``asyncio.wait_for(...)``
around it works as well: cancelling the wait leaves nothing behind.

Keywords are kept fresh while waited on: read first unless a monitor keeps
them so, re-read after any loss of broadcasts, and the expression is
re-evaluated on every change, never by polling.
"""
from __future__ import annotations

import asyncio
from typing import Dict, Iterable, List, Optional, Tuple

from ..client.task import ServiceShutDown, _fmt_s
from ..errors import CauldronError, ServiceNotFound
from ..expression import ExpressionError, Value
from ..expression import Expression as _Parsed
from ..expression import parse, parse_relative
from .errors import TimeoutError
from .keyword import Keyword
from .service import Service, _open

__all__ = ["Expression", "wait_for"]


class Expression:
    """A parsed expression over keywords of open :class:`Service` objects.

    ``services`` are looked in first for a ``$service.KEYWORD``; then every
    Service open in this process.  An unknown keyword raises UnknownKeyword
    (a KeyError) at once, bad syntax ExpressionError (a ValueError).
    """

    def __init__(self, expression: str, case: bool = False,
                 services: Iterable[Service] = (), *,
                 _parsed: Optional[_Parsed] = None,
                 _known: Optional[Dict[Tuple[str, str], Keyword]] = None) -> None:
        self._parsed = _parsed if _parsed is not None else parse(expression)
        if not self._parsed.keywords:
            raise ExpressionError(f"expression {expression!r} reads no keyword "
                                  "($service.KEYWORD)")
        self.text = expression
        self.case = bool(case)
        self._services = list(services)
        self._keywords = self._resolve(dict(_known or {}))

    @property
    def keywords(self) -> List[Tuple[str, str]]:
        return self._parsed.keywords

    def _resolve(self, known: Dict[Tuple[str, str], Keyword]) -> Dict[Tuple[str, str], Keyword]:
        for service, name in self._parsed.keywords:
            if (service, name) not in known:
                known[(service, name)] = _service(service, self._services)[name]
        return known

    def evaluate(self) -> bool:
        """The truth now, from the cached values (no I/O)."""
        return self._parsed.evaluate(self._value, self.case)

    def _value(self, service: str, name: str) -> Value:
        kw = self._keywords[(service, name)]
        state = kw._cache.state
        return Value(state.value, state.ascii, kw.cast)

    async def wait(self, timeout: Optional[float] = None) -> bool:
        """True once the expression holds; TimeoutError after ``timeout`` s (None: no limit)."""
        keywords = list(self._keywords.values())
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + float(timeout)
        changed = asyncio.Event()
        for kw in keywords:
            kw._watchers += 1
            kw._listeners.add(changed)
        try:
            stale = [kw for kw in keywords if not kw.monitored or not kw.populated]
            if stale:
                await asyncio.gather(*[kw.read(wait=False) for kw in stale])
            while True:
                changed.clear()
                _check_open(keywords)
                if self.evaluate():
                    return True
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise _timed_out(keywords, self.text, timeout)
                try:
                    await asyncio.wait_for(changed.wait(), left)
                except asyncio.TimeoutError:
                    pass
        finally:
            for kw in keywords:
                kw._watchers -= 1
                kw._listeners.discard(changed)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"aio.Expression({self.text!r})"


async def wait_for(expression: str, timeout: Optional[float] = None, case: bool = False, *,
                   services: Iterable[Service] = ()) -> bool:
    """``await aio.wait_for("$demo.TEMP > 24", timeout=30)``: True, or TimeoutError."""
    return await Expression(expression, case, services).wait(timeout)


async def wait_for_keyword(kw: Keyword, expression: str, timeout: Optional[float] = None,
                           case: bool = False) -> bool:
    """A wait relative to ``kw``: ``'== "open"'``, ``'>= 5 and < 10'``."""
    parsed = parse_relative(expression, kw.service.name, kw.name)
    expr = Expression(expression, case, [kw.service], _parsed=parsed,
                      _known={(kw.service.name, kw.name): kw})
    return await expr.wait(timeout)


def _service(name: str, preferred: List[Service]) -> Service:
    for svc in preferred + list(_open):
        if svc.name == name and not svc.closed:
            return svc
    raise ServiceNotFound(f"no open aio.Service {name!r} for the expression "
                          f"(open it with 'async with aio.Service({name!r})' first)")


def _check_open(keywords: List[Keyword]) -> None:
    for kw in keywords:
        if kw.service.closed:
            raise ServiceShutDown(f"service {kw.service.name!r} was closed while waiting on "
                                  f"{kw.full_name}")


def _timed_out(keywords: List[Keyword], what: str, limit: Optional[float]) -> CauldronError:
    seen = ", ".join(f"{kw.full_name}={kw.ascii!r}" for kw in keywords)
    silent = [kw.full_name for kw in keywords if not kw.connected]
    if silent:
        return TimeoutError(f"wait_for({what!r}): not decided within {_fmt_s(limit)}: the "
                            f"dispatcher of {', '.join(silent)} is silent; last values seen: "
                            f"{seen}")
    return TimeoutError(f"wait_for({what!r}): not satisfied within {_fmt_s(limit)}; last "
                        f"values seen: {seen}")
