"""The wire protocol, sans I/O: multipart frames to plain data and back.

Nothing here touches a socket.  The router, dispatchers and clients call these
functions on the frame lists that pyzmq gives them; tests and fuzzers call them
with no network at all.  ``docs/protocol.rst`` is the normative description.

Frames (all text is UTF-8, JSON is RFC 8259)::

    request   [VERSION, request-id, command, target, payload-json (, raw)]
    reply     [VERSION, request-id, status, payload-json (, raw)]
    broadcast [topic, VERSION, payload-json (, raw)]

``status`` is ``ack`` (received, working on it), ``ok`` (payload is the
result) or ``error`` (payload is ``{"code", "message", "type"}``).  A ROUTER
socket prefixes the identity frame(s); REQ peers add an empty delimiter, which
:func:`split_envelope` keeps so the reply can be routed back verbatim.

Decoding never raises: it returns either the message or a :class:`Malformed`
value that says what was wrong, so a server can answer and go on serving.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

__all__ = [
    "VERSION",
    "MAX_ID_LENGTH",
    "DEFAULT_MAX_MESSAGE",
    "ROUTER_COMMANDS",
    "DISPATCHER_COMMANDS",
    "ACK",
    "OK",
    "ERROR",
    "STATUSES",
    "E_FRAMES",
    "E_VERSION",
    "E_ENCODING",
    "E_JSON",
    "E_COMMAND",
    "E_TOO_LARGE",
    "E_REQUEST",
    "E_NOT_FOUND",
    "E_UNKNOWN_KEYWORD",
    "E_READ_ONLY",
    "E_WRITE_ONLY",
    "E_INVALID",
    "E_WRITE_FAILED",
    "E_READ_FAILED",
    "E_EXHAUSTED",
    "E_CONFLICT",
    "E_NOT_ALLOWED",
    "E_SHUTTING_DOWN",
    "E_INTERNAL",
    "E_BUSY",
    "ERROR_CODES",
    "ENVELOPE_ALLOWANCE",
    "Frames",
    "Request",
    "Reply",
    "Broadcast",
    "Malformed",
    "Throttle",
    "new_id",
    "dumps",
    "loads",
    "frames_size",
    "request_overhead",
    "payload_overhead",
    "oversize",
    "split_envelope",
    "encode_request",
    "request",
    "decode_request",
    "encode_reply",
    "ok",
    "ack",
    "error",
    "error_payload",
    "exception_payload",
    "malformed_reply",
    "decode_reply",
    "TOPIC_SEP",
    "topic",
    "service_prefix",
    "encode_broadcast",
    "broadcast_frames",
    "decode_broadcast",
    "BadRequest",
    "field_of",
    "finite",
]

VERSION = b"CZMQ1"
"""Protocol signature and version; the first frame of every request and reply."""

MAX_ID_LENGTH = 64
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024

# Commands each server understands.  ``ping`` is common to both.
ROUTER_COMMANDS = frozenset({"register", "lookup", "unregister", "heartbeat", "list", "shutdown",
                             "ping", "forget", "unblock"})
DISPATCHER_COMMANDS = frozenset({"read", "write", "list", "describe", "identify", "ping"})

ACK, OK, ERROR = "ack", "ok", "error"
STATUSES = frozenset({ACK, OK, ERROR})

# Stable error codes.  Clients act on the code, people read the message.
E_FRAMES = "bad-frames"            # wrong number of frames
E_VERSION = "bad-version"          # first frame is not VERSION
E_ENCODING = "bad-encoding"        # a text frame is not UTF-8
E_JSON = "bad-json"                # the payload is not JSON
E_COMMAND = "unknown-command"      # command not understood by this server
E_TOO_LARGE = "too-large"          # message larger than the configured maximum
E_REQUEST = "bad-request"          # payload fields missing or of the wrong type
E_NOT_FOUND = "not-found"          # no such service (router)
E_UNKNOWN_KEYWORD = "unknown-keyword"
E_READ_ONLY = "read-only"
E_WRITE_ONLY = "write-only"
E_INVALID = "invalid-value"        # conversion, range or check() refused the value
E_WRITE_FAILED = "write-failed"    # a write hook raised
E_READ_FAILED = "read-failed"      # a read hook raised
E_EXHAUSTED = "range-exhausted"    # router: no free port pair
E_CONFLICT = "conflict"            # router: name held by a live dispatcher elsewhere; duplicate keyword
E_NOT_ALLOWED = "not-allowed"      # refused by policy (e.g. shutdown, write access)
E_SHUTTING_DOWN = "shutting-down"
E_INTERNAL = "internal"            # a bug on the server; the message says more
E_BUSY = "busy"                    # too many requests already wait for this keyword's hooks

ERROR_CODES = frozenset({
    E_FRAMES, E_VERSION, E_ENCODING, E_JSON, E_COMMAND, E_TOO_LARGE, E_REQUEST,
    E_NOT_FOUND, E_UNKNOWN_KEYWORD, E_READ_ONLY, E_WRITE_ONLY, E_INVALID,
    E_WRITE_FAILED, E_READ_FAILED, E_EXHAUSTED, E_CONFLICT, E_NOT_ALLOWED,
    E_SHUTTING_DOWN, E_INTERNAL, E_BUSY,
})

#: Bytes a message may add around a value when nothing better is known (the
#: dispatcher and client compute theirs: see request_overhead, oversize).
ENVELOPE_ALLOWANCE = 1024
#: Slack added to computed overheads (envelope frames of a ROUTER peer).
_OVERHEAD_SLACK = 64

Frames = Sequence[Union[bytes, bytearray, memoryview, Any]]


@dataclass(frozen=True)
class Request:
    id: str
    command: str
    target: str = ""
    payload: Any = None
    raw: Optional[bytes] = None


@dataclass(frozen=True)
class Reply:
    id: str
    status: str
    payload: Any = None
    raw: Optional[bytes] = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def error(self) -> Optional[dict]:
        return self.payload if self.status == ERROR else None


@dataclass(frozen=True)
class Broadcast:
    service: str
    keyword: str          # "" for a heartbeat
    payload: Any = None
    raw: Optional[bytes] = None

    @property
    def is_heartbeat(self) -> bool:
        return self.keyword == ""


@dataclass(frozen=True)
class Malformed:
    """What was wrong with a message that could not be decoded.

    ``id`` is the request id when it could be recovered, so the error reply
    can still be matched by the sender.
    """
    code: str
    message: str
    id: str = ""


class Throttle:
    """At most ``burst`` events per ``period`` seconds; the rest are only counted.

    Servers log malformed messages through one, so that a peer sending
    garbage at full speed cannot fill the disk with log lines: ``allow(now)``
    returns ``(log it, events not logged since the last one logged)``.
    """

    def __init__(self, burst: int = 10, period: float = 10.0) -> None:
        self.burst = burst
        self.period = period
        self._window = float("-inf")
        self._used = 0
        self._dropped = 0

    def allow(self, now: float) -> Tuple[bool, int]:
        if now - self._window >= self.period:
            self._window, self._used = now, 0
        if self._used < self.burst:
            self._used += 1
            dropped, self._dropped = self._dropped, 0
            return True, dropped
        self._dropped += 1
        return False, 0


# --------------------------------------------------------------------------- ids

_counter = itertools.count(1)
_prefix = os.urandom(3).hex()


def new_id() -> str:
    """A request id unique in this process and unlikely to repeat across restarts."""
    return f"{_prefix}-{next(_counter)}"


# ----------------------------------------------------------------------- helpers

def _bytes(frame: Any) -> bytes:
    if isinstance(frame, bytes):
        return frame
    buf = getattr(frame, "buffer", None)   # zmq.Frame
    if buf is not None:
        return bytes(buf)
    return bytes(frame)


def _text(frame: bytes) -> str:
    return frame.decode("utf-8")


def _json_default(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)   # numpy scalars and arrays
    if tolist is not None:
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# One encoder and one decoder for the process: json.dumps()/json.loads() with
# non-default options build a new JSONEncoder/JSONDecoder on every call, which
# was a measurable share of each request, reply and broadcast (scripts/bench).
# Both are stateless between calls and safe to share between threads.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            default=_json_default)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                                  default=_json_default)


try:        # the C encoder JSONEncoder.encode() builds on each call, built once
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
    from json.encoder import encode_basestring as _encode_basestring
except ImportError:  # pragma: no cover - CPython always has them
    _c_make_encoder = None
# No circular-reference check (markers=None): payloads are built by this package.
_C_ENCODE = None if _c_make_encoder is None else _c_make_encoder(
    None, _json_default, _encode_basestring, None, ":", ",", False, False, False)


def dumps(obj: Any) -> bytes:
    """Compact JSON; NaN is not JSON, so callers encode it (types.to_wire) first.

    A string holding a lone UTF-16 surrogate (it cannot be UTF-8) is written
    as a ``\\uXXXX`` escape instead of raising: encoding a reply or a
    broadcast must never fail on its text.
    """
    try:
        if _C_ENCODE is not None:
            return "".join(_C_ENCODE(obj, 0)).encode("utf-8")
        return _ENCODER.encode(obj).encode("utf-8")
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(obj).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(data: bytes) -> Any:
    """Strict JSON: also refuses nesting deeper than Python's recursion limit and
    strings with a lone UTF-16 surrogate (``"\\ud800"``: not Unicode text, and
    it could not be UTF-8 encoded again).  Every refusal is a ValueError."""
    text = data.decode("utf-8")
    try:
        obj = _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _lone_surrogate(obj):
        raise ValueError("a string holds a lone UTF-16 surrogate, which is not Unicode text")
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(obj: Any) -> bool:
    """Whether a decoded value holds a surrogate code point (json pairs proper pairs)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _size(frames: Sequence[Any]) -> int:
    total = 0
    for f in frames:
        n = getattr(f, "nbytes", None)
        total += n if isinstance(n, int) else len(f)
    return total


