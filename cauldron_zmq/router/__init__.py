"""The router: an address book that tells clients where each dispatcher listens.

Three layers, from pure to I/O:

* :class:`Book` -- the state machine.  Plain data and methods that take
  ``now`` as an argument and return result dicts (or raise
  :class:`RouterRefusal`).  No sockets, no files, no clock: unit tests drive it
  directly.  ``docs/router.rst`` states the rules it implements.
* The state file -- :func:`save_state` writes the book atomically,
  :func:`read_state` reads it back and :func:`quarantine` moves a corrupt file
  aside so a human can look at it.
* :class:`Router` -- a thin socket loop: one ROUTER socket, one thread,
  :mod:`cauldron_zmq.protocol` to decode and encode, the book to decide.

:class:`RouterClient` is the DEALER side used by dispatchers, clients and the
``cauldron-zmq services`` command, and :func:`main` is the
``Cauldron-router-zmq`` console script (also ``python -m cauldron_zmq.router``).
"""
from __future__ import annotations

import collections
import heapq
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Deque, Dict, List, NoReturn, Optional, Set, Tuple, Union

import click
import zmq

from .. import __version__
from .. import protocol
from ..config import Config, endpoint, load_config
from ..protocol.backoff import Schedule
from ..files import set_aside, write_atomically
from ..limits import raise_file_limit
from ..names import InvalidName, check_host, check_name
from ..protocol.retry import Retry
from ..errors import (AuthenticationError, CauldronError, ConfigurationError, ProtocolError,
                     RouterError, TimeoutError, remote_exception)
from ..security import (FAILED, HANDSHAKE_EVENTS, REFUSED, SUCCEEDED, client_security,
                       frame_property, handshake_event, loopback, refused_message,
                       server_security)

__all__ = [
    "Book",
    "Caller",
    "Entry",
    "RouterRefusal",
    "Router",
    "RouterClient",
    "ask_routers",
    "first_good",
    "RouterStartError",
    "RouterBindError",
    "save_state",
    "read_state",
    "quarantine",
    "main",
    "LIVE",
    "STALE",
    "DOWN",
]

log = logging.getLogger("cauldron_zmq.router")

PROG = "Cauldron-router-zmq"

# Log levels of the verbosity scale: 0 shows NOTICE (where it listens, when it
# stops), -v INFO (registrations, expiries), -vv DEBUG (look-ups, heartbeats),
# -vvv TRACE (every message).
NOTICE = 25
TRACE = 5
logging.addLevelName(NOTICE, "NOTICE")
logging.addLevelName(TRACE, "TRACE")
VERBOSITY_LEVELS = (NOTICE, logging.INFO, logging.DEBUG, TRACE)

LIVE, STALE, DOWN = "live", "stale", "down"

STATE_FORMAT = "cauldron_zmq-router-book"
STATE_VERSION = 1
REFUSAL_TYPE = "RouterRefusal"
ADMIN_COMMANDS = frozenset({"forget", "unblock"})

POLL_MS = 100            # how promptly stop() and expiry are noticed
BATCH = 256              # messages handled between two looks at the stop flag
EXPIRY_CHECK_S = 0.25    # how often entries are checked for expiry
SHUTDOWN_LINGER_MS = 1000  # lets the reply to "shutdown" leave before the socket closes


# =============================================================================
# The book (sans I/O)
# =============================================================================

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


