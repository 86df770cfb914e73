"""When a client must re-read a dispatcher's keywords: the repair logic, sans I/O.

A client keeps the values it monitors fresh from broadcasts; a broadcast can
be lost whenever the SUB (re)connects (the slow joiner: anything published
before the subscription reaches the dispatcher is gone), when the dispatcher
restarts, or when a heartbeat's sequence number shows a gap.  Each such event
is a *loss*: every tracked keyword must be read again, by a read **issued
after the loss**, and the link is in sync only once such a read of each has
answered.

The engine once skipped a repair read while an earlier read of the keyword
was in flight; that one had gone to the killed process and came back only as
a timeout, so the final value never arrived (issue 10, item 0).  Here a loss
of the connection (a reconnect, a restart, a dispatcher heard again)
*supersedes* older in-flight reads: a new read goes out at once, since the
old one may be lost with the old connection.  A gap on a live connection
*queues* behind the read in flight: one more read goes out when it answers
(so a flood of gaps costs at most two reads per keyword, never one per gap).
A read that fails is retried on a back-off schedule, and a read that answers
for an older loss never counts for a newer one.  Everything is a pure function of events
and ``now`` and is tested without sockets (tests/protocol/test_links_pure.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

from .backoff import LOOKUP, Schedule
from .payloads import Entry, Heartbeat

__all__ = ["Repair", "RETRY", "LinkState", "Resync", "DOWN", "RELOOKUP", "REPAIR",
           "link_key", "entry_address"]

#: Retries of a failed repair read: soon, then at most once a second.
RETRY = Schedule(0.05, 2.0, 1.0)


@dataclass
class _Slot:
    """One keyword's repair state (epochs are loss counts of its link)."""

    wanted: int = 0                 # the latest loss a read must postdate
    answered: int = 0               # the latest loss a successful read postdated
    inflight: Optional[int] = None  # the loss the newest read in flight was issued for
    failures: int = 0               # consecutive failed reads (back-off)
    retry_at: Optional[float] = None


@dataclass
class Repair:
    """The re-reads one link owes its tracked keywords.

    The engine reports events; each method returns the names to read now,
    and the engine issues those reads tagged with :attr:`epoch` (the value
    at the time of the call) and reports each outcome to :meth:`done`.
    """

    retry: Schedule = RETRY
    epoch: int = 0
    slots: Dict[str, _Slot] = field(default_factory=dict)

    def lost(self, names: Iterable[str], supersede: bool = True) -> List[str]:
        """Broadcasts may have been lost: every name needs a read issued from now on.

        ``supersede``: the connection itself was lost or renewed, so a read in
        flight may never answer; read again at once.  Otherwise (a gap on a
        live connection) a name with a read in flight waits for its answer.
        """
        self.epoch += 1
        reads = []
        for name in names:
            slot = self.slots.setdefault(name, _Slot())
            slot.wanted = self.epoch
            slot.failures, slot.retry_at = 0, None
            if slot.inflight is None or supersede:
                reads.append(name)
                slot.inflight = self.epoch
        return reads

    def done(self, name: str, epoch: int, ok: bool, now: float,
             tracked: bool = True) -> List[str]:
        """A repair read issued at ``epoch`` answered (``ok``) or failed."""
        slot = self.slots.get(name)
        if slot is None:
            return []
        if slot.inflight == epoch:
            slot.inflight = None
        if ok:
            slot.answered = max(slot.answered, epoch)
        if slot.answered >= slot.wanted:      # in sync (a late failure changes nothing)
            slot.failures, slot.retry_at = 0, None
            return []
        if not tracked:
            del self.slots[name]
            return []
        if slot.inflight is not None:
            return []                     # a newer read is on its way
        if ok:                            # answered, but for an older loss: the queued read
            slot.inflight = self.epoch
            return [name]
        slot.failures += 1
        slot.retry_at = now + self.retry.delay(slot.failures - 1)
        return []

    def due(self, now: float, tracked: Iterable[str]) -> List[str]:
        """Retries whose time came (names no longer tracked are dropped)."""
        keep = set(tracked)
        reads = []
        for name in list(self.slots):
            slot = self.slots[name]
            if slot.retry_at is None or slot.retry_at > now:
                continue
            if name not in keep:
                del self.slots[name]
                continue
            slot.retry_at = None
            slot.inflight = self.epoch
            slot.wanted = max(slot.wanted, self.epoch)
            reads.append(name)
        return reads

    def next_due(self) -> Optional[float]:
        """The earliest retry time, for the engine's poll timeout."""
        times = [s.retry_at for s in self.slots.values() if s.retry_at is not None]
        return min(times) if times else None

    def in_sync(self) -> bool:
        """Every tracked keyword was read after the latest loss."""
        return all(s.answered >= s.wanted for s in self.slots.values())

    def owed(self) -> List[str]:
        """Names still waiting for a read that postdates their latest loss."""
        return sorted(n for n, s in self.slots.items() if s.answered < s.wanted)