def frames_size(frames: Sequence[Any]) -> int:
    """The bytes a list of frames puts on the wire (memoryviews counted by nbytes)."""
    return _size(frames)


def request_overhead(command: str, target: str, field: str = "value") -> int:
    """What a request adds around ``{field: VALUE}``'s value: every other byte, at most."""
    return (len(VERSION) + 4 * MAX_ID_LENGTH + len(command.encode("utf-8"))
            + len(target.encode("utf-8")) + len(dumps({field: 0})) - 1 + _OVERHEAD_SLACK)


def payload_overhead(payload: Any, *frames: bytes) -> int:
    """What a message adds around a value: ``payload`` holds the value as ``0``
    (and its other fields at their widest), ``frames`` are its other frames."""
    return len(dumps(payload)) - 1 + sum(len(f) for f in frames) + _OVERHEAD_SLACK


def oversize(wire: Any, raw: Any, limit: int,
             overhead: int = ENVELOPE_ALLOWANCE) -> Optional[int]:
    """None if a message carrying ``wire`` (as JSON) and ``raw`` fits ``limit``; else its size.

    ``overhead`` is what the message adds around the value (frames, names,
    time, seq...), which the check keeps free.  Cheap bounds decide
    first (a 17 MiB string or a ten-million-element list is refused without
    being encoded; a short value passes without it); only values near the
    limit are encoded to know.  The size returned is exact, or a lower bound
    when the value was refused on its bound.
    """
    raw_n = 0 if raw is None else _size([raw])
    budget = limit - overhead - raw_n
    low = _json_low(wire)
    if low > budget:
        return raw_n + low + overhead
    if _json_high(wire) <= budget:
        return None
    exact = len(dumps(wire))
    return None if exact <= budget else raw_n + exact + overhead


