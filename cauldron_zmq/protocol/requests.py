"""The client's table of requests in flight, as plain data.

A request's life: **sent** -> **acked** (a slow write's dispatcher said it
started) -> **done** (answered), or it ends early: **expired** (its deadline
passed), **orphaned** (the dispatcher that acknowledged it restarted),
**refused** (CurveZMQ refused the connection it waits on), **silent** (its
dispatcher went silent).  The router is one more peer: a router request is
sent to every router at once and waits for the first good answer
(``peers_left``), keeping the most telling refusal (``refusal``).

Nothing here sends, sleeps or reads a clock: the I/O layer passes ``now``
and carries out what these functions decide.  Every "which requests" answer
is a new list, so the caller may end or resend them while it walks it (the
table itself is never iterated while it changes).
"""
from __future__ import annotations

import heapq
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from .wire import E_NOT_FOUND, Request

__all__ = ["Pending", "RequestTable", "keep_waiting", "better_refusal", "ROUTER",
           "expiry", "EXTEND", "TIMED_OUT", "UNANSWERED"]

#: The ``link`` of a router request: the routers are one peer, asked all at once.
ROUTER = "\0router"


class Pending:
    """One request in flight.  ``task`` and ``on_reply`` belong to the I/O layer."""

    __slots__ = ("request", "task", "timeout", "deadline", "on_reply", "link", "explicit",
                 "sent_at", "acked", "ack_started", "peers_left", "refusal")

    def __init__(self, request: Request, task: Any, timeout: float, deadline: float,
                 on_reply: Optional[Callable[[Any], Any]] = None, link: Optional[str] = None,
                 explicit: bool = True) -> None:
        self.request = request
        self.task = task
        self.timeout = timeout
        self.deadline = deadline
        self.on_reply = on_reply
        #: The link key it goes to (None: the keyword's owner, chosen when sent), or ROUTER.
        self.link = link
        #: False: the caller set no deadline, so an acknowledged write may wait on.
        self.explicit = explicit
        self.sent_at = 0.0
        self.acked = False
        self.ack_started: Optional[float] = None   # the incarnation that acknowledged it
        self.peers_left: Set[str] = set()           # routers yet to answer
        self.refusal: Optional[BaseException] = None

    @property
    def router(self) -> bool:
        return self.link == ROUTER

    @property
    def id(self) -> str:
        return self.request.id

    def __repr__(self) -> str:
        state = "acked" if self.acked else "sent"
        return f"<Pending {self.request.command} {self.request.target!r} {state} -> {self.link}>"


