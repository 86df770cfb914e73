"""The router's book: who holds which port pair, decided without I/O.

:class:`Book` is a state machine of plain data: every method takes ``now``
as an argument and returns a result dict or raises :class:`RouterRefusal`.
No socket, no file, no clock, not even :mod:`logging`: what is worth a log
line goes to the ``log`` it is given (the router passes its logger; the
default says nothing), so ``tests/protocol`` drives it directly.
``docs/router.rst`` states the rules it implements.  Its port half is
:class:`~cauldron_zmq.protocol.pairs.PairTable`, its state-file form
:mod:`~cauldron_zmq.protocol.bookfile`, the checks of its fields
:mod:`~cauldron_zmq.protocol.entries`.
"""
from __future__ import annotations

import heapq
from typing import Any, Dict, List, Optional, Set, Tuple

from . import bookfile
from . import wire as protocol
from .backoff import Schedule
from .entries import (BLOCK_RETRY, DEBUG, DOWN, LIVE, NOBODY, QUIET, STALE, TRACE, Block, Caller,
                      Entry, Log, RouterRefusal, _check_conflicts, _check_host,
                      _check_keywords, _check_name, _field, _other_instance)
from .pairs import PairTable

__all__ = ["Book"]


class Book(PairTable):
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
                 protocol: str = "tcp", block_retry: Schedule = BLOCK_RETRY,
                 log: Log = QUIET) -> None:
        super().__init__(first_port, last_port, block_retry, log)
        if expiry <= 0:
            raise ValueError("expiry must be positive")
        self.expiry = float(expiry)
        self.protocol = protocol
        self.revision = 0
        self._services: Dict[str, Dict[str, Entry]] = {}

    # ------------------------------------------------------------- basics
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
        if live and entry is not None and entry.host != host:
            raise RouterRefusal(protocol.E_CONFLICT, (
                f"{entry.name} is held by a live dispatcher on host {entry.host!r}; "
                f"refusing the registration from host {host!r}"))
        self._check_keyword_owners(service, dispatcher, kws, now)
        other_live = live and _other_instance(entry, instance)
        avoided = self._ports_in_range(avoid)
        if other_live and ready is False and entry is not None:
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
            self.log.info("ports %d/%d of %s (%s, silent %.1f s) given to %s/%s",
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
        self.log.info("%s %s at %s ports %d/%d (%s, %d keywords)",
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
        if self.log.isEnabledFor(DEBUG):
            self.log.debug("lookup %r: %s", service, ", ".join(
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
            self.log.info("unregistered %s (ports %d/%d stay reserved)", entry.name,
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
        self.log.log(TRACE, "heartbeat from %s", entry.name)
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
            self.log.warning("forgot %s (ports %d/%d are free again)", entry.name,
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
            self.log.warning("unblocked port(s) %s", ", ".join(map(str, ports)))
        return {"unblocked": ports}

    def expire(self, now: float) -> List[Dict[str, Any]]:
        """The entries that went stale since the last call (each reported once)."""
        expired = []
        for entry in self._owners.values():
            if entry.reported_stale or self.state(entry, now) != STALE:
                continue
            entry.reported_stale = True
            self.log.info("expired %s: no heartbeat for %.1f s", entry.name,
                          now - entry.last_heartbeat)
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
        """The book as JSON-able data for the state file (:func:`.bookfile.to_data`)."""
        return bookfile.to_data(self, now)

    @classmethod
    def from_data(cls, data: Any, *, first_port: int, last_port: int, expiry: float,
                  protocol: str = "tcp", now: float,
                  block_retry: Schedule = BLOCK_RETRY, log: Log = QUIET) -> "Book":
        """Rebuild a book saved by :meth:`to_data`; raises ValueError when corrupt.

        Registered entries get a fresh grace period (``last_heartbeat = now``):
        their dispatchers had no router to heartbeat to.  Entries whose ports
        no longer fit the configured range are dropped with a warning (the
        range was changed; those dispatchers will be told to register again),
        and so are blocked ports outside it.  Blocked ports are skipped for
        one more :data:`BLOCK_RETRY` period, then tried again.
        """
        rows, blocked = bookfile.check(data)
        book = cls(first_port, last_port, expiry, protocol, block_retry, log)
        book._blocks = {p: Block(now + block_retry.delay(0)) for p in blocked
                        if book.pair_of(p) is not None}
        for row in rows:
            entry = bookfile.entry_from_row(book, row, now)
            if entry is None:
                continue
            if entry.pair in book._owners or entry.dispatcher in book._services.get(
                    entry.service, {}):
                raise ValueError(f"ports {entry.dispatch_port}/{entry.broadcast_port} or "
                                 f"{entry.name} appear twice")
            book._add(entry)
        book._free = [i for i in range(book.pairs) if i not in book._owners]
        return book