_NUMBER_JSON = 25          # the longest JSON number: -1.2345678901234567e-308 and a comma
_UNKNOWN = 1 << 62


def _json_low(wire: Any) -> int:
    """A lower bound of ``len(dumps(wire))`` in O(1)."""
    if isinstance(wire, str):
        return len(wire) + 2                 # a code point is at least one byte
    if isinstance(wire, (list, tuple)):
        return 2 * len(wire) + 1 if wire else 2   # an element and a comma each
    return 1


def _json_high(wire: Any) -> int:
    """An upper bound of ``len(dumps(wire))``, or a huge number when it is not cheap to know."""
    if isinstance(wire, str):
        return 6 * len(wire) + 2             # at most a 6-byte escape per code point
    if wire is None or isinstance(wire, (bool, float)):
        return _NUMBER_JSON
    if isinstance(wire, int):
        return _NUMBER_JSON if wire.bit_length() <= 64 else _UNKNOWN
    if isinstance(wire, (list, tuple)) and all(
            type(x) is float or (type(x) is int and x.bit_length() <= 64) for x in wire):
        return len(wire) * _NUMBER_JSON + 2
    return _UNKNOWN


# ---------------------------------------------------------------------- envelope

def split_envelope(frames: Sequence[Any]) -> Tuple[List[bytes], List[Any]]:
    """Split what a ROUTER socket received into (envelope, body).

    The envelope is the identity frame, plus the empty delimiter that REQ
    peers add.  Sending ``envelope + body`` on the ROUTER reaches the peer.
    """
    if not frames:
        return [], []
    envelope = [_bytes(frames[0])]
    rest = list(frames[1:])
    if rest and len(rest[0]) == 0:
        envelope.append(b"")
        rest = rest[1:]
    return envelope, rest


