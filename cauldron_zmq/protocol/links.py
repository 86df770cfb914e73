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
from typing import Dict, Iterable, List, Optional

from .backoff import Schedule

__all__ = ["Repair", "RETRY"]

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
