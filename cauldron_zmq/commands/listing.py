"""What ``cauldron-zmq list`` prints: the router's services, or one service's keywords.

The router's book names every dispatcher a service has had, with its state
and the keywords it registered, so the keywords of a dispatcher that is down
are still listed (with that state), not left out; the keywords of live
dispatchers are described by the dispatchers themselves (type, units,
range, access, value, description).
"""
from __future__ import annotations

import difflib
import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Union

from ..config import Config, load_config
from ..errors import CauldronError, ServiceNotFound, TimeoutError
from ..router import RouterClient
from .text import access_text, columns, in_seconds, plural, range_text, seconds_text

__all__ = ["list_services", "list_keywords", "router_book", "keyword_rows", "KEYWORD_COLUMNS"]

LIVE = "live"
SILENT = "not answering"        # live in the router's book, but no answer to us
KEYWORD_COLUMNS = ("KEYWORD", "TYPE", "UNITS", "RANGE", "ACCESS", "VALUE", "DESCRIPTION")
Output = Union[List[str], str]          # lines, or one JSON document


def router_book(config: Config, timeout: Optional[float]) -> Dict[str, Any]:
    """The router's ``list`` answer; a timeout's message gives seconds."""
    millis = max(1, int(round(timeout * 1000))) if timeout is not None else None
    try:
        with RouterClient(config, timeout=millis) as client:
            return client.list()
    except TimeoutError as exc:
        raise TimeoutError(in_seconds(str(exc))) from None


# ----------------------------------------------------------------- services

def list_services(config_path: Optional[str], timeout: Optional[float],
                  as_json: bool) -> Output:
    """One row per service: how many keywords, and its dispatchers with their states."""
    config = load_config(config_path)
    book = router_book(config, timeout)
    services: Dict[str, List[Dict[str, Any]]] = {}
    for entry in book.get("entries") or ():
        services.setdefault(entry["service"], []).append(entry)
    if as_json:
        return json.dumps({name: sorted(f"{e['dispatcher']} ({e.get('state', '?')})"
                                        for e in entries)
                           for name, entries in sorted(services.items())}, indent=2)
    if not services:
        return [f"no services are registered with the router at {config.router_address()}"]
    rows = [("SERVICE", "KEYWORDS", "DISPATCHERS")]
    for name in sorted(services):
        entries = sorted(services[name], key=lambda e: e["dispatcher"])
        names = {kw for e in entries for kw in e.get("keywords") or ()}
        rows.append((name, plural(len(names), "keyword"),
                     ", ".join(f"{e['dispatcher']} ({e.get('state', '?')})" for e in entries)))
    return columns(rows)


# ----------------------------------------------------------------- keywords

def list_keywords(service: str, config_path: Optional[str], timeout: Optional[float],
                  as_json: bool, open_service: Callable[..., Any]) -> Output:
    """A table of the service's keywords, those of dispatchers that are down included."""
    config = load_config(config_path)
    entries = _entries(config, service, timeout)
    rows = keyword_rows(service, config, timeout, entries, open_service)
    if as_json:
        return json.dumps({row["keyword"]: {k: v for k, v in row.items() if k != "keyword"}
                           for row in rows}, indent=2)
    if not rows:
        return [f"service {service.lower()!r} has no keywords"]
    table = [KEYWORD_COLUMNS] + [_cells(row) for row in rows]
    return columns(table) + _absent_notes(rows)


def _entries(config: Config, service: str,
             timeout: Optional[float]) -> Optional[List[Dict[str, Any]]]:
    """The book's entries for the service (every state); None without a router."""
    if not config.router.enable:
        return None
    book = router_book(config, timeout)
    all_entries = book.get("entries") or ()
    name = service.strip().lower()
    mine = [e for e in all_entries if e["service"] == name]
    if not mine:
        known = sorted({e["service"] for e in all_entries})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ServiceNotFound(f"service {name!r} is not known to the router at "
                              f"{config.router_address()}{hint}")
    return sorted(mine, key=lambda e: e["dispatcher"])