class Book:
    """Who holds which port pair, and since when we last heard from them.

    Pair ``i`` is ``(first_port + 2i, first_port + 2i + 1)``.  A name keeps its
    pair for as long as the book knows it.  New names get the lowest
    never-used pair; only when none is left is a ``down`` pair, then a
    ``stale`` one, taken from its old name, the longest silent first.  Ports
    a dispatcher reported it could not bind (``avoid``) are ``blocked`` for a
    while (:data:`BLOCK_RETRY`), then handed out again; a registration that
    binds them releases them.  A pair held by another name is never blocked
    by someone's ``avoid``.  ``revision`` counts changes worth persisting
    (not heartbeats), so the owner knows when to save.
    """

    def __init__(self, first_port: int, last_port: int, expiry: float,
                 protocol: str = "tcp", block_retry: Schedule = BLOCK_RETRY) -> None:
        if last_port - first_port + 1 < 2:
            raise ValueError(f"port range {first_port}..{last_port} holds no pair")
        if expiry <= 0:
            raise ValueError("expiry must be positive")
        self.first_port = first_port
        self.last_port = last_port
        self.expiry = float(expiry)
        self.protocol = protocol
        self.block_retry = block_retry
        self.revision = 0
        self._services: Dict[str, Dict[str, Entry]] = {}
        self._owners: Dict[int, Entry] = {}
        self._blocks: Dict[int, Block] = {}
        # Candidates for the lowest never-used pair: a heap whose stale items
        # (owned since) are skipped lazily by _first_free().
        self._free: List[int] = list(range(self.pairs))

    # ------------------------------------------------------------- basics
    @property
    def pairs(self) -> int:
        """How many pairs the range holds (an odd last port is left unused)."""
        return (self.last_port - self.first_port + 1) // 2

    @property
    def range_text(self) -> str:
        return f"{self.first_port}..{self.last_port}"

    @property
    def blocked(self) -> List[int]:
        """The ports reported unbindable and not released since (inside the range)."""
        return sorted(self._blocks)

    def blocked_at(self, now: float) -> List[int]:
        """The blocked ports still skipped at ``now`` (the others are tried again)."""
        return sorted(p for p, b in self._blocks.items() if b.until > now)

    def ports(self, pair: int) -> Tuple[int, int]:
        base = self.first_port + 2 * pair
        return base, base + 1

    def pair_of(self, port: int) -> Optional[int]:
        """The pair a port belongs to, or None outside the range (or the odd last port)."""
        pair = (port - self.first_port) // 2
        return pair if port >= self.first_port and pair < self.pairs else None

    def __len__(self) -> int:
        return len(self._owners)

    def entries(self) -> List[Entry]:
        """Every entry, sorted by service then dispatcher."""
        return sorted(self._owners.values(), key=lambda e: (e.service, e.dispatcher))

    def get(self, service: str, dispatcher: str) -> Optional[Entry]:
        return self._services.get(service.lower(), {}).get(dispatcher)

    def state(self, entry: Entry, now: float) -> str:
        if not entry.registered:
            return DOWN
        return STALE if now - entry.last_heartbeat > self.expiry else LIVE

    def describe(self, entry: Entry, now: float) -> Dict[str, Any]:
        """The protocol's ENTRY (``conflicts`` only when the dispatcher reported some)."""
        described = {
            "service": entry.service, "dispatcher": entry.dispatcher, "host": entry.host,
            "protocol": entry.protocol, "dispatch_port": entry.dispatch_port,
            "broadcast_port": entry.broadcast_port, "state": self.state(entry, now),
            "last_heartbeat": entry.last_heartbeat,
            "age": max(0.0, now - entry.last_heartbeat), "keywords": list(entry.keywords),
            "pid": entry.pid, "ready": entry.ready,
        }
        if entry.conflicts:
            described["conflicts"] = list(entry.conflicts)
        return described

    # ----------------------------------------------------------- commands
    def handle(self, command: str, target: str, payload: Any, *, now: float,
               caller: Caller = NOBODY) -> Dict[str, Any]:
        """Run one book command from its wire form; payload errors are ``bad-request``."""
        if command == "list":
            return self.list(now=now)
        if payload is not None and not isinstance(payload, dict):
            raise RouterRefusal(protocol.E_REQUEST,
                                f"payload must be a JSON object, got {type(payload).__name__}")
        if command == "lookup":
            return self.lookup(target, now=now)
        if command == "unblock":
            return self.unblock(_field(payload, "port", int, required=False), now=now,
                                caller=caller)
        if command == "forget":
            return self.forget(target, _field(payload, "dispatcher", str, required=False),
                               now=now, caller=caller)
        dispatcher = _field(payload, "dispatcher", str)
        instance = _field(payload, "instance", str, required=False)
        conflicts = _check_conflicts(_field(payload, "conflicts", list, required=False))
        if command == "register":
            return self.register(target, dispatcher, _field(payload, "host", str),
                                 keywords=_field(payload, "keywords", list, required=False),
                                 pid=_field(payload, "pid", int, required=False),
                                 prefer=_field(payload, "prefer", list, required=False),
                                 avoid=_field(payload, "avoid", list, required=False),
                                 instance=instance,
                                 ready=_field(payload, "ready", bool, required=False),
                                 strict=_field(payload, "strict", bool, required=False) or False,
                                 conflicts=conflicts, now=now, caller=caller)
        if command == "unregister":
            return self.unregister(target, dispatcher, instance=instance, now=now, caller=caller)
        if command == "heartbeat":
            return self.heartbeat(target, dispatcher, instance=instance, conflicts=conflicts,
                                  now=now, caller=caller)
        raise RouterRefusal(protocol.E_COMMAND, f"the book has no command {command!r}")

    def register(self, service: str, dispatcher: str, host: str, *,
                 keywords: Optional[List[Any]] = None, pid: Optional[int] = None,
                 prefer: Optional[List[Any]] = None, avoid: Optional[List[Any]] = None,
                 instance: Optional[str] = None, ready: Optional[bool] = None,
                 strict: bool = False, conflicts: Optional[Tuple[str, ...]] = None,
                 now: float, caller: Caller = NOBODY) -> Dict[str, Any]:
        """Give (service, dispatcher) a pair: ``prefer`` if it is free, else the
        one it holds, else a free one.

        ``strict`` (a dispatcher already bound to ``prefer``, registering with
        a further router of the installation): that pair or ``conflict``, never
        another one.  The pair is taken from a name that is not live; a live
        holder is a conflict the dispatcher reports (``conflicts``, shown by
        ``cauldron-zmq services``), never a silent move.

        ``ready=False`` reserves (a dispatcher about to bind): the entry is
        not returned by look-ups until the same instance registers again
        with ``ready`` true (the default, so one-step registration still
        works).  When another live instance on the same host holds the name,
        a reservation changes nothing and the answer says who holds it
        (``held_by``): the dispatcher finds out, by binding and probing,
        whether that is a restart or a second copy.  ``avoid`` ports become
        blocked for a while, unless another name holds them.  Refused with
        ``conflict`` when a live dispatcher on another host holds the name
        or already owns one of the keywords, with ``not-allowed`` when the
        entry was registered with another CURVE key, and with
        ``range-exhausted`` when no pair can be given.  Nothing changes when
        it is refused.
        """
        service = _check_name("service", service).lower()
        _check_name("dispatcher", dispatcher)
        _check_host(host, self.protocol)
        if instance is not None:
            _check_name("instance", instance)
        kws = _check_keywords(keywords)
        wanted = self._preferred_pair(prefer)
        if strict and wanted is None:
            raise RouterRefusal(protocol.E_CONFLICT, (
                f"{service}/{dispatcher} asks for ports {prefer}, which are not a pair of "
                f"this router's range {self.range_text}" if prefer else
                "a strict registration needs 'prefer', the pair it holds"))
        entry = self.get(service, dispatcher)
        self._check_owner(entry, caller, "register")
        live = entry is not None and self.state(entry, now) == LIVE
        if live and entry.host != host:
            raise RouterRefusal(protocol.E_CONFLICT, (
                f"{entry.name} is held by a live dispatcher on host {entry.host!r}; "
                f"refusing the registration from host {host!r}"))
        self._check_keyword_owners(service, dispatcher, kws, now)
        other_live = live and _other_instance(entry, instance)
        avoided = self._ports_in_range(avoid)
        if other_live and ready is False:
            return self._held_answer(entry, avoided)
        blocked_ports = self._blockable(avoided, entry) | set(self.blocked_at(now))
        blocked = {self.pair_of(p) for p in blocked_ports}
        if strict:
            assert wanted is not None
            pair, victim, how = self._strict_pair(service, dispatcher, entry, wanted, now)
        else:
            pair, victim, how = self._choose_pair(entry, wanted, blocked, now)
        # ---- accepted: from here on the book changes
        self._block(self._blockable(avoided, entry), f"{service}/{dispatcher}", now)
        if victim is not None:
            log.info("ports %d/%d of %s (%s, silent %.1f s) given to %s/%s",
                     victim.dispatch_port, victim.broadcast_port, victim.name,
                     self.state(victim, now), now - victim.last_heartbeat, service, dispatcher)
            self._remove(victim)
        if entry is None:
            dport, bport = self.ports(pair)
            entry = Entry(service, dispatcher, host, self.protocol, pair, dport, bport, now)
            self._add(entry)
        elif entry.pair != pair:
            self._move(entry, pair)
        if entry.host != host:
            how += f", moved from host {entry.host}"
        if other_live:
            how += f", taking over from pid {entry.pid} (it no longer holds the ports)"
        entry.host, entry.keywords, entry.pid = host, kws, pid
        entry.instance, entry.ready = instance, ready is not False
        if conflicts is not None:
            entry.conflicts = conflicts
        if caller.key is not None and (entry.key is None or not caller.admin):
            entry.key = caller.key
        entry.registered, entry.last_heartbeat, entry.reported_stale = True, now, False
        if entry.ready:
            self._release(entry)
        self.revision += 1
        log.info("%s %s at %s ports %d/%d (%s, %d keywords)",
                 "registered" if entry.ready else "reserved", entry.name, host,
                 entry.dispatch_port, entry.broadcast_port, how, len(kws))
        answer = {"service": service, "dispatcher": dispatcher, "host": host,
                  "protocol": entry.protocol, "dispatch_port": entry.dispatch_port,
                  "broadcast_port": entry.broadcast_port}
        if not entry.ready:
            answer["ready"] = False
        return answer

    def _held_answer(self, entry: Entry, avoided: Set[int]) -> Dict[str, Any]:
        """A reservation for a name another live instance holds: change nothing, say who."""
        if avoided & {entry.dispatch_port, entry.broadcast_port}:
            raise RouterRefusal(protocol.E_CONFLICT, (
                f"{entry.name} is held by live pid {entry.pid} on {entry.host}, whose ports "
                f"{entry.dispatch_port}/{entry.broadcast_port} are bound but do not answer as "
                f"{entry.name}; if that process is gone, 'cauldron-zmq forget {entry.name}'"))
        return {"service": entry.service, "dispatcher": entry.dispatcher, "host": entry.host,
                "protocol": entry.protocol, "dispatch_port": entry.dispatch_port,
                "broadcast_port": entry.broadcast_port, "ready": False,
                "held_by": {"pid": entry.pid, "host": entry.host}}

    def lookup(self, service: str, *, now: float) -> Dict[str, Any]:
        """Every registered dispatcher of the service; never allocates."""
        service = service.lower()
        found = [e for e in self._services.get(service, {}).values() if e.registered and e.ready]
        if not found:
            raise RouterRefusal(protocol.E_NOT_FOUND,
                                f"no dispatcher is registered for service {service!r}")
        found.sort(key=lambda e: e.dispatcher)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("lookup %r: %s", service, ", ".join(
                f"{e.dispatcher}@{e.host}:{e.dispatch_port}" for e in found))
        return {"service": service, "dispatchers": [self.describe(e, now) for e in found]}

    def unregister(self, service: str, dispatcher: str, *, instance: Optional[str] = None,
                   now: float, caller: Caller = NOBODY) -> Dict[str, Any]:
        """Mark the entry down; its pair stays reserved for the name.

        Only the instance that registered it may (an entry registered without
        an instance, by an older dispatcher: anyone; an operator removes an
        entry with :meth:`forget`):
        a stopping second copy, or a stray request, must not take the name
        from the dispatcher that serves it.
        """
        entry = self._known(service, dispatcher)
        self._check_owner(entry, caller, "unregister")
        if _other_instance(entry, instance, strict=True):
            raise RouterRefusal(protocol.E_NOT_ALLOWED, (
                f"{entry.name} was registered by another instance (pid {entry.pid} on "
                f"{entry.host}); only that one may unregister it"))
        if entry.registered:
            entry.registered, entry.last_heartbeat = False, now
            self.revision += 1
            log.info("unregistered %s (ports %d/%d stay reserved)", entry.name,
                     entry.dispatch_port, entry.broadcast_port)
        return self.describe(entry, now)

    def heartbeat(self, service: str, dispatcher: str, *, instance: Optional[str] = None,
                  conflicts: Optional[Tuple[str, ...]] = None,
                  now: float, caller: Caller = NOBODY) -> Dict[str, Any]:
        """Keep a live entry live.  A stale or down one must register again.

        Re-registering re-runs the host and keyword checks that a dispatcher
        silent for longer than ``expiry`` may no longer pass.  The answer
        holds the entry's ports: a dispatcher whose entry was moved learns
        so here.  A heartbeat of another instance than the registered one
        is ``conflict``.  Heartbeats do not change ``revision``: persisting
        each one would write constantly.
        """
        entry = self.get(service, dispatcher)
        if entry is None or self.state(entry, now) != LIVE:
            why = "unknown" if entry is None else self.state(entry, now)
            raise RouterRefusal(protocol.E_NOT_FOUND, (
                f"{service.lower()}/{dispatcher} is {why} here; register again"))
        self._check_owner(entry, caller, "heartbeat for")
        if _other_instance(entry, instance, strict=True):
            raise RouterRefusal(protocol.E_CONFLICT, (
                f"{entry.name} is now served by pid {entry.pid} on {entry.host}"))
        entry.last_heartbeat = now
        if conflicts is not None:
            entry.conflicts = conflicts
        log.log(TRACE, "heartbeat from %s", entry.name)
        return self.describe(entry, now)

    def list(self, *, now: float) -> Dict[str, Any]:
        return {"entries": [self.describe(e, now) for e in self.entries()],
                "first_port": self.first_port, "last_port": self.last_port,
                "blocked": self.blocked}

    def forget(self, service: str, dispatcher: Optional[str] = None, *, now: float,
               caller: Caller = NOBODY) -> Dict[str, Any]:
        """Remove entries for good (an operator's clean-up); admin only.

        One dispatcher, or every dispatcher of the service; their pairs are
        free again.  A live dispatcher that is forgotten registers again at
        its next heartbeat.
        """
        self._check_admin(caller, "forget")
        by_name = self._services.get(service.lower(), {})
        names = [dispatcher] if dispatcher is not None else sorted(by_name)
        gone = []
        for name in names:
            entry = by_name.get(name)
            if entry is None:
                raise RouterRefusal(protocol.E_NOT_FOUND,
                                    f"{service.lower()}/{name} is not in the book")
            gone.append(self.describe(entry, now))
        if not gone:
            raise RouterRefusal(protocol.E_NOT_FOUND, f"service {service.lower()!r} is not "
                                                      "in the book")
        for item in gone:
            entry = self._services[item["service"]][item["dispatcher"]]
            self._remove(entry)
            heapq.heappush(self._free, entry.pair)
            log.warning("forgot %s (ports %d/%d are free again)", entry.name,
                        entry.dispatch_port, entry.broadcast_port)
        self.revision += 1
        return {"forgotten": gone}

    def unblock(self, port: Optional[int] = None, *, now: float,
                caller: Caller = NOBODY) -> Dict[str, Any]:
        """Release one blocked port (or all of them); admin only."""
        self._check_admin(caller, "unblock")
        if port is not None and port not in self._blocks:
            raise RouterRefusal(protocol.E_NOT_FOUND, f"port {port} is not blocked")
        ports = [port] if port is not None else self.blocked
        for p in ports:
            del self._blocks[p]
            pair = self.pair_of(p)
            if pair is not None:
                heapq.heappush(self._free, pair)
        if ports:
            self.revision += 1
            log.warning("unblocked port(s) %s", ", ".join(map(str, ports)))
        return {"unblocked": ports}

    def expire(self, now: float) -> List[Dict[str, Any]]:
        """The entries that went stale since the last call (each reported once)."""
        expired = []
        for entry in self._owners.values():
            if entry.reported_stale or self.state(entry, now) != STALE:
                continue
            entry.reported_stale = True
            log.info("expired %s: no heartbeat for %.1f s", entry.name, now - entry.last_heartbeat)
            expired.append(self.describe(entry, now))
        return expired

    # ------------------------------------------------------------ helpers
    def _known(self, service: str, dispatcher: str) -> Entry:
        entry = self.get(service, dispatcher)
        if entry is None:
            raise RouterRefusal(protocol.E_NOT_FOUND,
                                f"{service.lower()}/{dispatcher} is not registered")
        return entry

    @staticmethod
    def _check_owner(entry: Optional[Entry], caller: Caller, what: str) -> None:
        """With CURVE: only the key an entry was registered with, or an admin key.

        Without security (``caller.key`` None) there is no key to compare:
        keys saved while it was on do not lock anyone out once it is off.
        """
        if entry is None or entry.key is None or caller.key is None or caller.admin or \
                caller.key == entry.key:
            return
        raise RouterRefusal(protocol.E_NOT_ALLOWED, (
            f"{what} {entry.name} refused: it was registered with another key; only that "
            "key or an admin key of [zmq-security] may change it"))

    @staticmethod
    def _check_admin(caller: Caller, what: str) -> None:
        if not caller.admin:
            raise RouterRefusal(protocol.E_NOT_ALLOWED, (
                f"{what} refused: only an admin key of [zmq-security] may, or without "
                "security a client on the router's own host"))

    def _check_keyword_owners(self, service: str, dispatcher: str,
                              keywords: Tuple[str, ...], now: float) -> None:
        if not keywords:
            return
        wanted = set(keywords)
        for other in self._services.get(service, {}).values():
            if other.dispatcher == dispatcher or self.state(other, now) != LIVE:
                continue
            clash = wanted.intersection(other.keywords)
            if clash:
                raise RouterRefusal(protocol.E_CONFLICT, (
                    f"keyword(s) {', '.join(sorted(clash))} of service {service!r} already "
                    f"owned by live dispatcher {other.dispatcher!r}; refusing them to "
                    f"dispatcher {dispatcher!r}"))

    def _preferred_pair(self, prefer: Optional[List[Any]]) -> Optional[int]:
        """The pair index of ``prefer``, or None when it is not a pair of the range."""
        if prefer is None:
            return None
        if len(prefer) != 2 or not all(_is_port(p) for p in prefer):
            raise RouterRefusal(protocol.E_REQUEST,
                                "payload field 'prefer' must be [dispatch_port, broadcast_port]")
        pair = self.pair_of(prefer[0])
        if pair is None or self.ports(pair) != (prefer[0], prefer[1]):
            return None
        return pair

    def _ports_in_range(self, avoid: Optional[List[Any]]) -> Set[int]:
        if avoid is None:
            return set()
        if not all(_is_port(p) for p in avoid):
            raise RouterRefusal(protocol.E_REQUEST,
                                "payload field 'avoid' must be a list of port numbers")
        return {p for p in avoid if self.pair_of(p) is not None}

    def _blockable(self, ports: Set[int], entry: Optional[Entry]) -> Set[int]:
        """The avoided ports that may be blocked: not those of a pair another name holds
        (its dispatcher binds them; nobody else could, and nobody else may move it)."""
        return {p for p in ports if self._owners.get(self.pair_of(p), entry) is entry}

    def _choose_pair(self, entry: Optional[Entry], wanted: Optional[int], blocked: Set[Any],
                     now: float) -> Tuple[int, Optional[Entry], str]:
        """(pair, entry to evict for it or None, how) -- decides, changes nothing."""
        if wanted is not None and wanted not in blocked:
            holder = self._owners.get(wanted)
            if holder is None or holder is entry:
                return wanted, None, "preferred pair"
        if entry is not None and entry.pair not in blocked:
            return entry.pair, None, "same pair"
        free = self._first_free(blocked)
        if free is not None:
            return free, None, "new pair"
        reusable = [e for e in self._owners.values()
                    if e is not entry and e.pair not in blocked and self.state(e, now) != LIVE]
        if not reusable:
            raise RouterRefusal(protocol.E_EXHAUSTED, (
                f"no free port pair in {self.range_text} ({self.pairs} pairs: "
                f"{len(self._owners)} held, {len(blocked)} blocked; none down or stale)"))
        victim = min(reusable, key=lambda e: (e.registered, e.last_heartbeat, e.pair))
        return victim.pair, victim, f"reused the pair of {victim.name}"

    def _strict_pair(self, service: str, dispatcher: str, entry: Optional[Entry], wanted: int,
                     now: float) -> Tuple[int, Optional[Entry], str]:
        """(pair, entry to evict, how) for a strict registration: ``wanted`` or conflict.

        Blocks do not count: the dispatcher binds the pair already.
        """
        holder = self._owners.get(wanted)
        if holder is None or holder is entry:
            return wanted, None, "the pair it holds"
        if self.state(holder, now) == LIVE:
            dport, bport = self.ports(wanted)
            raise RouterRefusal(protocol.E_CONFLICT, (
                f"{service}/{dispatcher} holds ports {dport}/{bport}, but this router gives "
                f"them to live {holder.name} on {holder.host} (pid {holder.pid}); "
                "the routers of the installation disagree"))
        return wanted, holder, f"the pair it holds, taken from {holder.name}"

    def _first_free(self, blocked: Set[Any]) -> Optional[int]:
        """The lowest pair nobody holds and nobody blocked; the heap is cleaned lazily."""
        heap, kept, found = self._free, [], None
        while heap:
            pair = heap[0]
            if pair in self._owners:
                heapq.heappop(heap)              # stale candidate: owned since
            elif pair in blocked:
                kept.append(heapq.heappop(heap))  # blocked for now: tried again later
            else:
                found = pair
                break
        for pair in kept:
            heapq.heappush(heap, pair)
        return found

    def _block(self, ports: Set[int], name: str, now: float) -> None:
        for port in sorted(ports):
            old = self._blocks.get(port)
            count = old.count + 1 if old is not None else 1
            delay = self.block_retry.delay(count - 1)
            self._blocks[port] = Block(now + delay, count)
            log.warning("port %d blocked (%s could not bind it): its pair is skipped for "
                        "%.0f s, then tried again", port, name, delay)

    def _release(self, entry: Entry) -> None:
        """The entry's dispatcher binds its pair: whatever blocked those ports is gone."""
        for port in (entry.dispatch_port, entry.broadcast_port):
            if self._blocks.pop(port, None) is not None:
                log.info("port %d is bindable again (%s binds it); released", port, entry.name)

    def _move(self, entry: Entry, pair: int) -> None:
        old = entry.pair
        del self._owners[old]
        heapq.heappush(self._free, old)
        entry.pair = pair
        entry.dispatch_port, entry.broadcast_port = self.ports(pair)
        self._owners[pair] = entry

    def _add(self, entry: Entry) -> None:
        self._services.setdefault(entry.service, {})[entry.dispatcher] = entry
        self._owners[entry.pair] = entry

    def _remove(self, entry: Entry) -> None:
        by_name = self._services[entry.service]
        del by_name[entry.dispatcher]
        if not by_name:
            del self._services[entry.service]
        del self._owners[entry.pair]

    # -------------------------------------------------------- persistence
    def to_data(self, now: Optional[float] = None) -> Dict[str, Any]:
        """The book as JSON-able data for the state file."""
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "saved": now if now is not None else 0.0,
            "first_port": self.first_port, "last_port": self.last_port,
            "blocked": self.blocked,
            "entries": [
                {"service": e.service, "dispatcher": e.dispatcher, "host": e.host,
                 "protocol": e.protocol, "dispatch_port": e.dispatch_port,
                 "broadcast_port": e.broadcast_port, "registered": e.registered,
                 "last_heartbeat": e.last_heartbeat, "keywords": list(e.keywords),
                 "pid": e.pid, "instance": e.instance, "key": e.key, "ready": e.ready}
                for e in self.entries()],
        }

    @classmethod
    def from_data(cls, data: Any, *, first_port: int, last_port: int, expiry: float,
                  protocol: str = "tcp", now: float,
                  block_retry: Schedule = BLOCK_RETRY) -> "Book":
        """Rebuild a book saved by :meth:`to_data`; raises ValueError when corrupt.

        Registered entries get a fresh grace period (``last_heartbeat = now``):
        their dispatchers had no router to heartbeat to.  Entries whose ports
        no longer fit the configured range are dropped with a warning (the
        range was changed; those dispatchers will be told to register again),
        and so are blocked ports outside it.  Blocked ports are skipped for
        one more :data:`BLOCK_RETRY` period, then tried again.
        """
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError("not a router state file")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state file version {data.get('version')!r}")
        rows, blocked = data.get("entries"), data.get("blocked", [])
        if not isinstance(rows, list):
            raise ValueError("'entries' must be a list")
        if not isinstance(blocked, list) or not all(_is_port(p) for p in blocked):
            raise ValueError("'blocked' must be a list of ports")
        book = cls(first_port, last_port, expiry, protocol, block_retry)
        book._blocks = {p: Block(now + block_retry.delay(0)) for p in blocked
                        if book.pair_of(p) is not None}
        for row in rows:
            entry = book._entry_from_row(row, now)
            if entry is not None:
                book._add(entry)
        book._free = [i for i in range(book.pairs) if i not in book._owners]
        return book

    def _entry_from_row(self, row: Any, now: float) -> Optional[Entry]:
        service, dispatcher = _typed(row, "service", str), _typed(row, "dispatcher", str)
        host = _typed(row, "host", str)
        try:        # an older release accepted any name and host: drop those, keep the rest
            service = _check_name("service", service).lower()
            _check_name("dispatcher", dispatcher)
            _check_host(host, self.protocol)
        except RouterRefusal as exc:
            log.warning("state file: dropping the entry %.80r/%.80r: %s", service, dispatcher,
                        exc.message)
            return None
        try:
            proto = _typed(row, "protocol", str)
            dport, bport = _typed(row, "dispatch_port", int), _typed(row, "broadcast_port", int)
            registered = _typed(row, "registered", bool)
            last = float(_typed(row, "last_heartbeat", (int, float)))
            keywords = _check_keywords(_typed(row, "keywords", list))
            pid = row.get("pid")
        except RouterRefusal as exc:
            raise ValueError(f"bad entry: {exc.message}") from None
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
            raise ValueError("bad entry: 'pid' must be an integer or null")
        instance, key, ready = row.get("instance"), row.get("key"), row.get("ready", True)
        if not all(v is None or isinstance(v, str) for v in (instance, key)) or \
                not isinstance(ready, bool):
            raise ValueError("bad entry: 'instance', 'key' or 'ready' of the wrong type")
        pair = self.pair_of(dport)
        if pair is None or self.ports(pair) != (dport, bport):
            log.warning("state file: dropping %s/%s, ports %d/%d are not a pair of %s",
                        service, dispatcher, dport, bport, self.range_text)
            return None
        if pair in self._owners or dispatcher in self._services.get(service, {}):
            raise ValueError(f"ports {dport}/{bport} or {service}/{dispatcher} appear twice")
        return Entry(service, dispatcher, host, proto, pair, dport, bport,
                     now if registered else last, registered, keywords, pid,
                     instance=instance, key=key, ready=ready)


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


