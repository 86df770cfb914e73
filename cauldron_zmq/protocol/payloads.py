"""The payloads producers and consumers share: one definition each, decoded once.

A heartbeat, a keyword's value and a look-up entry travel as JSON objects.
The side that makes one builds it from these types (``to_payload``), and the
side that receives one decodes it here, at the boundary, into the same type
(``from_payload``): a field renamed or retyped on one side shows up in both,
and the state machines (:mod:`.links`, :mod:`.cache`) see typed values, never
a dict from the network.  Decoding is tolerant by design: a field of the
wrong type is taken as absent (None), never trusted -- staleness, loss
detection and restart detection depend on these numbers.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

__all__ = ["Heartbeat", "Value", "Entry", "gseq_of"]


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)           # a 400-digit JSON integer does not fit
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _positive(value: Any) -> Optional[float]:
    number = _number(value)
    return number if number is not None and number > 0 else None


def gseq_of(payload: Mapping[str, Any]) -> Optional[int]:
    """A broadcast's sequence number (None if absent or not an integer)."""
    return _int(payload.get("gseq"))


class Heartbeat(NamedTuple):
    """A dispatcher's heartbeat: which process (``started``, ``pid``), how far its
    broadcasts got (``gseq``), how often it beats (``interval``, s)."""

    started: Optional[float]
    pid: Optional[int]
    gseq: Optional[int]
    interval: Optional[float]

    def to_payload(self, dispatcher: str, now: float) -> Dict[str, Any]:
        """The JSON object a dispatcher publishes (``now``: its wall-clock time)."""
        return {"dispatcher": dispatcher, "time": now, "interval": self.interval,
                "gseq": self.gseq, "pid": self.pid, "started": self.started}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "Heartbeat":
        return cls(_number(payload.get("started")), _int(payload.get("pid")),
                   _int(payload.get("gseq")), _positive(payload.get("interval")))


class Value(NamedTuple):
    """A keyword's value as a read, a write reply or a broadcast carries it.

    ``value`` stays in wire form (decoding it needs the keyword's type);
    ``gseq`` is the dispatcher's broadcast sequence number (broadcasts only).
    """

    value: Any
    ascii: Optional[str]
    time: Optional[float]
    seq: Optional[int]
    gseq: Optional[int] = None

    def to_payload(self, keyword: str, with_ascii: bool = True) -> Dict[str, Any]:
        """The JSON object a dispatcher sends (``gseq`` added when publishing).

        Strings and arrays go without ``ascii`` (``with_ascii=False``): a
        string's is its value, and clients format an array's when asked, so a
        large value travels once.
        """
        out: Dict[str, Any] = {"keyword": keyword, "value": self.value}
        if with_ascii:
            out["ascii"] = self.ascii
        out["time"], out["seq"] = self.time, self.seq
        if self.gseq is not None:
            out["gseq"] = self.gseq
        return out

    @classmethod
    def from_payload(cls, payload: Any, raw: Optional[bytes] = None) -> Optional["Value"]:
        """The value a payload carries; None if it carries none (yet).

        A payload without a value (and no raw frame) leaves a keyword
        unpopulated and adds no history entry.
        """
        if not isinstance(payload, dict) or payload.get("value") is None and raw is None:
            return None
        text = payload.get("ascii")
        return cls(payload.get("value"), text if isinstance(text, str) else None,
                   _number(payload.get("time")), _int(payload.get("seq")),
                   _int(payload.get("gseq")))


class Entry(NamedTuple):
    """One dispatcher of a look-up answer: who it is and where it listens.

    Validation (names, hosts, port ranges) is :func:`cauldron_zmq.names.split_entries`'s;
    this is the typed form of an entry that passed it.
    """

    dispatcher: str
    protocol: str
    host: str
    dispatch_port: int
    broadcast_port: int
    keywords: Tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Its identity: the dispatcher's name, else host:port (a static ``[zmq]`` entry)."""
        return self.dispatcher or f"{self.host}:{self.dispatch_port}"

    @property
    def address(self) -> Tuple[str, str, int, int]:
        return (self.protocol, self.host, self.dispatch_port, self.broadcast_port)

    def to_payload(self) -> Dict[str, Any]:
        return {"dispatcher": self.dispatcher, "protocol": self.protocol, "host": self.host,
                "dispatch_port": self.dispatch_port, "broadcast_port": self.broadcast_port,
                "keywords": list(self.keywords)}

    @classmethod
    def from_payload(cls, entry: Mapping[str, Any]) -> "Entry":
        keywords = entry.get("keywords") or ()
        return cls(str(entry.get("dispatcher") or ""), str(entry.get("protocol") or "tcp"),
                   str(entry.get("host") or "localhost"), int(entry.get("dispatch_port") or 0),
                   int(entry.get("broadcast_port") or 0),
                   tuple(str(k).upper() for k in keywords) if isinstance(keywords, list) else ())