# ---------------------------------------------------------------------- requests

def encode_request(req: Request) -> List[bytes]:
    frames = [VERSION, req.id.encode("utf-8"), req.command.encode("utf-8"),
              req.target.encode("utf-8"), dumps(req.payload)]
    if req.raw is not None:
        frames.append(req.raw)
    return frames


def request(command: str, target: str = "", payload: Any = None, *,
            raw: Optional[bytes] = None, id: Optional[str] = None) -> Request:
    return Request(id or new_id(), command, target, payload, raw)


def decode_request(frames: Frames, commands: frozenset = frozenset(),
                   max_size: int = DEFAULT_MAX_MESSAGE) -> Union[Request, Malformed]:
    """Decode a request body (envelope already split off).

    ``commands``, when given, is the set this server understands; anything else
    is :data:`E_COMMAND`.  Never raises.
    """
    try:
        return _decode_request(frames, commands, max_size)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        return Malformed(E_INTERNAL, f"undecodable request: {type(exc).__name__}: {exc}")


def _decode_request(frames: Frames, commands: frozenset, max_size: int) -> Union[Request, Malformed]:
    if len(frames) not in (5, 6):
        return Malformed(E_FRAMES, f"a request has 5 or 6 frames, got {len(frames)}")
    fr = [_bytes(f) for f in frames[:5]]
    rid = _recover_id(fr[1])
    if _size(frames) > max_size:
        return Malformed(E_TOO_LARGE, f"message of {_size(frames)} bytes exceeds the limit of {max_size}", rid)
    if fr[0] != VERSION:
        return Malformed(E_VERSION, f"unsupported protocol version {fr[0][:16]!r}, "
                                    f"this peer speaks {VERSION.decode()}", rid)
    try:
        rid_text, command, target = _text(fr[1]), _text(fr[2]), _text(fr[3])
    except UnicodeDecodeError as exc:
        return Malformed(E_ENCODING, f"id, command and target must be UTF-8: {exc}", rid)
    if not rid_text or len(rid_text) > MAX_ID_LENGTH:
        return Malformed(E_REQUEST, f"request id must have 1 to {MAX_ID_LENGTH} characters", rid)
    if commands and command not in commands:
        return Malformed(E_COMMAND, f"unknown command {command[:40]!r}; "
                                    f"expected one of {', '.join(sorted(commands))}", rid)
    try:
        payload = loads(fr[4]) if fr[4] else None
    except (UnicodeDecodeError, ValueError) as exc:
        return Malformed(E_JSON, f"payload is not JSON: {exc}", rid)
    raw = _bytes(frames[5]) if len(frames) == 6 else None
    return Request(rid_text, command, target, payload, raw)


