"""What the router's book holds: entries, blocked ports, callers, and the checks
every field passes before the book takes it.

Pure data and pure functions (no socket, thread or clock):
:class:`~cauldron_zmq.protocol.book.Book`, its
:class:`~cauldron_zmq.protocol.pairs.PairTable` and the state file's reader
(:mod:`cauldron_zmq.protocol.bookfile`) share them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Protocol, Tuple

from ..errors import CauldronError
from ..names import InvalidName, check_host, check_name
from . import wire as protocol
from .backoff import Schedule

__all__ = ["RouterRefusal", "Entry", "Block", "Caller", "NOBODY", "BLOCK_RETRY",
           "LIVE", "STALE", "DOWN", "Log", "QUIET", "TRACE"]

#: The states of an entry: heartbeating, silent for longer than ``expiry``, unregistered.
LIVE, STALE, DOWN = "live", "stale", "down"

DEBUG = 10      # the levels of the standard logging module, as plain numbers
TRACE = 5       # below DEBUG: every heartbeat (the router's -vvv)


class Log(Protocol):
    """What the book needs of a logger (a :class:`logging.Logger` has it all).

    The book takes its logger as an argument: importing :mod:`logging` here
    would import :mod:`threading` and :mod:`time` into a package that needs
    neither.
    """

    def isEnabledFor(self, level: int) -> bool: ...  # noqa: N802 - logging.Logger's name

    def log(self, level: int, msg: str, *args: Any) -> None: ...

    def debug(self, msg: str, *args: Any) -> None: ...

    def info(self, msg: str, *args: Any) -> None: ...

    def warning(self, msg: str, *args: Any) -> None: ...


class _Quiet:
    """A :class:`Log` that says nothing."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging.Logger's name
        return False

    def log(self, level: int, msg: str, *args: Any) -> None:
        pass

    def debug(self, msg: str, *args: Any) -> None:
        pass

    def info(self, msg: str, *args: Any) -> None:
        pass

    def warning(self, msg: str, *args: Any) -> None:
        pass


#: The default ``log`` of a book: silent.
QUIET: Log = _Quiet()


class RouterRefusal(CauldronError):
    """The book refuses a request; becomes an ``error`` reply with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Entry:
    """One (service, dispatcher) and the port pair it holds.

    ``registered`` is False once it unregistered (state ``down``); the pair
    stays with the name until the book needs it for someone else.
    ``instance`` names the process that registered it (a random token each
    dispatcher makes at start), so that a restart is told from a second
    copy and an unregister only removes its own entry; ``key`` is the CURVE
    public key it registered with (with ``[zmq-security]``), the only key
    besides an admin's that may change or remove it.  ``ready`` is False
    between a dispatcher's first registration and its bind: look-ups do not
    return it yet.  ``conflicts`` is what the dispatcher reports other routers
    of the installation refused it (``[zmq-router] replicas``), shown by
    ``cauldron-zmq services``; not persisted.  ``reported_stale`` only stops :meth:`Book.expire`
    reporting an expiry twice; it is not persisted.
    """

    service: str
    dispatcher: str
    host: str
    protocol: str
    pair: int
    dispatch_port: int
    broadcast_port: int
    last_heartbeat: float
    registered: bool = True
    keywords: Tuple[str, ...] = ()
    pid: Optional[int] = None
    reported_stale: bool = False
    instance: Optional[str] = None
    key: Optional[str] = None
    ready: bool = True
    conflicts: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.service}/{self.dispatcher}"


@dataclass
class Block:
    """A port a dispatcher could not bind: skipped until ``until``, then tried again.

    ``count`` blocks in a row make the next one last longer
    (:data:`BLOCK_RETRY`); a registration that binds the pair releases it.
    """

    until: float
    count: int = 1


#: How long a port reported unbindable is skipped: 30 s, doubling up to an hour.
BLOCK_RETRY = Schedule(30.0, 2.0, 3600.0)


def _check_name(kind: str, value: Any) -> str:
    """:func:`cauldron_zmq.names.check_name`, refused as ``bad-request``."""
    try:
        return check_name(kind, value)
    except InvalidName as exc:
        raise RouterRefusal(protocol.E_REQUEST, str(exc)) from None


def _check_host(value: str, transport: str) -> str:
    """An address or host name for tcp; for ipc a path prefix without control characters."""
    try:
        if transport == "tcp":
            return check_host(value)
        if not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise InvalidName(f"host {value[:60]!r} is not an ipc path prefix")
        return value
    except InvalidName as exc:
        raise RouterRefusal(protocol.E_REQUEST, str(exc)) from None


def _check_keywords(keywords: Optional[List[Any]]) -> Tuple[str, ...]:
    """Upper-cased, de-duplicated and sorted, as topics spell them."""
    if keywords is None:
        return ()
    names = set()
    for kw in keywords:
        if not isinstance(kw, str):
            raise RouterRefusal(protocol.E_REQUEST, "payload field 'keywords' must hold "
                                                    f"strings, got {type(kw).__name__}")
        names.add(_check_name("keyword", kw).upper())
    return tuple(sorted(names))


MAX_CONFLICTS = 8            # conflict reports kept per entry
MAX_CONFLICT_TEXT = 400      # characters kept of each


def _check_conflicts(items: Optional[List[Any]]) -> Optional[Tuple[str, ...]]:
    """What a dispatcher reports other routers refused it: a few bounded strings."""
    if items is None:
        return None
    if not all(isinstance(item, str) for item in items):
        raise RouterRefusal(protocol.E_REQUEST, "payload field 'conflicts' must hold strings")
    return tuple(item[:MAX_CONFLICT_TEXT] for item in items[:MAX_CONFLICTS])


def _field(payload: Any, name: str, kind: type, required: bool = True) -> Any:
    try:
        return protocol.field_of(payload, name, kind, required=required)
    except protocol.BadRequest as exc:
        raise RouterRefusal(protocol.E_REQUEST, str(exc)) from None


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as the socket layer knows it: the CURVE key (None
    without security) and whether that key, or the peer's address, may
    administer the book (admin key; loopback without security)."""

    key: Optional[str] = None
    admin: bool = False


NOBODY = Caller()


def _other_instance(entry: Optional[Entry], instance: Optional[str],
                    strict: bool = False) -> bool:
    """Whether a request comes from another process than the one that registered
    ``entry``.  An entry registered without an instance (an older dispatcher)
    is anybody's; a request without one is "other" only when ``strict``."""
    if entry is None or entry.instance is None:
        return False
    if instance is None:
        return strict
    return entry.instance != instance


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