# =============================================================================
# What a client knows of one dispatcher
# =============================================================================

class Resync(NamedTuple):
    """A possible loss: re-read what is tracked (see :class:`Repair`).

    ``restarted``: the dispatcher is a new process (sequence numbers start
    again, requests the old one acknowledged are orphaned); ``supersede``: the
    connection was renewed, so reads in flight may be lost with it.
    """

    why: str
    restarted: bool = False
    supersede: bool = True


#: Timer actions :meth:`LinkState.timers` returns for the I/O layer.
DOWN, RELOOKUP, REPAIR = "down", "relookup", "repair"


def link_key(entry: Mapping[str, Any]) -> str:
    """A dispatcher's identity in a look-up answer: its name, else host:port."""
    return Entry.from_payload(entry).key


def entry_address(entry: Mapping[str, Any]) -> Tuple[str, str, int, int]:
    """(transport, host, dispatch port, broadcast port) of a look-up entry."""
    return Entry.from_payload(entry).address


class LinkState:
    """One dispatcher as a client sees it: liveness, broadcast sequence, restarts, look-ups.

    Events go in with the time they happened (``now``); what to do comes back
    as data (:class:`Resync`, or the timer actions DOWN, RELOOKUP, REPAIR).
    The I/O layer (``client/engine.py``) owns the sockets and carries it out.
    """

    def __init__(self, key: str, entry: Mapping[str, Any], now: float,
                 liveness: float, lookup: Schedule = LOOKUP) -> None:
        self.key = key
        self.name = str(entry.get("dispatcher") or "")
        self.protocol, self.host, self.dispatch_port, self.broadcast_port = entry_address(entry)
        self.keywords = {str(k).upper() for k in entry.get("keywords") or ()}
        self.listed = False
        self.base_liveness = liveness
        self.lookup = lookup
        self.last_heard = now          # any message from it, SUB or DEALER
        self.last_reply = now          # the last reply on the DEALER
        self.alive = True
        self.started: Optional[float] = None
        self.pid: Optional[int] = None
        self.gseq: Optional[int] = None
        self.synced = False            # a heartbeat arrived since the SUB (re)connected
        self.repair = Repair()         # the re-reads owed after a possible loss
        self.interval: Optional[float] = None
        self.relookup_start: Optional[float] = None
        self.relookup_attempts = 0
        self.lookup_inflight = False
        self.refused = False           # its authenticator refused our key
        self.handshake_error = ""      # the last failed handshake, for timeout messages

    # ----------------------------------------------------------- addresses
    @property
    def address(self) -> Tuple[str, str, int, int]:
        return (self.protocol, self.host, self.dispatch_port, self.broadcast_port)

    def moved(self, entry: Mapping[str, Any]) -> bool:
        """Whether a look-up entry gives this dispatcher another address."""
        return entry_address(entry) != self.address

    def move(self, entry: Mapping[str, Any]) -> None:
        """Take the new address; the new sockets must sync afresh."""
        self.protocol, self.host, self.dispatch_port, self.broadcast_port = entry_address(entry)
        self.renewed()

    def renewed(self) -> None:
        """New sockets (a move, a refused handshake retried): nothing heard on them yet."""
        self.synced, self.gseq = False, None

    # ------------------------------------------------------------ liveness
    def liveness(self) -> float:
        """The configured liveness, unless the dispatcher's own heartbeat is slower."""
        if self.interval and self.interval * 2 >= self.base_liveness:
            return self.interval * 3
        return self.base_liveness

    def heard(self, now: float, reply: bool = False) -> Optional[Resync]:
        """Something arrived; a Resync if the dispatcher was down and is back."""
        self.last_heard = now
        if reply:
            self.last_reply = now
        if self.alive:
            return None
        self.alive = True
        self.relookup_start = None
        return Resync("answering again")

    def went_down(self) -> float:
        """Mark it down (nothing heard for too long); returns seconds since heard."""
        self.alive = False
        self.synced = False
        return self.last_heard

    # ----------------------------------------------------------- handshakes
    def handshake(self, succeeded: bool, refused: bool, text: str) -> bool:
        """A handshake event; True when it is a new refusal (fail what waits on it)."""
        if succeeded:
            self.handshake_error, self.refused = "", False
            return False
        self.handshake_error = text
        if not refused or self.refused:
            return False
        self.refused = True
        return True

    # ----------------------------------------------------------- broadcasts
    def sub_connected(self) -> Resync:
        """The SUB (re)connected: what was published before its subscription is lost."""
        self.synced = False
        return Resync("broadcast socket connected")

    def on_heartbeat(self, hb: Union[Heartbeat, Mapping[str, Any]]) -> Optional[Resync]:
        """A heartbeat: restart by ``started``/``pid``, gaps and regressions by ``gseq``.

        ``hb`` is decoded at the boundary (:meth:`Heartbeat.from_payload`); a
        raw mapping is decoded here.
        """
        if not isinstance(hb, Heartbeat):
            hb = Heartbeat.from_payload(hb)
        started, pid, gseq = hb.started, hb.pid, hb.gseq
        if hb.interval is not None:
            self.interval = hb.interval
        restarted = self.started is not None and (started != self.started or pid != self.pid)
        self.started, self.pid = started, pid
        action: Optional[Resync] = None
        if restarted:
            action = Resync("dispatcher restarted", restarted=True)
        elif not self.synced:
            action = Resync("first heartbeat since connecting")
        elif gseq is not None and self.gseq is not None and gseq != self.gseq:
            backwards = gseq < self.gseq
            action = Resync("broadcast sequence went backwards" if backwards else
                            f"lost broadcasts (heartbeat gseq {gseq}, last seen {self.gseq})",
                            restarted=backwards, supersede=backwards)
        self.synced = True
        if gseq is not None:
            self.gseq = gseq
        return action

    def on_broadcast(self, gseq: Optional[int]) -> Optional[Resync]:
        """A value broadcast's ``gseq``: the next one, a gap, or a regression."""
        action: Optional[Resync] = None
        if gseq is not None and self.gseq is not None:
            if gseq <= self.gseq:
                action = Resync("broadcast sequence went backwards", restarted=True)
            elif gseq > self.gseq + 1:
                action = Resync(f"lost broadcasts (gseq {self.gseq} -> {gseq})",
                                supersede=False)
        if gseq is not None:
            self.gseq = gseq
        return action

    # -------------------------------------------------------------- look-ups
    def start_relookup(self, now: float, enabled: bool) -> None:
        """Begin asking the router where it is (it may have moved), unless already."""
        if enabled and self.name and self.relookup_start is None:
            self.relookup_start = now
            self.relookup_attempts = 0

    def relookup_sent(self) -> None:
        self.relookup_attempts += 1
        self.lookup_inflight = True

    def relookup_answered(self, found_same: bool) -> None:
        """A look-up answer: the same address and alive means slow, not moved: stop."""
        self.lookup_inflight = False
        if found_same and self.alive:
            self.relookup_start = None

    # ---------------------------------------------------------------- timers
    def next_due(self, now: float) -> Optional[float]:
        """When :meth:`timers` next has something to do (None: nothing scheduled)."""
        due: List[float] = []
        if self.alive:
            due.append(self.last_heard + self.liveness())
        if self.relookup_start is not None and not self.lookup_inflight:
            due.append(self.relookup_start + self.lookup.time_of(self.relookup_attempts))
        retry = self.repair.next_due() if self.alive else None
        if retry is not None:         # while it is down, coming back re-reads anyway
            due.append(retry)
        return min(due) if due else None

    def timers(self, now: float) -> List[str]:
        """What is due at ``now``: DOWN (silent too long), RELOOKUP, REPAIR (a re-read)."""
        out = []
        if self.alive and now - self.last_heard > self.liveness():
            out.append(DOWN)
        if self.relookup_start is not None and not self.lookup_inflight and \
                self.lookup.due(now - self.relookup_start, self.relookup_attempts):
            out.append(RELOOKUP)
        retry = self.repair.next_due() if self.alive and DOWN not in out else None
        if retry is not None and retry <= now:
            out.append(REPAIR)
        return out