def _recover_id(frame: bytes) -> str:
    """The request id if it is usable text, so an error can still be matched."""
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return text if 0 < len(text) <= MAX_ID_LENGTH else ""


# ----------------------------------------------------------------------- replies

def encode_reply(rep: Reply) -> List[bytes]:
    frames = [VERSION, rep.id.encode("utf-8"), rep.status.encode("ascii"), dumps(rep.payload)]
    if rep.raw is not None:
        frames.append(rep.raw)
    return frames


def ok(rid: str, payload: Any = None, raw: Optional[bytes] = None) -> List[bytes]:
    return encode_reply(Reply(rid, OK, payload, raw))


def ack(rid: str, started: Optional[float] = None) -> List[bytes]:
    """``ack``; a dispatcher adds its start time, so a client whose dispatcher
    restarts knows that an acknowledged request will never be answered."""
    if started is None:
        return [VERSION, rid.encode("utf-8"), b"ack", b"null"]
    return [VERSION, rid.encode("utf-8"), b"ack", dumps({"started": started})]


def error(rid: str, code: str, message: str, type_name: str = "") -> List[bytes]:
    return encode_reply(Reply(rid, ERROR, error_payload(code, message, type_name)))


def error_payload(code: str, message: str, type_name: str = "") -> dict:
    return {"code": code, "message": message, "type": type_name}


def exception_payload(exc: BaseException, code: str) -> dict:
    """The error payload for an exception: its type name and its own message, not a repr."""
    message = str(exc) if str(exc) else type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:   # KeyError's str() is a repr
        message = str(exc.args[0])
    return error_payload(code, message, type(exc).__name__)


def malformed_reply(m: Malformed) -> List[bytes]:
    return error(m.id, m.code, m.message, "ProtocolError")


def decode_reply(frames: Frames, max_size: int = DEFAULT_MAX_MESSAGE) -> Union[Reply, Malformed]:
    """Decode a reply (as a DEALER receives it).  Never raises."""
    try:
        return _decode_reply(frames, max_size)
    except Exception as exc:  # noqa: BLE001
        return Malformed(E_INTERNAL, f"undecodable reply: {type(exc).__name__}: {exc}")


def _decode_reply(frames: Frames, max_size: int) -> Union[Reply, Malformed]:
    if frames and len(frames[0]) == 0:          # tolerate a REP peer's delimiter
        frames = frames[1:]
    if len(frames) not in (4, 5):
        return Malformed(E_FRAMES, f"a reply has 4 or 5 frames, got {len(frames)}")
    if _size(frames) > max_size:
        return Malformed(E_TOO_LARGE, f"reply of {_size(frames)} bytes exceeds the limit of {max_size}")
    fr = [_bytes(f) for f in frames[:4]]
    rid = _recover_id(fr[1])
    if fr[0] != VERSION:
        return Malformed(E_VERSION, f"unsupported protocol version {fr[0][:16]!r}", rid)
    try:
        status = _text(fr[2])
    except UnicodeDecodeError:
        return Malformed(E_ENCODING, "status is not UTF-8", rid)
    if status not in STATUSES:
        return Malformed(E_REQUEST, f"unknown reply status {status[:20]!r}", rid)
    try:
        payload = loads(fr[3]) if fr[3] else None
    except (UnicodeDecodeError, ValueError) as exc:
        return Malformed(E_JSON, f"payload is not JSON: {exc}", rid)
    if status == ERROR and not _is_error_payload(payload):
        return Malformed(E_REQUEST, "an error reply needs a payload with code and message", rid)
    raw = _bytes(frames[4]) if len(frames) == 5 else None
    return Reply(rid, status, payload, raw)