def _typed(row: Any, name: str, kind: Union[type, Tuple[type, ...]]) -> Any:
    if not isinstance(row, dict):
        raise ValueError("an entry must be an object")
    value = row.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"entry field {name!r} is missing or of the wrong type")
    return value


# =============================================================================
# The state file
# =============================================================================

def save_state(path: str, data: Dict[str, Any]) -> None:
    """Write ``data`` as JSON so that a crash leaves the old file or the new one."""
    write_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def read_state(path: str) -> Optional[Any]:
    """The parsed JSON of a state file, or None if there is none.

    Raises OSError (unreadable) or ValueError (not UTF-8 JSON).
    """
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except (FileNotFoundError, NotADirectoryError):
        return None             # nothing saved yet (saving will say what is wrong)
    return protocol.loads(raw)


def quarantine(path: str, reason: str) -> Optional[str]:
    """Move a bad state file to ``<file>.corrupt-<timestamp>`` and say so loudly.

    Returns the new name, or None if it could not be moved (also logged).
    """
    try:
        target = set_aside(path)
    except OSError as exc:
        log.error("state file %s is unusable (%s) and cannot be moved aside: %s; "
                  "starting with an empty book", path, reason, exc)
        return None
    log.error("state file %s is unusable (%s); moved it to %s and started with an empty book",
              path, reason, target)
    return target