class RequestTable:
    """Requests by id, and their deadlines in a heap (answered ones dropped lazily)."""

    def __init__(self) -> None:
        self._by_id: Dict[str, Pending] = {}
        self._heap: List[Tuple[float, str, Pending]] = []

    # ------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, rid: object) -> bool:
        return rid in self._by_id

    def __iter__(self) -> Iterator[Pending]:
        return iter(list(self._by_id.values()))

    def get(self, rid: Optional[str]) -> Optional[Pending]:
        return self._by_id.get(rid) if rid else None

    def add(self, p: Pending, now: float) -> None:
        """A request is sent (again, after a reset: same id, same deadline)."""
        p.sent_at = now
        if self._by_id.get(p.id) is p:
            return
        self._by_id[p.id] = p
        self._push(p)

    def pop(self, rid: Optional[str]) -> Optional[Pending]:
        """Take a request out (answered, or ended by the caller)."""
        return self._by_id.pop(rid, None) if rid else None

    def clear(self) -> List[Pending]:
        """Every request, taken out (the service is shutting down)."""
        out = list(self._by_id.values())
        self._by_id.clear()
        self._heap.clear()
        return out

    def any_router(self) -> bool:
        return any(p.link == ROUTER for p in self._by_id.values())

    # ------------------------------------------------------------- replies
    def acknowledged(self, rid: str, started: Optional[float]) -> Optional[Pending]:
        """An ACK: the request stays, marked acked by incarnation ``started``."""
        p = self._by_id.get(rid)
        if p is not None:
            p.acked = True
            p.ack_started = started
        return p

    # ----------------------------------------------------------- deadlines
    def next_deadline(self) -> Optional[float]:
        """The earliest deadline of a request still in the table."""
        heap, by_id = self._heap, self._by_id
        while heap:
            deadline, rid, p = heap[0]
            if by_id.get(rid) is p and p.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def due(self, now: float) -> List[Pending]:
        """Requests whose deadline has passed, taken out of the table."""
        heap, by_id, out = self._heap, self._by_id, []
        while heap and heap[0][0] <= now:
            deadline, rid, p = heapq.heappop(heap)
            if by_id.get(rid) is p and p.deadline == deadline:
                del by_id[rid]
                out.append(p)
        return out

    def extend(self, p: Pending, deadline: float) -> None:
        """Put a due request back with a later deadline (a slow write waits on)."""
        p.deadline = deadline
        self._by_id[p.id] = p
        self._push(p)

    def _push(self, p: Pending) -> None:
        heapq.heappush(self._heap, (p.deadline, p.id, p))
        if len(self._heap) > 2 * len(self._by_id) + 64:      # mostly answered: rebuild
            by_id = self._by_id
            self._heap = [e for e in self._heap if by_id.get(e[1]) is e[2]
                          and e[2].deadline == e[0]]
            heapq.heapify(self._heap)

    # --------------------------------------------------------------- links
    def on_link(self, link: str, acked: Optional[bool] = None) -> List[Pending]:
        """The requests waiting on ``link`` (only acked/unacked ones if given), a copy."""
        return [p for p in self._by_id.values()
                if p.link == link and (acked is None or p.acked == acked)]

    def take_link(self, link: str) -> List[Pending]:
        """Take out every request waiting on ``link`` (refused, or gone silent)."""
        out = self.on_link(link)
        for p in out:
            del self._by_id[p.id]
        return out

    def take_orphans(self, link: str, started: Optional[float]) -> List[Pending]:
        """Take out the requests an earlier incarnation of ``link`` acknowledged.

        The process that would have answered them is gone.
        """
        if started is None:
            return []
        out = [p for p in self.on_link(link, acked=True)
               if p.ack_started is not None and p.ack_started != started]
        for p in out:
            del self._by_id[p.id]
        return out

    def waiting_on_router(self, address: str) -> List[Pending]:
        """Router requests that still wait for the router at ``address``."""
        return [p for p in self._by_id.values() if p.link == ROUTER and address in p.peers_left]


def keep_waiting(p: Pending, *, alive: bool, refused: bool) -> bool:
    """Whether a due request waits on: a slow write, acknowledged, that its caller set
    no deadline for, while its dispatcher stays alive and reachable."""
    return (not p.router and not p.explicit and p.acked and alive and not refused
            and p.request.command == "write")


#: What a due dispatcher request comes to (:func:`expiry`).
EXTEND, TIMED_OUT, UNANSWERED = "extend", "timed-out", "unanswered"


def expiry(p: Pending, *, alive: bool, refused: bool, last_reply: float) -> str:
    """What a dispatcher request whose deadline passed comes to.

    :data:`EXTEND`: a slow write waits on (:func:`keep_waiting`).
    :data:`TIMED_OUT`: it fails with a timeout; an acknowledged one, or one
    sent on a connection that answered something since, says nothing about
    the connection.  :data:`UNANSWERED`: it fails with a timeout and nothing
    came back from the dispatcher since it was sent (``last_reply`` is the
    time of its latest reply): the connection may be dead, so the I/O layer
    replaces it (Lazy Pirate) and looks the dispatcher up again.
    """
    if keep_waiting(p, alive=alive, refused=refused):
        return EXTEND
    if p.acked or last_reply >= p.sent_at:
        return TIMED_OUT
    return UNANSWERED


def better_refusal(best: Optional[BaseException], new: BaseException) -> BaseException:
    """The most telling of two router refusals: ``not-found`` beats any other."""
    if best is None:
        return new
    if getattr(new, "code", "") == E_NOT_FOUND and getattr(best, "code", "") != E_NOT_FOUND:
        return new
    return best
