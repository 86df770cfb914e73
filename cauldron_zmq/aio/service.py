"""An asyncio connection to every dispatcher of a KTL service.

``async with aio.Service("demo") as svc:`` asks the routers where the
service's dispatchers listen (every router of ``[zmq-router] replicas`` at
once, or the ``[zmq]`` ports with ``[zmq-router] enable = false``), connects
to each, learns which keywords each owns and fetches every description, so
``svc["TEMP"]`` needs no I/O afterwards.  Leaving the block closes every
socket and the ZeroMQ context: nothing runs afterwards.
"""
from __future__ import annotations

import asyncio
import difflib
import logging
import os
import weakref
from typing import Any, Dict, List, Optional, Union

from .. import protocol
from ..config import Config, load_config
from ..errors import AuthenticationError, CauldronError, ProtocolError, RouterError
from ..errors import ServiceNotFound
from ..names import check_name, split_entries
from ..client.engine import unknown_keyword_message
from ..client.task import ServiceShutDown, UnknownKeyword
from .engine import Engine
from .keyword import Keyword

__all__ = ["Service"]

#: Services open now, for expressions that name them (``$svc.KW``).
_open: "weakref.WeakSet[Service]" = weakref.WeakSet()


class Service:
    """A service's keywords, on the running event loop (see the module).

    ``timeout`` (s) is the default of every call (default ``[zmq] timeout``);
    it also bounds the look-up when given (else ``[zmq-router] timeout``).
    """

    def __init__(self, name: str,
                 config: Union[str, "os.PathLike[str]", Config, None] = None,
                 timeout: Optional[float] = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"a service name is a non-empty str, not {name!r}")
        self.name = check_name("service", name.strip().lower())
        self.config = load_config(config)
        self.timeout = float(timeout) if timeout is not None else self.config.zmq.timeout / 1000.0
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._explicit_timeout = timeout is not None
        self.log = logging.getLogger(f"cauldron_zmq.aio.{self.name}")
        self._engine: Optional[Engine] = None
        self._keywords: Dict[str, Keyword] = {}

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> "Service":
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def open(self) -> "Service":
        """Look up, connect, describe (what ``async with`` does on entry)."""
        if self._engine is not None:
            raise RuntimeError(f"service {self.name!r} is open already")
        self._engine = Engine(self.name, self.config, self.timeout, self.log)
        self._engine.learn = self._learn       # a dispatcher found later is described too
        try:
            await self._connect()
        except BaseException:
            await self.close()
            raise
        _open.add(self)
        return self

    async def close(self) -> None:
        """Close every socket; pending calls raise ServiceShutDown, monitors end."""
        engine, self._engine = self._engine, None
        _open.discard(self)
        if engine is None:
            return
        for kw in self._keywords.values():
            kw._closed()
        await engine.close()

    @property
    def closed(self) -> bool:
        return self._engine is None

    def _engine_or_raise(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise ServiceShutDown(f"service {self.name!r} is not open")
        return engine

    # -------------------------------------------------------------- connect
    async def _connect(self) -> None:
        engine = self._engine_or_raise()
        entries = await self._lookup() if self.config.router.enable else [self._static_entry()]
        keys = engine.add_links(entries)
        results = await asyncio.gather(*[self._learn(key) for key in keys],
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for exc in errors:
            if not isinstance(exc, Exception):
                raise exc                      # a cancellation: not ours to swallow
        refused = [exc for exc in errors if isinstance(exc, AuthenticationError)]
        if errors and len(errors) == len(keys) and (not self._keywords or refused):
            raise (refused or errors)[0]
        for exc in errors:
            self.log.warning("%s; its keywords are not available", exc)

    async def _learn(self, key: str) -> None:
        """One dispatcher's keyword list and every description (in parallel)."""
        engine = self._engine_or_raise()
        listing, described = await asyncio.gather(
            engine.submit("list", link=key, description=f"{self.name}: list"),
            engine.submit("describe", "", link=key, description=f"{self.name}: describe"),
            return_exceptions=True)
        if isinstance(listing, BaseException):
            raise listing
        engine.listed(key, listing)
        descs = described.get("keywords") if isinstance(described, dict) else None
        if isinstance(descs, dict):
            for name, desc in descs.items():
                self._adopt(str(name).upper(), desc)
            return
        names = sorted(engine.links[key].keywords)       # too many to describe at once
        one = await asyncio.gather(*[engine.submit(
            "describe", name, on_reply=lambda r: (r.payload, r.raw),
            description=f"{self.name}.{name}: describe") for name in names])
        for name, (desc, raw) in zip(names, one):
            self._adopt(name, desc, raw)

    def _adopt(self, name: str, desc: Any, raw: Optional[bytes] = None) -> None:
        engine = self._engine_or_raise()
        if name in self._keywords:
            return
        kw = self._keywords[name] = Keyword(self, name, desc, raw)
        engine.kwobjs[name] = kw

    def _static_entry(self) -> Dict[str, Any]:
        z = self.config.zmq
        return {"dispatcher": "", "host": z.host, "protocol": z.protocol,
                "dispatch_port": z.dispatch_port, "broadcast_port": z.broadcast_port}

    async def _lookup(self) -> List[Dict[str, Any]]:
        engine = self._engine_or_raise()
        timeout = self.timeout if self._explicit_timeout else engine.router_timeout
        try:
            result = await engine.router_request(
                "lookup", self.name, {}, timeout=timeout,
                description=f"looking up service {self.name!r}")
        except RouterError as exc:
            if exc.code != protocol.E_NOT_FOUND:
                raise
            raise ServiceNotFound(f"service {self.name!r} is not known to "
                                  f"{engine.router_where}{await self._hint()}") from None
        entries, problems = split_entries((result or {}).get("dispatchers") or [])
        for problem in problems:
            self.log.info("service %r: ignoring a bad look-up entry: %s", self.name, problem)
        if problems and not entries:
            raise ProtocolError(protocol.E_REQUEST, (
                f"service {self.name!r}: {engine.router_where} lists no usable dispatcher "
                f"({'; '.join(problems[:3])})"))
        if not entries:
            raise ServiceNotFound(f"service {self.name!r}: {engine.router_where} lists no "
                                  f"dispatcher for it")
        return entries

    async def _hint(self) -> str:
        """'; did you mean 'focus'?' from the services the routers know."""
        engine = self._engine_or_raise()
        try:
            book = await engine.router_request("list", description="listing the router's book")
        except CauldronError:
            return ""
        names = {str(e.get("service") or "") for e in (book or {}).get("entries") or ()
                 if isinstance(e, dict)}
        close = difflib.get_close_matches(self.name, sorted(n for n in names if n), 3, 0.6)
        return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""

    # ------------------------------------------------------------- keywords
    def __getitem__(self, name: str) -> Keyword:
        if not isinstance(name, str):
            raise TypeError(f"a keyword name is a str, not {type(name).__name__}")
        upper = name.strip().upper()
        kw = self._keywords.get(upper)
        if kw is None:
            self._engine_or_raise()
            raise UnknownKeyword(unknown_keyword_message(self.name, upper, self.keywords()))
        return kw

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().upper() in self._keywords

    has_keyword = __contains__

    def keywords(self) -> List[str]:
        """Every keyword name of the service, sorted."""
        return sorted(self._keywords)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter([self._keywords[n] for n in sorted(self._keywords)])

    def isAlive(self) -> bool:  # noqa: N802 - KTL's name
        """True if every dispatcher of the service was heard from within liveness."""
        return self._engine_or_raise().is_alive()

    def dispatchers(self) -> List[Dict[str, Any]]:
        """Name, address and liveness of each dispatcher (for tools and logs)."""
        return [{"dispatcher": link.name, "address": link.dispatch_address,
                 "broadcast": link.broadcast_address, "alive": link.alive,
                 "in_sync": link.repair.in_sync(), "keywords": len(link.keywords)}
                for link in self._engine_or_raise().links.values()]

    async def wait_for(self, expression: str, timeout: Optional[float] = None,
                       case: bool = False) -> bool:
        """Until ``expression`` holds (see :func:`cauldron_zmq.aio.wait_for`); its
        keywords of this service are this Service's."""
        from .waits import Expression
        return await Expression(expression, case, services=[self]).wait(timeout)

    def __repr__(self) -> str:
        state = "closed" if self._engine is None else f"{len(self._keywords)} keywords"
        return f"<cauldron_zmq.aio.Service {self.name!r} {state}>"