# =============================================================================
# The router (thin socket layer)
# =============================================================================

class RouterStartError(CauldronError):
    """The router could not start (its process died, or it did not answer in time)."""


class RouterBindError(RouterStartError, OSError):
    """The router's address cannot be bound; the message names it."""


def bind_address(config: Config) -> str:
    router = config.router
    if router.protocol == "ipc":
        return f"ipc://{router.host}"
    return endpoint(router.protocol, router.host, router.port, bind=True)


class Router:
    """Serves a :class:`Book` on a ROUTER socket at ``[zmq-router]``.

    ``serve()`` runs in the calling thread; ``start()`` runs it in the
    background as ``config.router.process`` says (a thread, or a separate
    ``python -m cauldron_zmq.router`` process so the router keeps its own
    GIL).  The socket is created, used and closed by the one thread that
    serves, with a context of its own.
    """

    def __init__(self, config: Union[str, "os.PathLike[str]", Config, None] = None) -> None:
        self.config = load_config(config)
        self.address = self.config.router_address()
        self.bind_address = bind_address(self.config)
        self.book: Optional[Book] = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._lock = threading.Lock()
        self._active = False
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._serving_ident: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._relay: Optional[threading.Thread] = None
        self._proc_lines: Deque[str] = collections.deque(maxlen=20)
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self._saved_revision = -1
        self._save_retry = Retry(f"saving the router's book to {self.config.router.state_file}")
        self._started = 0.0
        #: The endpoint actually bound (ZMQ_LAST_ENDPOINT), while serving in-process.
        self.endpoint: Optional[str] = None
        self._security: Any = None        # security.ServerSecurity with [zmq-security] enable
        self._peer: Any = None            # first frame of the request being answered
        self._malformed = protocol.Throttle()   # a peer sending garbage must not flood the log

    # ------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        """True while serving, or while its router process is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._active

    @property
    def pid(self) -> int:
        """The pid of the process that serves (the child's in process mode)."""
        return self._proc.pid if self._proc is not None else os.getpid()

    def serve(self) -> None:
        """Serve in this thread until :meth:`stop` or a ``shutdown`` request.

        Raises :class:`RouterBindError` if the address cannot be bound.  The
        book is loaded from the state file first and saved on the way out.
        """
        self._claim()
        self._serve()

    def start(self, timeout: float = 10.0) -> "Router":
        """Serve in the background; returns once the socket is bound and serving.

        Raises :class:`RouterBindError` naming the address if it is in use,
        :class:`RouterStartError` for anything else that stops it starting.
        """
        if self.config.router.process == "process":
            if self.running:
                raise RuntimeError("this Router is already running")
            self._start_process(timeout)
        else:
            self._start_thread(timeout)
        return self

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """True once serving (seconds; None waits for ever).  Re-raises a start failure."""
        if not self._ready.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return self.running

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: the socket is closed and the thread or process gone on return.

        From inside the serving thread (a signal handler during :meth:`serve`)
        it only asks the loop to end.
        """
        self._stop.set()
        if self._proc is not None:
            self._stop_process(timeout)
        elif self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("router thread did not stop within %.1f s", timeout)
                return
            self._thread = None
        elif self._serving_ident not in (None, threading.get_ident()):
            self._stopped.wait(timeout)

    def __enter__(self) -> "Router":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _claim(self) -> None:
        """Mark this Router busy; one serve() at a time."""
        with self._lock:
            if self._active:
                raise RuntimeError("this Router is already serving")
            self._active = True
        self._stop.clear()
        self._stopped.clear()
        self._ready.clear()
        self._error = None

    def _serve(self) -> None:
        self._serving_ident = threading.get_ident()
        context = zmq.Context()
        sock: Optional[zmq.Socket] = None
        auth: Any = None
        linger = 0
        try:
            raise_file_limit()
            self._security = server_security(self.config, "router")
            if self._security is not None:
                auth = self._security.start_authenticator(context)
            self.book = self._load_book()
            sock = self._bind(context)
            self._started = time.time()
            log.log(NOTICE, "router %s (pid %d) listening on %s, ports %s, state file %s",
                    __version__, os.getpid(), self.bind_address, self.book.range_text,
                    self.config.router.state_file or "none")
            self._ready.set()
            if self._loop(sock):
                linger = SHUTDOWN_LINGER_MS
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            try:
                if sock is not None:
                    self._save(final=True)
                    sock.close(linger=linger)
                if auth is not None:
                    auth.stop()
                context.term()
            finally:
                self._serving_ident = None
                with self._lock:
                    self._active = False
                self._ready.set()       # wake waiters; they look at _error
                self._stopped.set()
                if sock is not None:
                    log.log(NOTICE, "router on %s stopped", self.bind_address)

    def _start_thread(self, timeout: float) -> None:
        self._claim()

        def run() -> None:
            try:
                self._serve()
            except BaseException:   # noqa: BLE001 - kept in _error for start()
                pass

        self._thread = threading.Thread(target=run, name=f"cauldron-router {self.address}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RouterStartError(f"router on {self.bind_address} not ready within {timeout} s")
        if self._error is not None:
            self._thread.join(timeout)
            self._thread = None
            error = self._error
            if isinstance(error, CauldronError):
                raise error
            raise RouterStartError(f"router on {self.bind_address} failed: {error}") from error

    # ---------------------------------------------------------- process mode
    def _start_process(self, timeout: float) -> None:
        """Run ``python -m cauldron_zmq.router -c <copy of our config>``.

        Ready means it answered a ping with *its* pid: another router already
        on the address must not be mistaken for ours.
        """
        self._stop_process(0)       # leftovers of a previous run
        self._stop.clear()
        self._ready.clear()
        self._error = None
        self._tmpdir = tempfile.TemporaryDirectory(prefix="cauldron-router-")
        path = os.path.join(self._tmpdir.name, "router.toml")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(self.config.to_toml())
        self._proc_lines.clear()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "cauldron_zmq.router", "-c", path],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_child_env())
        self._relay = threading.Thread(target=self._relay_stderr, args=(self._proc.stderr,),
                                       name="cauldron-router stderr", daemon=True)
        self._relay.start()
        try:
            self._await_child(timeout)
        except BaseException:
            self._stop_process(1.0)
            raise
        self._ready.set()

    def _await_child(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        context = zmq.Context()
        try:
            with RouterClient(self.config, timeout=100, context=context) as client:
                while time.monotonic() < deadline:
                    if self._proc.poll() is not None:
                        raise self._child_failure()
                    try:
                        if client.ping().get("pid") == self._proc.pid:
                            return
                    except TimeoutError:
                        continue
                    time.sleep(0.05)    # someone else answers: wait for ours to fail or bind
        finally:
            context.term()
        raise RouterStartError(
            f"router process on {self.bind_address} not ready within {timeout} s")

    def _child_failure(self) -> RouterStartError:
        assert self._proc is not None and self._relay is not None
        self._relay.join(2.0)
        last = self._proc_lines[-1] if self._proc_lines else ""
        message = last[len(PROG) + 2:] if last.startswith(PROG + ": ") else last
        if "cannot bind" in message:
            return RouterBindError(message)
        return RouterStartError(f"router process exited with status {self._proc.returncode}"
                                + (f": {message}" if message else ""))

    def _relay_stderr(self, stream: IO[bytes]) -> None:
        """Pass the child's stderr on, keeping the last lines to explain a failure."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._proc_lines.append(line)
            try:
                sys.stderr.write(line + "\n")
            except (OSError, ValueError):
                pass
        stream.close()

    def _stop_process(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.error("router process %d ignored SIGTERM; killing it", proc.pid)
                    proc.kill()
                    proc.wait()
            if proc.stderr is not None and self._relay is None:
                proc.stderr.close()
        if self._relay is not None:
            self._relay.join(max(timeout, 1.0))   # the pipe closes when the child is gone
            self._relay = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    # --------------------------------------------------------------- serving
    def _bind(self, context: zmq.Context) -> zmq.Socket:
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.zmq.max_message_size)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if self._security is not None:
            self._security.apply(sock)
        try:
            sock.bind(self.bind_address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            reason = zmq.strerror(exc.errno)   # exc.strerror may append the address again
            raise RouterBindError(f"cannot bind {self.bind_address}: {reason}") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _loop(self, sock: zmq.Socket) -> bool:
        """Serve until stop() (False) or a shutdown request (True)."""
        assert self.book is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_check = 0.0
        while not self._stop.is_set():
            if poller.poll(POLL_MS) and self._drain(sock):
                return True
            now = time.time()
            if now >= next_check:
                self.book.expire(now)
                next_check = now + EXPIRY_CHECK_S
            if self._save_retry.failing:
                self._save()            # due on the back-off schedule, not per request
        return False

    def _drain(self, sock: zmq.Socket) -> bool:
        """Handle what is queued (up to BATCH); asking EVENTS is cheaper than zmq.Again."""
        for _ in range(BATCH):
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            self._peer = frames[0]      # its properties say who sent it (see _shutdown_refusal)
            if self._handle(sock, [frame.bytes for frame in frames]):
                return True
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return False
        return False

    def _handle(self, sock: zmq.Socket, frames: List[bytes]) -> bool:
        """Answer one message; True when it asked the router to shut down."""
        if len(frames) < 2:
            log.warning("dropped a message of %d frame(s): no identity and body", len(frames))
            return False
        envelope, body = protocol.split_envelope(frames)
        req = protocol.decode_request(body, protocol.ROUTER_COMMANDS,
                                      self.config.zmq.max_message_size)
        if isinstance(req, protocol.Malformed):
            log_it, unlogged = self._malformed.allow(time.monotonic())
            if log_it:
                log.warning("malformed request from peer %s: %s [%s]%s", envelope[0].hex()[:16],
                            req.message, req.code,
                            f" ({unlogged} more not logged)" if unlogged else "")
            self._send(sock, envelope + protocol.malformed_reply(req))
            return False
        log.log(TRACE, "request %s %s %r %.200s", req.id, req.command, req.target, req.payload)
        reply, shutdown = self._answer(req)
        self._send(sock, envelope + reply)
        return shutdown

    def _answer(self, req: protocol.Request) -> Tuple[List[bytes], bool]:
        """The reply frames for a decoded request; saves first when the book changed,
        so that an acknowledged registration survives a crash."""
        assert self.book is not None
        now = time.time()
        try:
            if req.command == "ping":
                return protocol.ok(req.id, {"version": __version__, "pid": os.getpid(),
                                            "uptime": now - self._started}), False
            if req.command == "shutdown":
                refusal = self._shutdown_refusal()
                if refusal is not None:
                    log.warning("%s", refusal)
                    return protocol.error(req.id, protocol.E_NOT_ALLOWED, refusal,
                                          REFUSAL_TYPE), False
                log.log(NOTICE, "shutdown requested")
                return protocol.ok(req.id, {}), True
            caller = self._caller()
            if req.command in ADMIN_COMMANDS and not caller.admin:
                refusal = self._admin_refusal(req.command) or f"{req.command} refused"
                log.warning("%s", refusal)
                return protocol.error(req.id, protocol.E_NOT_ALLOWED, refusal,
                                      REFUSAL_TYPE), False
            result = self.book.handle(req.command, req.target, req.payload, now=now,
                                      caller=caller)
            self._save()
            return protocol.ok(req.id, result), False
        except RouterRefusal as exc:
            level = logging.INFO if req.command in ("register", "unregister") else logging.DEBUG
            log.log(level, "refused %s %r: %s [%s]", req.command, req.target, exc.message, exc.code)
            return protocol.error(req.id, exc.code, exc.message, REFUSAL_TYPE), False
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the router
            log.exception("internal error answering %s %r", req.command, req.target)
            return protocol.error(req.id, protocol.E_INTERNAL,
                                  f"{type(exc).__name__}: {exc}", type(exc).__name__), False

    def _shutdown_refusal(self) -> Optional[str]:
        return self._admin_refusal("shutdown")

    def _admin_refusal(self, what: str) -> Optional[str]:
        """Why the sender of this request may not do an admin's ``what`` (shutdown,
        forget, unblock); None if it may.

        With security: only the keys of ``[zmq-security] admins``.  Without:
        only peers on this host (loopback, or ipc whose file permissions
        already say who may connect).
        """
        if self._security is not None:
            return self._security.admin_refusal(frame_property(self._peer, "User-Id") or None,
                                                what)
        if self.config.router.protocol == "ipc":
            return None
        peer = frame_property(self._peer, "Peer-Address")
        if loopback(peer):
            return None
        return (f"{what} refused: without [zmq-security] the router accepts {what} only "
                "from its own host (loopback); this request came from "
                f"{peer or 'an unknown address'}")

    def _caller(self) -> Caller:
        """Who sent the request being answered: its CURVE key, and whether it is an admin."""
        key = None
        if self._security is not None:
            key = frame_property(self._peer, "User-Id") or None
        return Caller(key=key, admin=self._admin_refusal("admin") is None)

    def _send(self, sock: zmq.Socket, frames: List[bytes]) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:   # peer gone or its queue full: it will time out
            log.warning("reply not sent: %s", exc.strerror)

    # ----------------------------------------------------------- state file
    def _load_book(self) -> Book:
        router = self.config.router
        make = dict(first_port=router.first_port, last_port=router.last_port,
                    expiry=router.expiry, protocol=self.config.zmq.protocol)
        path = router.state_file
        self._saved_revision = 0
        if not path:
            return Book(**make)
        try:
            data = read_state(path)
            if data is None:
                log.info("state file %s does not exist yet; starting with an empty book", path)
                return Book(**make)
            book = Book.from_data(data, now=time.time(), **make)
        except (OSError, ValueError) as exc:
            quarantine(path, f"{type(exc).__name__}: {exc}")
            return Book(**make)
        log.info("loaded %d entries from %s", len(book), path)
        return book

    def _save(self, final: bool = False) -> None:
        """Write the state file when the book changed (always on the way out,
        to keep the heartbeat times that are otherwise saved lazily).

        After a failure, requests no longer try: :meth:`_loop` retries on the
        :attr:`_save_retry` schedule, and the log gets one line per interval.
        """
        path = self.config.router.state_file
        book = self.book
        if not path or book is None or (book.revision == self._saved_revision and not final):
            return
        now = time.monotonic()
        if not final and not self._save_retry.due(now):
            return
        try:
            save_state(path, book.to_data(time.time()))
        except OSError as exc:
            line = self._save_retry.failed(now, str(exc))
            if line:
                log.error("%s", line)
            elif final:
                log.error("cannot save the router's book to %s before stopping: %s", path, exc)
            return
        line = self._save_retry.succeeded(now)
        if line:
            log.warning("%s", line)
        self._saved_revision = book.revision


def _child_env() -> Dict[str, str]:
    """The environment of a router process: it must import this very package."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


# =============================================================================
# The client
# =============================================================================

class RouterClient:
    """A DEALER that asks the router things; one request at a time.

    Not thread-safe by design: a ZeroMQ socket belongs to one thread, so each
    thread that talks to the router makes its own RouterClient.  After a
    timeout the socket is closed and replaced (Lazy Pirate): a late reply
    cannot be mistaken for the next one, and a restarted router is reached.
    ``timeout`` is in milliseconds, as in the configuration.

    With ``[zmq-router] replicas`` (and no explicit ``address``), ``lookup``
    and ``list`` ask every router at once and return the first good answer
    (:func:`ask_routers`): one router down or hung costs nothing.  Every
    other command goes to :attr:`address`, the configuration's own router.
    """

    def __init__(self, config: Union[str, "os.PathLike[str]", Config, None] = None, *,
                 address: Optional[str] = None, timeout: Optional[int] = None,
                 context: Optional[zmq.Context] = None) -> None:
        self.config = load_config(config)
        self.address = address or self.config.router_address()
        #: Every router a look-up asks: just ``address`` when one was given.
        self.addresses = [address] if address else self.config.router_addresses()
        self._peers: List["RouterClient"] = []
        self.timeout = int(timeout if timeout is not None else self.config.router.timeout)
        self._context = context if context is not None else zmq.Context.instance()
        self._max_size = self.config.zmq.max_message_size
        self._security = client_security(self.config)
        self._socket: Optional[zmq.Socket] = None
        self._monitor: Optional[zmq.Socket] = None   # handshake events of _socket
        self._handshake_error = ""
        self._closed = False

    def request(self, command: str, target: str = "", payload: Any = None,
                timeout: Optional[int] = None) -> Dict[str, Any]:
        """Send one request and return the result payload.

        Raises :class:`~cauldron_zmq.errors.RouterError` (``.code`` is the
        protocol error code) for an error reply and
        :class:`~cauldron_zmq.errors.TimeoutError` when no answer comes in time.
        """
        if self._closed:
            raise CauldronError("this RouterClient is closed")
        timeout = self.timeout if timeout is None else int(timeout)
        if command in PARALLEL_COMMANDS and len(self.addresses) > 1:
            return self._ask_first(command, target, payload, timeout)
        req = protocol.request(command, target, {} if payload is None else payload)
        sock = self._sock()
        try:
            sock.send_multipart(protocol.encode_request(req), zmq.NOBLOCK)
        except zmq.Again:
            return self._timed_out(command, target, timeout)
        deadline = time.monotonic() + timeout / 1000.0
        while True:
            if not self._wait(sock, deadline):
                return self._timed_out(command, target, timeout)
            reply = protocol.decode_reply(sock.recv_multipart(), self._max_size)
            if reply.id != req.id:
                continue                # a late answer to a request we gave up on
            result = self._result(reply)
            if result is not None:
                return result

    def _ask_first(self, command: str, target: str, payload: Any,
                   timeout: int) -> Dict[str, Any]:
        """``command`` at every router at once; the first good answer."""
        if not self._peers:
            self._peers = [RouterClient(self.config, address=a, timeout=self.timeout,
                                        context=self._context) for a in self.addresses]
        answers = ask_routers(self._peers, command, target, payload, timeout=timeout,
                              first=True)
        return first_good(answers, command, target, timeout)

    # ------------------------------------------- one request, without waiting
    def send(self, command: str, target: str = "", payload: Any = None) -> Optional[str]:
        """Queue one request and return its id (None: it could not be queued).

        The answer is picked up by :meth:`collect`; :func:`ask_routers` uses
        the pair to ask several routers at once from one thread.
        """
        if self._closed:
            raise CauldronError("this RouterClient is closed")
        req = protocol.request(command, target, {} if payload is None else payload)
        try:
            self._sock().send_multipart(protocol.encode_request(req), zmq.NOBLOCK)
        except zmq.Again:
            self._reset()
            return None
        return req.id

    def pollables(self) -> List[zmq.Socket]:
        """The sockets whose readiness may complete :meth:`collect`."""
        return [s for s in (self._socket, self._monitor) if s is not None]

    def collect(self, rid: str) -> Optional[Tuple[Dict[str, Any]]]:
        """``(result,)`` once the answer to ``rid`` has arrived, else None.

        An error answer raises as :meth:`request` does; so does a refused
        handshake.  Late answers to older requests are dropped.
        """
        if self._monitor is not None:
            self._handshake_events(self._monitor)
        sock = self._socket
        while sock is not None and sock.poll(0):
            reply = protocol.decode_reply(sock.recv_multipart(zmq.NOBLOCK), self._max_size)
            if reply.id != rid:
                continue
            result = self._result(reply)
            if result is not None:
                return (result,)
        return None

    def give_up(self) -> None:
        """No answer in time: close the socket (Lazy Pirate; see the class)."""
        self._reset()

    def _result(self, reply: Union[protocol.Reply, protocol.Malformed]) -> Optional[Dict[str, Any]]:
        if isinstance(reply, protocol.Malformed):
            raise ProtocolError(reply.code, f"bad reply from the router at {self.address}: "
                                            f"{reply.message}")
        if reply.status == protocol.ACK:
            return None
        if reply.status == protocol.ERROR:
            err = reply.payload
            raise remote_exception(err["message"], code=err["code"],
                                   remote_type=str(err.get("type") or ""),
                                   peer=self.address, base=RouterError)
        if not isinstance(reply.payload, dict):
            raise ProtocolError(protocol.E_REQUEST,
                                f"the router at {self.address} answered "
                                f"{type(reply.payload).__name__}, not an object")
        return reply.payload

    def _wait(self, sock: zmq.Socket, deadline: float) -> bool:
        """True once a reply waits; meanwhile, a refused handshake raises."""
        monitor = self._monitor
        if monitor is None:
            remaining = deadline - time.monotonic()
            return remaining > 0 and bool(sock.poll(max(1, int(remaining * 1000))))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            events = dict(poller.poll(max(1, int(remaining * 1000))))
            if monitor in events:
                self._handshake_events(monitor)
            if sock in events:
                return True

    def _handshake_events(self, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, text = handshake_event(event, self._security is not None)
            if kind == REFUSED:
                self._reset()    # libzmq does not retry a refused handshake; a new socket will
                raise AuthenticationError(refused_message(f"the router at {self.address}",
                                                          self._security))
            if kind == FAILED:
                self._handshake_error = text
            elif kind == SUCCEEDED:
                self._handshake_error = ""

    def _timed_out(self, command: str, target: str, timeout: int) -> Dict[str, Any]:
        self._reset()
        what = f"{command} {target!r}" if target else command
        hint = ""
        if self._handshake_error:
            hint = f"; the connection's handshake failed: {self._handshake_error}"
        elif self._security is not None and not HANDSHAKE_EVENTS:
            hint = ("; with [zmq-security] enabled, the router's authenticator may have "
                    "refused this client's key")
        raise TimeoutError(f"no answer from the router at {self.address} within "
                           f"{timeout} ms ({what}){hint}")

    def _sock(self) -> zmq.Socket:
        if self._socket is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_size)
            if self._security is not None:
                self._security.apply(sock)
            if HANDSHAKE_EVENTS:
                self._monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
            sock.connect(self.address)
            self._socket = sock
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            if self._monitor is not None:
                try:
                    self._socket.disable_monitor()
                except zmq.ZMQError:
                    pass
                self._monitor.close(linger=0)
                self._monitor = None
            self._socket.close(linger=0)
            self._socket = None

    # ------------------------------------------------------------ commands
    def register(self, service: str, dispatcher: str, host: str,
                 keywords: Optional[List[str]] = None, pid: Optional[int] = None,
                 prefer: Optional[Tuple[int, int]] = None, avoid: Optional[List[int]] = None,
                 timeout: Optional[int] = None, instance: Optional[str] = None,
                 ready: Optional[bool] = None) -> Dict[str, Any]:
        """The (dispatch, broadcast) pair to bind: see ``register`` in docs/protocol.rst."""
        payload: Dict[str, Any] = {"dispatcher": dispatcher, "host": host}
        optional = {"keywords": keywords, "pid": pid, "prefer": prefer, "avoid": avoid,
                    "instance": instance, "ready": ready}
        for key, value in optional.items():
            if value is not None:
                payload[key] = list(value) if isinstance(value, (list, tuple)) else value
        return self.request("register", service, payload, timeout)

    def lookup(self, service: str, timeout: Optional[int] = None) -> Dict[str, Any]:
        return self.request("lookup", service, {}, timeout)

    def unregister(self, service: str, dispatcher: str, timeout: Optional[int] = None,
                   instance: Optional[str] = None) -> Dict[str, Any]:
        return self.request("unregister", service, _named(dispatcher, instance), timeout)

    def heartbeat(self, service: str, dispatcher: str, timeout: Optional[int] = None,
                  instance: Optional[str] = None) -> Dict[str, Any]:
        return self.request("heartbeat", service, _named(dispatcher, instance), timeout)

    def forget(self, service: str, dispatcher: Optional[str] = None,
               timeout: Optional[int] = None) -> Dict[str, Any]:
        """Remove a service's entries (or one dispatcher's) from the book; admin only."""
        payload = {} if dispatcher is None else {"dispatcher": dispatcher}
        return self.request("forget", service, payload, timeout)

    def unblock(self, port: Optional[int] = None,
                timeout: Optional[int] = None) -> Dict[str, Any]:
        """Release a blocked port (every one without ``port``); admin only."""
        return self.request("unblock", "", {} if port is None else {"port": port}, timeout)

    def list(self, timeout: Optional[int] = None) -> Dict[str, Any]:
        return self.request("list", "", {}, timeout)

    def shutdown(self, timeout: Optional[int] = None) -> Dict[str, Any]:
        return self.request("shutdown", "", {}, timeout)

    def ping(self, timeout: Optional[int] = None) -> Dict[str, Any]:
        return self.request("ping", "", {}, timeout)

    def close(self) -> None:
        self._reset()
        for peer in self._peers:
            peer.close()
        self._peers = []
        self._closed = True

    def __enter__(self) -> "RouterClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


#: Commands a RouterClient with replicas asks every router (first good answer).
PARALLEL_COMMANDS = frozenset({"lookup", "list"})

Answer = Union[Dict[str, Any], BaseException]


def ask_routers(clients: List[RouterClient], command: str, target: str = "",
                payload: Any = None, *, timeout: int, first: bool = False,
                requests: Optional[Dict[str, Tuple[str, Any]]] = None) -> Dict[str, Answer]:
    """Send ``command`` through every client at once; address -> result or exception.

    Waits until each has answered or ``timeout`` (ms) has passed, or with
    ``first`` until one has answered well.  Errors are values here, never
    raised: a :class:`~cauldron_zmq.errors.RouterError` for a refusal, a
    :class:`~cauldron_zmq.errors.TimeoutError` for silence (that client's
    socket is replaced, Lazy Pirate).  The dict is in the order answers came.
    ``requests`` gives some addresses a (command, payload) of their own.
    """
    answers: Dict[str, Answer] = {}
    waiting: Dict[RouterClient, str] = {}
    for client in clients:
        what, body = (requests or {}).get(client.address, (command, payload))
        try:
            rid = client.send(what, target, body)
        except CauldronError as exc:
            answers[client.address] = exc
            continue
        if rid is None:
            answers[client.address] = TimeoutError(
                f"cannot queue {command} to the router at {client.address}")
        else:
            waiting[client] = rid
    deadline = time.monotonic() + timeout / 1000.0
    while waiting and not (first and any(isinstance(a, dict) for a in answers.values())):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        poller = zmq.Poller()
        for client in waiting:
            for sock in client.pollables():
                poller.register(sock, zmq.POLLIN)
        poller.poll(max(1, int(remaining * 1000)))
        for client, rid in list(waiting.items()):
            try:
                got = client.collect(rid)
            except CauldronError as exc:
                answers[client.address] = exc
                del waiting[client]
                continue
            if got is not None:
                answers[client.address] = got[0]
                del waiting[client]
    succeeded = any(isinstance(a, dict) for a in answers.values())
    for client in waiting:
        client.give_up()
        if not (first and succeeded):
            answers[client.address] = TimeoutError(
                f"no answer from the router at {client.address} within {timeout} ms")
    return answers


def first_good(answers: Dict[str, Answer], command: str, target: str,
               timeout: int) -> Dict[str, Any]:
    """The first result among ``answers``; else the most telling error, raised.

    A refusal (``not-found`` first) says more than silence; when every
    router is silent the message names them all.
    """
    for answer in answers.values():
        if isinstance(answer, dict):
            return answer
    errors = [a for a in answers.values() if isinstance(a, BaseException)]
    refusals = [e for e in errors if isinstance(e, RouterError)]
    refusals.sort(key=lambda e: getattr(e, "code", "") != protocol.E_NOT_FOUND)
    for error in refusals + [e for e in errors if not isinstance(e, TimeoutError)]:
        raise error
    what = f"{command} {target!r}" if target else command
    raise TimeoutError(f"no answer from any router ({', '.join(answers) or 'none'}) "
                       f"within {timeout} ms ({what})")


def _named(dispatcher: str, instance: Optional[str]) -> Dict[str, Any]:
    payload: Dict[str, Any] = {"dispatcher": dispatcher}
    if instance is not None:
        payload["instance"] = instance
    return payload


# =============================================================================
# The command line
# =============================================================================

def setup_logging(verbose: int) -> None:
    """Router messages at the chosen verbosity; other libraries' warnings only."""
    level = VERBOSITY_LEVELS[max(0, min(verbose, len(VERBOSITY_LEVELS) - 1))]
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s " + PROG + "[%(process)d] %(levelname)s: %(message)s")
    log.setLevel(level)


def _fail(message: str) -> NoReturn:
    click.echo(f"{PROG}: {message}", err=True)
    sys.exit(1)


@click.command(name=PROG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
              help="Configuration file (TOML); default $CAULDRON_ZMQ_CONFIG, else built-in.")
@click.option("-v", "--verbose", count=True,
              help="-v registrations and expiries, -vv look-ups, -vvv every message "
                   "(default: [zmq-router] verbose).")
@click.version_option(__version__, "--version", prog_name=PROG)
def main(config_path: Optional[str], verbose: int) -> None:
    """Run a cauldron_zmq router in the foreground until ^C, SIGTERM or a shutdown request."""
    try:
        config = load_config(config_path)
    except ConfigurationError as exc:
        _fail(str(exc))
    setup_logging(verbose or config.router.verbose)
    router = Router(config)

    def on_signal(signum: int, _frame: Any) -> None:
        log.log(NOTICE, "%s received; saving the book and stopping", signal.Signals(signum).name)
        router.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        router.serve()
    except (RouterBindError, ConfigurationError) as exc:   # a key file of [zmq-security]
        _fail(str(exc))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

