"""Names and addresses that cross a trust boundary: one validator for all.

Service, dispatcher and keyword names travel in registrations, topics, log
lines and file names; host names and ports arrive in look-up answers.  Each
is checked here, by pure functions, so the router, the dispatcher, keyword
files, the client and the command line agree on what is valid:

* :func:`check_name` -- a name is printable text, at most :data:`MAX_NAME`
  characters, without ``/`` or ``\\`` and not ``.`` or ``..``: names are not
  paths.
* :func:`file_stem` -- the file name a (service, dispatcher) pair's persisted
  values live under: no name can leave the directory, no two pairs share a
  file, and every valid name fits a 255-byte file name (see its docstring).
* :func:`check_host` -- an IPv4/IPv6 address or an RFC 1123 host name.
* :func:`entry_problem` -- what is wrong with one look-up ENTRY, or None.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["InvalidName", "MAX_NAME", "MAX_FILE_NAME", "check_name", "check_host",
           "file_stem", "legacy_file_stem", "entry_problem", "split_entries", "PROTOCOLS"]

#: Longest name, in characters (as the router always allowed).
MAX_NAME = 256
#: Longest file name most file systems accept, in bytes.
MAX_FILE_NAME = 255
#: Longest host name (RFC 1035), in characters.
MAX_HOST = 253
#: Transports a look-up entry may name.
PROTOCOLS = ("tcp", "ipc")

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
# Characters kept as they are in a file name; everything else is %XX-escaped.
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_SUFFIX_ROOM = 32          # after ".json": ".corrupt-<stamp>-<n>" (set_aside), ".<random>.tmp"


class InvalidName(ValueError):
    """A name or address refused by this module; the message says why."""


def check_name(kind: str, value: Any) -> str:
    """``value`` if it is a valid ``kind`` ("service", "dispatcher", "keyword") name.

    Valid: a non-empty string of at most :data:`MAX_NAME` characters, with no
    control character, no lone surrogate, no ``/`` or ``\\``, no leading or
    trailing white space, and not ``.`` or ``..``.  Anything else printable
    (dots, spaces inside, non-ASCII letters) is allowed: KTL names are short
    upper-case words, but nothing here depends on that.
    """
    if not isinstance(value, str):
        raise InvalidName(f"{kind} name must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidName(f"{kind} name must not be empty")
    if len(value) > MAX_NAME:
        raise InvalidName(f"{kind} name is longer than {MAX_NAME} characters")
    shown = value[:40]
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in value):
        raise InvalidName(f"{kind} name {shown!r} contains control characters")
    if "/" in value or "\\" in value:
        raise InvalidName(f"{kind} name {shown!r} contains '/' or '\\': names are not paths")
    if value in (".", ".."):
        raise InvalidName(f"{kind} name {value!r} is not a name")
    if value != value.strip():
        raise InvalidName(f"{kind} name {shown!r} starts or ends with white space")
    return value


def _escape(name: str) -> str:
    """Letters, digits, ``_`` and ``-`` as they are; every other UTF-8 byte as ``%XX``.

    ``.`` is escaped too, which is what makes ``.`` a safe separator.
    """
    out = []
    for ch in name:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def file_stem(service: str, dispatcher: str) -> str:
    """The file name (without ``.json``) of a (service, dispatcher) pair.

    ``<escaped service>.<escaped dispatcher>``: each name is percent-escaped
    (:func:`_escape`), so the result holds no ``/``, never starts with ``.``,
    and the one unescaped ``.`` separates the two names -- (``ab.x``, ``y``)
    is ``ab%2Ex.y`` and (``ab``, ``x.y``) is ``ab.x%2Ey``.  Plain names
    (``demo``, ``default``) keep the name they always had.  When the escaped
    form would not leave room in a 255-byte file name for the suffixes
    (``.json``, ``.corrupt-<time>``), it is cut and the SHA-256 of the full
    escaped form appended (``<first bytes>~<64 hex digits>``): still unique,
    still recognisable.
    """
    stem = f"{_escape(service)}.{_escape(dispatcher)}"
    room = MAX_FILE_NAME - _SUFFIX_ROOM - len(".json")
    if len(stem) <= room:
        return stem
    digest = hashlib.sha256(stem.encode("ascii")).hexdigest()
    head = stem[:room - len(digest) - 1]
    if "%" in head[-2:]:                    # do not cut an escape in half
        head = head[:head.rindex("%")]
    return f"{head}~{digest}"


def legacy_file_stem(service: str, dispatcher: str) -> Optional[str]:
    """The name releases before 0.x used (``<service>.<dispatcher>``), or None
    when it could not be a file in the directory (too long, or a path)."""
    stem = f"{service}.{dispatcher}"
    if "/" in stem or "\\" in stem or stem.startswith(".") or \
            len((stem + ".json").encode("utf-8", "replace")) > MAX_FILE_NAME:
        return None
    return stem


def check_host(host: Any) -> str:
    """``host`` if it is an IP address or a host name (RFC 1123 labels, ``_`` allowed)."""
    if not isinstance(host, str) or not host:
        raise InvalidName(f"host must be a non-empty string, got {host!r}")
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(text)
        return host
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    if len(name) > MAX_HOST or not name or \
            not all(_HOST_LABEL.match(label) for label in name.split(".")):
        raise InvalidName(f"host {host[:60]!r} is not an IP address or a host name")
    return host


def _port(entry: Dict[str, Any], field: str) -> Optional[str]:
    value = entry.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        return f"{field} {value!r} is not a port number"
    return None


def entry_problem(entry: Any) -> Optional[str]:
    """Why a look-up ENTRY cannot be connected to, or None when it can.

    A client checks every entry before it builds sockets from it: a bogus
    registration must cost that one dispatcher, never the client.
    """
    if not isinstance(entry, dict):
        return f"an entry must be an object, got {type(entry).__name__}"
    try:
        check_name("dispatcher", entry.get("dispatcher"))
    except InvalidName as exc:
        return str(exc)
    proto = entry.get("protocol", "tcp")
    if proto not in PROTOCOLS:
        return f"protocol {proto!r} is not supported (only {', '.join(PROTOCOLS)})"
    if proto == "tcp":
        try:
            check_host(entry.get("host"))
        except InvalidName as exc:
            return str(exc)
    elif not isinstance(entry.get("host"), str) or not entry["host"] or "\0" in entry["host"]:
        return f"host {entry.get('host')!r} is not an ipc path"
    for field in ("dispatch_port", "broadcast_port"):
        problem = _port(entry, field)
        if problem:
            return problem
    keywords = entry.get("keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        return "keywords must be a list of strings"
    return None


def split_entries(entries: Any) -> Tuple[List[Dict[str, Any]], List[str]]:
    """(usable entries, one problem text per unusable one) of a look-up answer."""
    if not isinstance(entries, list):
        return [], [f"'dispatchers' must be a list, got {type(entries).__name__}"]
    good, bad = [], []
    for entry in entries:
        problem = entry_problem(entry)
        if problem is None:
            good.append(entry)
        else:
            name = entry.get("dispatcher") if isinstance(entry, dict) else None
            bad.append(f"dispatcher {name!r}: {problem}" if isinstance(name, str) else problem)
    return good, bad
