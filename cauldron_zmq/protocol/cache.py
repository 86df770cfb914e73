"""A client keyword's cache: which values are kept, which reach callbacks, sans I/O.

A client learns a keyword's value from three sources (:data:`REPLY`,
:data:`FRESH`, :data:`BROADCAST`), on two sockets that race each other: a
reply and the broadcast of the same change may come in either order, and a
reply to an older read may arrive after a broadcast of a newer value.  The
rules here decide, per update:

* **stored or stale** -- a value older than the cached one (a lower ``seq``
  and no newer dispatcher time) is not stored, so the cache never goes back;
* **history** -- an entry only when the value changed (another ``seq``, or
  another value), so the same change from two sockets is recorded once;
* **callbacks** -- each change reaches them once, in order: a change is
  identified by ``seq``, and since a restarted dispatcher numbers from the
  start again, a lower ``seq`` with a newer dispatcher time is a new change;
* **updates** -- what ``wait()`` with no condition counts: every broadcast,
  and a catch-up read only when it brought something new;
* **connected** -- the liveness flag, which fires callbacks only when
  monitored.

:class:`KeywordCache` holds no lock and reads no clock: the ``Keyword`` calls
it under its own lock and passes the wall-clock time in (``wall``, used only
for a history entry whose value came without a dispatcher time).  Decoding
the value is the keyword type's business, done before :meth:`KeywordCache.ingest`.
Tested without sockets in tests/protocol/test_cache.py.
"""
from __future__ import annotations

import collections
import operator
from typing import Any, Callable, Deque, NamedTuple, Optional

from .payloads import Value

__all__ = ["REPLY", "FRESH", "BROADCAST", "HISTORY_LENGTH", "HistorySlice", "State", "Fields",
           "fields", "is_stale", "KeywordCache"]

# Where a value came from: a user's read/write reply, a read the client made
# itself to catch up (monitor priming, re-sync after a loss, polling), a broadcast.
REPLY, FRESH, BROADCAST = "reply", "fresh", "broadcast"
HISTORY_LENGTH = 10           # Cauldron's: the values a keyword remembers


class HistorySlice(NamedTuple):
    """One value a keyword held: the dispatcher's time, the native and ascii forms, its name.

    The fields are Cauldron's (``time, binary, ascii, name``), so code that
    unpacks four of them runs unchanged.
    """

    time: float
    binary: Any
    ascii: Optional[str]
    name: str = ""


class State(NamedTuple):
    """A keyword's cached value, replaced whole so readers never see half an update."""

    value: Any = None
    ascii: Optional[str] = None
    time: Optional[float] = None
    seq: Optional[int] = None
    populated: bool = False
    connected: bool = True


#: What a VALUE payload says, its value still in wire form (decoding needs the type):
#: the one definition producer and consumer share (:mod:`.payloads`).
Fields = Value


def fields(payload: Any, raw: Optional[bytes]) -> Optional[Fields]:
    """A VALUE payload's fields; None if it carries no value (yet).

    A payload without a value leaves the keyword unpopulated and adds no
    history entry.  A malformed time or sequence number is ignored (None),
    never trusted: staleness and once-per-change callbacks depend on them.
    """
    return Value.from_payload(payload, raw)


def is_stale(old: State, seq: Optional[int], stamp: Optional[float]) -> bool:
    """A value older than what the cache holds (a reply overtaken by a broadcast).

    A lower ``seq`` is older unless it carries a newer dispatcher time: then
    the dispatcher restarted and numbers from the start again.
    """
    if not old.populated or seq is None or old.seq is None or seq >= old.seq:
        return False
    return stamp is None or old.time is None or stamp <= old.time