def keyword_rows(service: str, config: Config, timeout: Optional[float],
                 entries: Optional[Sequence[Dict[str, Any]]],
                 open_service: Callable[..., Any]) -> List[Dict[str, Any]]:
    """One dict per keyword, sorted by name.

    Without a router, the service describes itself (one round trip per
    dispatcher).  With one, the keywords of live dispatchers are described
    one by one (about a millisecond each), and a dispatcher that fails to
    answer is marked ``not answering`` after its first failure, so a
    dispatcher that died a moment ago (still ``live`` in the book) costs one
    timeout, not one per keyword; the keywords of the others come from the
    book, with the state of their dispatcher.
    """
    if entries is None:
        with open_service(service, config, timeout, populate=True) as svc:
            return [_described(svc[name], None) for name in svc.keywords()]
    rows: List[Dict[str, Any]] = []
    live = [e for e in entries if e.get("state") == LIVE]
    if live:
        booked = {name for e in entries for name in e.get("keywords") or ()}
        with open_service(service, config, timeout) as svc:
            rows = _describe_live(svc, live, booked)
    for entry in entries:
        if entry.get("state") != LIVE:
            rows.extend(_absent(name, entry) for name in entry.get("keywords") or ())
    return sorted(rows, key=lambda row: row["keyword"])


def _describe_live(svc: Any, live: Sequence[Dict[str, Any]],
                   booked: Set[str]) -> List[Dict[str, Any]]:
    """Rows for the keywords of the live dispatchers, and for any keyword the
    service serves that no entry of the book names (``booked``)."""
    rows: List[Dict[str, Any]] = []
    for entry in live:
        names = [n for n in entry.get("keywords") or () if svc.has_keyword(n)]
        for i, name in enumerate(names):
            try:
                rows.append(_described(svc[name], entry))
            except CauldronError as exc:
                entry = dict(entry, state=SILENT, error=in_seconds(" ".join(str(exc).split())))
                rows.extend(_absent(n, entry) for n in names[i:])
                break
    for name in svc.keywords():                 # served, but not in the book's lists
        if name not in booked:
            rows.append(_described(svc[name], None))
    return rows


def _described(kw: Any, entry: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    kt = kw.keyword_type
    return {"keyword": kw.name, "type": kw["type"], "units": kw["units"] or "",
            "range": range_text(kt), "minimum": kt.minimum, "maximum": kt.maximum,
            "enumerators": [name for _, name in kt.enumerators or ()] or None,
            "access": access_text(kw["reads"], kw["writes"]),
            "readonly": not kw["writes"], "ascii": kw["ascii"],
            "description": kw["description"] or "",
            "dispatcher": entry["dispatcher"] if entry else None,
            "state": entry["state"] if entry else LIVE}


def _absent(name: str, entry: Dict[str, Any]) -> Dict[str, Any]:
    """A keyword whose dispatcher is not live: only its name and its dispatcher are known."""
    return {"keyword": name, "type": None, "units": "", "range": "", "minimum": None,
            "maximum": None, "enumerators": None, "access": "", "readonly": None,
            "ascii": None, "description": "", "dispatcher": entry["dispatcher"],
            "state": entry.get("state", "?"), "age": entry.get("age"),
            "error": entry.get("error")}


def _cells(row: Dict[str, Any]) -> Sequence[str]:
    if row["state"] != LIVE:
        value = f"({row['dispatcher']} {row['state']})"
    else:
        value = "" if row["ascii"] is None else row["ascii"]
    return (row["keyword"], row["type"] or "", row["units"], row["range"], row["access"],
            value, row["description"])


def _absent_notes(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """A sentence per dispatcher whose keywords have no value here, saying why."""
    notes = []
    seen = set()
    for row in rows:
        name = row["dispatcher"]
        if row["state"] == LIVE or name in seen:
            continue
        seen.add(name)
        count = plural(sum(1 for r in rows if r["dispatcher"] == name), "keyword")
        if row["state"] == SILENT:
            why = f"is registered but not answering ({row.get('error')})"
        else:
            why = (f"is {row['state']} (last heard "
                   f"{seconds_text(float(row.get('age') or 0))} ago)")
        notes.append(f"dispatcher {name!r} {why}; {count} without a value here")
    return notes
