"""The router's book as the data of its state file, and back.

The format is ``{"format": STATE_FORMAT, "version": STATE_VERSION, "saved",
"first_port", "last_port", "blocked", "entries": [...]}``; reading it checks
every field, since a state file is input like any other (an older release
accepted names that are refused now: those entries are dropped, the rest
kept).  Pure: the router's :mod:`cauldron_zmq.router.state` reads and
writes the file.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from .entries import RouterRefusal, Entry, _check_host, _check_keywords, _check_name, _is_port

if TYPE_CHECKING:
    from .book import Book

__all__ = ["STATE_FORMAT", "STATE_VERSION", "to_data", "check", "entry_from_row"]

STATE_FORMAT = "cauldron_zmq-router-book"
STATE_VERSION = 1


def to_data(book: "Book", now: Optional[float] = None) -> Dict[str, Any]:
    """The book as JSON-able data for the state file."""
    return {
        "format": STATE_FORMAT, "version": STATE_VERSION,
        "saved": now if now is not None else 0.0,
        "first_port": book.first_port, "last_port": book.last_port,
        "blocked": book.blocked,
        "entries": [
            {"service": e.service, "dispatcher": e.dispatcher, "host": e.host,
             "protocol": e.protocol, "dispatch_port": e.dispatch_port,
             "broadcast_port": e.broadcast_port, "registered": e.registered,
             "last_heartbeat": e.last_heartbeat, "keywords": list(e.keywords),
             "pid": e.pid, "instance": e.instance, "key": e.key, "ready": e.ready}
            for e in book.entries()],
    }


def check(data: Any) -> Tuple[List[Any], List[int]]:
    """(entry rows, blocked ports) of a saved book; ValueError when it is not one."""
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ValueError("not a router state file")
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported state file version {data.get('version')!r}")
    rows, blocked = data.get("entries"), data.get("blocked", [])
    if not isinstance(rows, list):
        raise ValueError("'entries' must be a list")
    if not isinstance(blocked, list) or not all(_is_port(p) for p in blocked):
        raise ValueError("'blocked' must be a list of ports")
    return rows, blocked


def entry_from_row(book: "Book", row: Any, now: float) -> Optional[Entry]:
    """The entry a row describes, for ``book``; None (logged) when it must be dropped.

    Raises ValueError for a row of the wrong shape.  A registered entry gets
    ``last_heartbeat = now``: its dispatcher had no router to heartbeat to.
    """
    service, dispatcher = _typed(row, "service", str), _typed(row, "dispatcher", str)
    host = _typed(row, "host", str)
    try:        # an older release accepted any name and host: drop those, keep the rest
        service = _check_name("service", service).lower()
        _check_name("dispatcher", dispatcher)
        _check_host(host, book.protocol)
    except RouterRefusal as exc:
        book.log.warning("state file: dropping the entry %.80r/%.80r: %s", service, dispatcher,
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
    pair = book.pair_of(dport)
    if pair is None or book.ports(pair) != (dport, bport):
        book.log.warning("state file: dropping %s/%s, ports %d/%d are not a pair of %s",
                         service, dispatcher, dport, bport, book.range_text)
        return None
    return Entry(service, dispatcher, host, proto, pair, dport, bport,
                 now if registered else last, registered, keywords, pid,
                 instance=instance, key=key, ready=ready)


def _typed(row: Any, name: str, kind: Union[type, Tuple[type, ...]]) -> Any:
    if not isinstance(row, dict):
        raise ValueError("an entry must be an object")
    value = row.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"entry field {name!r} is missing or of the wrong type")
    return value