def _is_error_payload(p: Any) -> bool:
    return isinstance(p, dict) and isinstance(p.get("code"), str) and isinstance(p.get("message"), str)


# -------------------------------------------------------------------- broadcasts

TOPIC_SEP = b"\x00"


def topic(service: str, keyword: str = "") -> bytes:
    """The subscription topic of a keyword (or, with no keyword, the heartbeat).

    ``service NUL KEYWORD NUL``: the terminating NUL makes prefix filtering
    exact, so subscribing to ``FOO`` never delivers ``FOO2``.
    """
    return service.encode("utf-8") + TOPIC_SEP + keyword.upper().encode("utf-8") + TOPIC_SEP


def service_prefix(service: str) -> bytes:
    """Subscribe to this to receive every broadcast of a service (heartbeats included)."""
    return service.encode("utf-8") + TOPIC_SEP


def encode_broadcast(b: Broadcast) -> List[bytes]:
    return broadcast_frames(topic(b.service, b.keyword), b.payload, b.raw)


def broadcast_frames(topic_frame: bytes, payload: Any, raw: Any = None) -> List[Any]:
    """A broadcast's frames on an already-encoded :func:`topic` (publishers cache topics)."""
    frames = [topic_frame, VERSION, dumps(payload)]
    if raw is not None:
        frames.append(raw)
    return frames


def decode_broadcast(frames: Frames, max_size: int = DEFAULT_MAX_MESSAGE) -> Union[Broadcast, Malformed]:
    """Decode what a SUB socket received.  Never raises."""
    try:
        if len(frames) not in (3, 4):
            return Malformed(E_FRAMES, f"a broadcast has 3 or 4 frames, got {len(frames)}")
        if _size(frames) > max_size:
            return Malformed(E_TOO_LARGE, "broadcast exceeds the size limit")
        fr = [_bytes(f) for f in frames[:3]]
        parts = fr[0].split(TOPIC_SEP)
        if len(parts) != 3 or parts[2] != b"":
            return Malformed(E_REQUEST, "malformed topic")
        if fr[1] != VERSION:
            return Malformed(E_VERSION, f"unsupported protocol version {fr[1][:16]!r}")
        service, keyword = _text(parts[0]), _text(parts[1])
        payload = loads(fr[2]) if fr[2] else None
        raw = _bytes(frames[3]) if len(frames) == 4 else None
        return Broadcast(service, keyword, payload, raw)
    except (UnicodeDecodeError, ValueError) as exc:
        return Malformed(E_JSON, f"undecodable broadcast: {exc}")
    except Exception as exc:  # noqa: BLE001
        return Malformed(E_INTERNAL, f"undecodable broadcast: {type(exc).__name__}: {exc}")


# -------------------------------------------------------------- field validation

class BadRequest(ValueError):
    """A payload field is missing or of the wrong type (becomes E_REQUEST)."""


def field_of(payload: Any, name: str, kind: Union[type, Tuple[type, ...]], *,
             required: bool = True, default: Any = None) -> Any:
    """Fetch and type-check one payload field; raises :class:`BadRequest`."""
    if not isinstance(payload, dict):
        raise BadRequest(f"payload must be a JSON object, got {type(payload).__name__}")
    if name not in payload or payload[name] is None:
        if required:
            raise BadRequest(f"payload field {name!r} is required")
        return default
    value = payload[name]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise BadRequest(f"payload field {name!r} must be {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise BadRequest(f"payload field {name!r} must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind: Union[type, Tuple[type, ...]]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))
