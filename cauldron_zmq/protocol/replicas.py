"""Several routers, one book: the decisions, without sockets (sans I/O).

With ``[zmq-router] replicas`` an installation has several routers, each
with a book of its own.  Nothing copies one book into another: every
dispatcher registers and heartbeats with every router, so each book is
rebuilt from the dispatchers themselves.  This module holds the pure parts,
each a function of plain data and ``now``:

* :class:`RouterLink` -- what a dispatcher knows about one router, and
  :func:`plan` / :func:`record` -- what to send it next and what its answer
  (or silence) means, so that a router that restarted with an empty book is
  registered with again at the next heartbeat, and a router that cannot give
  the pair the dispatcher holds is a reported conflict, never a silent move;
* :func:`should_spawn` -- whether a dispatcher starts a replacement router;
* :func:`disagreements` -- the entries the routers' books disagree on, for
  ``cauldron-zmq services``.

The registrar (:mod:`cauldron_zmq.dispatcher`) does the I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from .backoff import Schedule

__all__ = ["RouterLink", "REGISTER", "HEARTBEAT", "OK", "MOVED", "LOST", "SILENT",
           "CONFLICT", "REFUSED", "plan", "record", "conflicts", "should_spawn",
           "disagreements", "REFUSAL_RETRY"]

REGISTER, HEARTBEAT = "register", "heartbeat"

# What an answer meant (record()'s result).
OK = "ok"                # the router holds our entry, with our pair
MOVED = "moved"          # (one router only) it gave another pair: move there
LOST = "lost"            # it does not know us (restarted, expired us): register now
SILENT = "silent"        # no answer in time
CONFLICT = "conflict"    # it refuses our pair or name: reported, retried with back-off
REFUSED = "refused"      # any other refusal: retried with back-off

#: How long a router that refused us (conflict, not-allowed...) is left alone:
#: it will not change its mind at every heartbeat.
REFUSAL_RETRY = Schedule(2.0, 2.0, 30.0)


@dataclass
class RouterLink:
    """What a dispatcher knows about one router of the installation.

    ``registered``: the router should hold our entry (we register when it is
    not).  ``silent`` counts unanswered requests in a row, ``refusals``
    refusals in a row; ``due`` is when to send the next request.
    ``problem`` is the last refusal, reported to the other routers and
    logged when it changes.
    """

    address: str
    registered: bool = False
    due: float = 0.0
    silent: int = 0
    refusals: int = 0
    problem: Optional[str] = None
    ever_answered: bool = False


def plan(links: Iterable[RouterLink], now: float) -> List[Tuple[RouterLink, str]]:
    """The requests due at ``now``: register where we are not registered, else heartbeat."""
    return [(link, HEARTBEAT if link.registered else REGISTER)
            for link in links if link.due <= now]


def record(link: RouterLink, action: str, answer: Any, ours: Optional[Tuple[int, int]],
           now: float, interval: float, *, strict: bool,
           code: Optional[str] = None) -> str:
    """Update ``link`` with the outcome of ``action``; returns what it meant.

    ``answer`` is the result dict, or None for silence, or an error message
    with its protocol ``code``.  A silent router is tried again after half
    an interval, then every ``interval``: the libzmq connection backs off on
    its own, and a router that comes back (with an empty book) must be
    registered with within two heartbeats.  A refusing router is left alone
    on :data:`REFUSAL_RETRY`; a refused heartbeat (the name is now another
    instance's) stays a heartbeat.  ``strict`` (several routers): an answer
    naming another pair than ``ours`` is a conflict, never a move.
    """
    if answer is None:
        link.silent += 1
        link.due = now + (interval / 2 if link.silent == 1 else interval)
        return SILENT
    link.silent, link.ever_answered = 0, True
    if isinstance(answer, dict):
        held = (answer.get("dispatch_port"), answer.get("broadcast_port"))
        link.due = now + interval
        if ours is None or held == tuple(ours):
            link.registered, link.refusals, link.problem = True, 0, None
            return OK
        if action == HEARTBEAT:        # its entry names other ports: register again, now
            link.registered, link.due = False, now
            return LOST
        if not strict:
            link.registered, link.refusals, link.problem = True, 0, None
            return MOVED
        return _refused(link, now, f"it gave ports {held[0]}/{held[1]} instead of "
                                   f"{ours[0]}/{ours[1]}", CONFLICT)
    if code == "not-found" and action == HEARTBEAT:
        link.registered, link.due = False, now
        return LOST
    kind = CONFLICT if code == "conflict" else REFUSED
    # A refused heartbeat (another instance holds the name now, or another key):
    # keep heartbeating, never register, which would take the name back.
    return _refused(link, now, str(answer), kind, registered=action == HEARTBEAT)


def _refused(link: RouterLink, now: float, message: str, kind: str,
             registered: bool = False) -> str:
    link.registered = registered
    link.refusals += 1
    link.due = now + REFUSAL_RETRY.delay(link.refusals - 1)
    link.problem = message
    return kind


def conflicts(links: Iterable[RouterLink]) -> List[str]:
    """What the routers refused us, ``"<address>: <why>"``: reported to the others."""
    return [f"{link.address}: {link.problem}" for link in links if link.problem]


def should_spawn(links: Iterable[RouterLink], allow_spawn: bool, protocol: str,
                 last_spawn: Optional[float], now: float, retry: float) -> bool:
    """Whether to start a replacement router: none answers, and it is allowed.

    Every router must have missed its last request.  The bind decides who
    serves (a second router cannot bind the address of the first), which
    holds for tcp only (an ipc bind takes the path over); ``retry`` seconds
    pass between two attempts of one dispatcher.
    """
    links = list(links)
    if not allow_spawn or protocol != "tcp" or not links:
        return False
    if not all(link.silent > 0 for link in links):
        return False
    return last_spawn is None or now - last_spawn >= retry


def _summary(entry: Mapping[str, Any]) -> Tuple[Any, ...]:
    registered = entry.get("state") != "down"
    return (entry.get("host"), entry.get("dispatch_port"), entry.get("broadcast_port"),
            registered)


def disagreements(books: Mapping[str, Optional[List[Mapping[str, Any]]]]) -> Set[Tuple[str, str]]:
    """(service, dispatcher) of the entries the routers' books disagree on.

    ``books`` maps each router to its entries, or None when it did not
    answer (it is left out: silence is not disagreement).  An entry
    disagrees when a router lacks it, or records another host, other ports,
    or registered where another has it down.  (Live versus stale is timing,
    not disagreement.)
    """
    answered = [entries for entries in books.values() if entries is not None]
    if len(answered) < 2:
        return set()
    views: List[Dict[Tuple[str, str], Tuple[Any, ...]]] = [
        {(str(e.get("service")), str(e.get("dispatcher"))): _summary(e) for e in entries}
        for entries in answered]
    names = set().union(*views)
    return {name for name in names
            if len({view.get(name) for view in views}) > 1}