class KeywordCache:
    """One keyword's cached state, history and counters, and the rules that change them.

    Not thread-safe by itself: the caller serialises every call (the
    ``Keyword``'s lock) and reads :attr:`state` freely, since it is replaced
    whole.  ``equal(a, b)`` says whether two native values are the same (the
    keyword type's ``equal``: arrays compare element-wise).
    """

    __slots__ = ("name", "equal", "state", "history", "broadcasts", "updates",
                 "fired_seq", "fired_time")

    def __init__(self, name: str = "", equal: Callable[[Any, Any], bool] = operator.eq,
                 length: int = HISTORY_LENGTH) -> None:
        self.name = name
        self.equal = equal
        self.state = State()
        self.history: Deque[HistorySlice] = collections.deque(maxlen=length)
        self.broadcasts = 0               # broadcasts taken in (``kw['broadcasts']``)
        self.updates = 0                  # broadcasts and new catch-up reads (``wait()``)
        self.fired_seq: Optional[int] = None      # the last change the callbacks were given
        self.fired_time: Optional[float] = None   # ...and its dispatcher time (restarts)

    def ingest(self, native: Any, text: Optional[str], stamp: Optional[float],
               seq: Optional[int], source: str, *, monitored: bool, polled: bool,
               has_callbacks: bool, wall: float) -> Optional[State]:
        """Take in a decoded value (unless stale); the state to fire callbacks with, or None.

        Each change (``seq``) reaches the callbacks once, in order: broadcasts
        fire while monitored; the client's own catch-up reads (FRESH) fire
        while monitored or polled; a user's read or write reply fires only
        when not monitored (when monitored, its broadcast follows).  The
        returned state is the update's own, even when stale and not stored.
        """
        if text is None and isinstance(native, str):
            text = native                # a string's ascii is itself; an array's is made
                                         # when asked (the ascii property), not per update
        old = self.state
        state = State(native, text, stamp, seq, True, old.connected)
        if not is_stale(old, seq, stamp):
            if not old.populated or seq != old.seq or not self.equal(native, old.value):
                self.history.append(HistorySlice(
                    stamp if stamp is not None else wall, native, text, self.name))
            self.state = state
        self._count(source, state, old)
        wanted = {BROADCAST: monitored, FRESH: monitored or polled, REPLY: not monitored}[source]
        if not (wanted and has_callbacks and self.unseen(seq, stamp)):
            return None
        self.fired_seq, self.fired_time = seq, stamp
        return state

    def _count(self, source: str, state: State, old: State) -> None:
        """Count a broadcast always, a catch-up read only if it stored something new."""
        if source == BROADCAST:
            self.broadcasts += 1
            self.updates += 1
        elif source == FRESH and self.state is state and (
                not old.populated or (state.seq, state.time) != (old.seq, old.time)):
            self.updates += 1

    def unseen(self, seq: Optional[int], stamp: Optional[float] = None) -> bool:
        """Whether the change ``seq`` (made at ``stamp``) has not reached the callbacks yet.

        A dispatcher's sequence numbers start again when it restarts, and a
        value read from the replacement may come before any heartbeat shows
        the restart (or none of the old one was ever seen): the same or a
        lower ``seq`` with a newer dispatcher time is a new value.  The same
        change always carries the same time, whichever socket brings it.
        """
        fired = self.fired_seq
        if seq is None or fired is None or seq > fired:
            return True
        fired_time = self.fired_time
        return stamp is not None and fired_time is not None and stamp > fired_time

    def forget_sequence(self) -> None:
        """The dispatcher restarted: its sequence numbers start again."""
        self.state = self.state._replace(seq=None)
        self.fired_seq = self.fired_time = None

    def set_connected(self, connected: bool, *, monitored: bool,
                      has_callbacks: bool) -> Optional[State]:
        """Record a liveness change; the state to fire callbacks with, or None.

        No change leaves :attr:`state` the same object (the caller wakes
        waiters only when it was replaced).
        """
        if self.state.connected == connected:
            return None
        state = self.state = self.state._replace(connected=connected)
        return state if monitored and has_callbacks else None
