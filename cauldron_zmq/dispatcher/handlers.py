"""The dispatcher's request handlers: what each request is answered, without a socket.

Each handler is a function of the decoded request, the service (the keyword
container: ``svc[name]``-like look-ups, its name, dispatcher and keyword
list) and a :class:`Context` (the size limit, the hook-error and oversize
logs, the CurveZMQ key of the sender).  It returns either the reply frames
or a :class:`Deferred`: "acknowledge now, run this on the keyword's worker
queue, its result is the reply".  The I/O thread (:mod:`.io`) decodes the
request, calls :func:`answer` and carries the decision out; the tests in
``tests/dispatcher/test_handlers.py`` call the handlers with no socket at all.

Instrument code (a keyword's hooks) runs only inside a :class:`Deferred`'s
``work``, i.e. on a worker thread, never on the I/O thread.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Union

from .. import __version__, protocol
from ..errors import NoWriteNecessary
from ..keywords import Keyword, Snapshot
from ..workers import RepeatLog

if TYPE_CHECKING:
    import logging

    from .service import Service

__all__ = ["Context", "Deferred", "Answer", "answer", "read", "write", "list_keywords",
           "describe", "identify", "ping", "busy", "shutting_down", "run_deferred",
           "OVERHEAD_BOUND", "DESCRIBE_ARRAY_ELEMENTS"]

#: More than a reply or broadcast ever adds around a value (names of 256
#: characters, UTF-8): below ``limit - OVERHEAD_BOUND`` a value needs no exact check.
OVERHEAD_BOUND = 8192
#: Elements of a numpy array value a describe of every keyword still carries (as JSON).
DESCRIBE_ARRAY_ELEMENTS = 4096
_VALUE_FIELDS = ("value", "ascii", "time", "seq")


class Context:
    """What a handler needs besides the request and the keywords.

    One per I/O thread.  ``client_key`` is the CurveZMQ public key of the
    request being handled (set by the I/O thread before each call; None
    without security).  ``log_oversize`` is throttled, because instrument
    code setting a value too large to send may do so in a loop; it and
    ``hook_errors`` are also used by worker threads.
    """

    def __init__(self, max_size: int, log: "logging.LoggerAdapter[Any]") -> None:
        self.max_size = max_size
        self.log = log
        self.hook_errors = RepeatLog(log)      # a failing hook is logged once per minute
        self.client_key: Optional[str] = None
        self._oversize = protocol.Throttle()

    def log_oversize(self, what: str, size: int) -> None:
        log_it, unlogged = self._oversize.allow(time.monotonic())
        if log_it:
            self.log.error("%s: %d bytes exceed the message size limit of %d ([zmq] "
                           "max-message-size); a value that large was set by instrument "
                           "code, not by a client write%s", what, size, self.max_size,
                           f" ({unlogged} more not logged)" if unlogged else "")


class Deferred(NamedTuple):
    """Acknowledge now; run ``work`` on ``keyword``'s worker queue: it returns the reply."""

    keyword: Keyword
    work: Callable[[], List[Any]]


#: A handler's decision: the reply frames, or work for the keyword's queue.
Answer = Union[List[Any], Deferred]
Handler = Callable[[protocol.Request, "Service", Context], Answer]


class Refusal(Exception):
    """A request refused with a protocol code; ``exc`` gives type and message."""

    def __init__(self, code: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.code = code
        self.exc = exc


def answer(req: protocol.Request, svc: "Service", ctx: Context) -> Answer:
    """The decision for one well-formed request; refusals and bugs become error replies."""
    try:
        return HANDLERS[req.command](req, svc, ctx)
    except Refusal as exc:
        return error_reply(req.id, exc.exc, exc.code)
    except protocol.BadRequest as exc:
        return error_reply(req.id, exc, protocol.E_REQUEST)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the dispatcher
        ctx.log.exception("internal error answering %s %r", req.command, req.target)
        return internal_error(req.id, exc)


def run_deferred(req: protocol.Request, deferred: Deferred, log: Any) -> List[Any]:
    """On a worker: the deferred work's reply, an ``internal`` error if it raised."""
    try:
        return deferred.work()
    except Exception as exc:  # noqa: BLE001
        log.exception("internal error in %s %s", req.command, deferred.keyword.name)
        return internal_error(req.id, exc)


# ---------------------------------------------------------------- handlers

def read(req: protocol.Request, svc: "Service", ctx: Context) -> Answer:
    """A keyword's value: at once when no read hook runs, else after ``update()`` on a worker."""
    kw = _keyword(req, svc)
    if kw.writeonly:
        raise Refusal(protocol.E_WRITE_ONLY, ValueError(f"{kw.full_name} is write-only"))
    if kw.fast_read():
        return value_reply(req.id, kw, ctx)
    hook_errors = ctx.hook_errors

    def work() -> List[Any]:
        try:
            kw.update()
        except Exception as exc:  # noqa: BLE001 - the client gets type and message
            hook_errors.error(("read", kw.name), exc, "%s: a read hook raised %s: %s "
                              "(the client got read-failed)", kw.full_name,
                              type(exc).__name__, exc)
            return error_reply(req.id, exc, protocol.E_READ_FAILED)
        return value_reply(req.id, kw, ctx)

    return Deferred(kw, work)


def write(req: protocol.Request, svc: "Service", ctx: Context) -> Answer:
    """Apply a value: at once when no write hook runs, else on the keyword's worker."""
    kw = _keyword(req, svc)
    security = svc._security
    if security is not None:
        refusal = security.write_refusal(svc.name, kw.name, ctx.client_key)
        if refusal is not None:
            raise Refusal(protocol.E_NOT_ALLOWED, PermissionError(refusal))
    if kw.readonly:
        raise Refusal(protocol.E_READ_ONLY, ValueError(f"{kw.full_name} is read-only"))
    value = protocol.field_of(req.payload, "value", object)
    if req.raw is not None or isinstance(value, dict):
        try:
            value = kw.type.from_wire(value, req.raw)
        except ValueError as exc:
            raise Refusal(protocol.E_INVALID, exc) from None
    if kw.fast_write():
        try:
            value = kw.type.coerce(value)
        except (ValueError, TypeError) as exc:
            return error_reply(req.id, exc, protocol.E_INVALID)
        check_size(kw, value, svc, ctx)
        try:
            changed = kw._fast_modify(value)
        except (ValueError, TypeError) as exc:
            return error_reply(req.id, exc, protocol.E_INVALID)
        return value_reply(req.id, kw, ctx, {"changed": changed})
    return Deferred(kw, lambda: _write(req.id, kw, value, svc, ctx))


def list_keywords(req: protocol.Request, svc: "Service", ctx: Context) -> Answer:
    return protocol.ok(req.id, {"service": svc.name, "dispatcher": svc.dispatcher,
                                "keywords": svc.keywords()})


def describe(req: protocol.Request, svc: "Service", ctx: Context) -> Answer:
    """One keyword: its DESCRIPTION and, for a numpy array, the raw frame (as a read).

    Every keyword: one reply, which can hold no raw frame, so a numpy
    array's value travels as a JSON list when it is small and is left
    out when it is not; and values are left out, largest first, while the
    reply would not fit the size limit (the client reads them instead).
    """
    limit = ctx.max_size
    if req.target:
        kw = _keyword(req, svc)
        snap = kw._snap
        desc = kw.describe()
        desc.update(kw.value_payload(snap))
        reply = protocol.ok(req.id, desc, snap.raw)
        if protocol.frames_size(reply) <= limit:
            return reply
        return protocol.ok(req.id, _without_value(desc))
    descs = {kw.name: _description(kw) for kw in svc}
    reply = protocol.ok(req.id, {"keywords": descs})
    if protocol.frames_size(reply) > limit:
        reply = protocol.ok(req.id, {"keywords": _fit(descs, limit)})
    size = protocol.frames_size(reply)
    if size > limit:
        return protocol.error(req.id, protocol.E_TOO_LARGE, (
            f"the descriptions of {len(descs)} keywords take {size} bytes even without "
            f"values, above the message size limit of {limit} bytes; describe "
            f"them one at a time"), "ValueError")
    return reply


def identify(req: protocol.Request, svc: "Service", ctx: Context) -> Answer:
    return protocol.ok(req.id, {
        "service": svc.name, "dispatcher": svc.dispatcher, "version": __version__,
        "protocol": protocol.VERSION.decode(), "keywords": len(svc),
        "pid": os.getpid(), "started": svc.started})


def ping(req: protocol.Request, svc: "Service", ctx: Context) -> Answer:
    return protocol.ok(req.id, {})


HANDLERS: Dict[str, Handler] = {
    "read": read, "write": write, "list": list_keywords, "describe": describe,
    "identify": identify, "ping": ping,
}


# ------------------------------------------------------- replies and sizes

def busy(req: protocol.Request, kw: Keyword, waiting: int, limit: int) -> List[bytes]:
    """The refusal of a request beyond ``[zmq] max-queued-writes`` (nothing applied)."""
    return protocol.error(req.id, protocol.E_BUSY, (
        f"{kw.full_name} is busy: {waiting} request(s) already wait for its "
        f"hooks (at most {limit}, [zmq] max-queued-writes); this {req.command} was "
        f"refused and nothing was applied, try again once it is done"), "KeywordBusy")


def shutting_down(rid: str, service_name: str) -> List[bytes]:
    return protocol.error(rid, protocol.E_SHUTTING_DOWN,
                          f"service {service_name!r} is shutting down", "CauldronError")


def error_reply(rid: str, exc: BaseException, code: str) -> List[bytes]:
    """An error reply carrying the exception's type name and its own message."""
    payload = protocol.exception_payload(exc, code)
    return protocol.error(rid, payload["code"], payload["message"], payload["type"])


def internal_error(rid: str, exc: BaseException) -> List[bytes]:
    return protocol.error(rid, protocol.E_INTERNAL, f"{type(exc).__name__}: {exc}",
                          type(exc).__name__)


def value_reply(rid: str, kw: Keyword, ctx: Context,
                extra: Optional[Dict[str, Any]] = None) -> List[Any]:
    """The VALUE reply, or a ``too-large`` error if it would exceed the limit."""
    snap = kw._snap
    payload = kw.value_payload(snap)
    if extra:
        payload.update(extra)
    reply = protocol.ok(rid, payload, snap.raw)
    size = protocol.frames_size(reply)
    if size > ctx.max_size:
        ctx.log_oversize(f"reply with the value of {kw.full_name} not sent", size)
        return protocol.error(rid, protocol.E_TOO_LARGE, (
            f"{kw.full_name}: its value takes {size} bytes, above the message size limit "
            f"of {ctx.max_size} bytes ([zmq] max-message-size)"), "ValueError")
    return reply


def check_size(kw: Keyword, value: Any, svc: "Service", ctx: Context) -> None:
    """Refuse (too-large) a value whose replies and broadcasts would exceed the limit.

    Checked before a write is applied: once stored, a value that cannot
    be sent would make the keyword unreadable.
    """
    limit = ctx.max_size
    wire, raw = kw.type.to_wire(value)
    if protocol.oversize(wire, raw, limit, OVERHEAD_BOUND) is None:
        return          # the common case, decided in O(1) without encoding anything
    size = protocol.oversize(wire, raw, limit, _overhead(kw, value, svc))
    if size is not None:
        raise Refusal(protocol.E_TOO_LARGE, ValueError(
            f"{kw.full_name}: a value of {size} bytes or more would not fit the message "
            f"size limit of {limit} bytes ([zmq] max-message-size) in its "
            f"replies and broadcasts; refused, nothing was applied"))


def _overhead(kw: Keyword, value: Any, svc: "Service") -> int:
    """The most a reply or broadcast of ``value`` adds around its wire value.

    The VALUE's own fields (so it follows value_payload), those of a write
    reply and a broadcast, numbers at their widest, the longer of the
    topic and a reply's id and status.  Called on worker threads too.
    """
    payload = kw.value_payload(Snapshot(None, "", 0, None, -1.2345678901234567e+300,
                                        2 ** 63))
    if "ascii" in payload:          # small types: their ascii is short, and counted
        payload["ascii"] = kw.type.to_ascii(value)
    payload.update({"changed": False, "gseq": 2 ** 63, "dispatcher": svc.dispatcher})
    topic = protocol.topic(svc.name, kw.name)
    return protocol.payload_overhead(payload, protocol.VERSION,
                                     b"x" * max(len(topic), 4 * protocol.MAX_ID_LENGTH + 2))


def _keyword(req: protocol.Request, svc: "Service") -> Keyword:
    if not req.target:
        raise protocol.BadRequest(f"{req.command} needs a keyword name as its target")
    kw = svc._keywords.get(req.target.upper())
    if kw is None:
        raise Refusal(protocol.E_UNKNOWN_KEYWORD, KeyError(svc._unknown(req.target)))
    return kw


def _write(rid: str, kw: Keyword, value: Any, svc: "Service", ctx: Context) -> List[Any]:
    """The client write, on the keyword's worker: refusals are invalid-value, hook
    failures write-failed.

    A hook's exception reaches the client and is logged here with its
    traceback (repeats throttled): the client's message says what, the
    dispatcher's log says where.
    """
    try:
        value = kw._prepare_write(value)
    except NoWriteNecessary:
        return value_reply(rid, kw, ctx, {"changed": False})
    except (ValueError, TypeError) as exc:
        kw.log.debug("%s: write refused: %s", kw.full_name, exc)
        return error_reply(rid, exc, protocol.E_INVALID)
    except Exception as exc:  # noqa: BLE001
        _log_hook_error(ctx.hook_errors, kw, exc)
        return error_reply(rid, exc, protocol.E_WRITE_FAILED)
    try:
        check_size(kw, value, svc, ctx)
    except Refusal as refusal:
        return error_reply(rid, refusal.exc, refusal.code)
    try:
        changed = kw._apply_write(value)
    except NoWriteNecessary:
        changed = False
    except Exception as exc:  # noqa: BLE001
        _log_hook_error(ctx.hook_errors, kw, exc)
        return error_reply(rid, exc, protocol.E_WRITE_FAILED)
    return value_reply(rid, kw, ctx, {"changed": changed})


def _log_hook_error(hook_errors: RepeatLog, kw: Keyword, exc: BaseException) -> None:
    hook_errors.error(("write", kw.name), exc, "%s: a write hook raised %s: %s (the client "
                      "got write-failed)", kw.full_name, type(exc).__name__, exc)


# ------------------------------------------------------------ descriptions

def _description(kw: Keyword) -> Dict[str, Any]:
    """A keyword's DESCRIPTION for a reply without a raw frame (describe of every keyword)."""
    snap = kw._snap
    desc = kw.describe()
    desc.update(kw.value_payload(snap))
    if snap.raw is not None:
        if getattr(snap.value, "size", DESCRIBE_ARRAY_ELEMENTS + 1) <= DESCRIBE_ARRAY_ELEMENTS:
            desc["value"] = persistable(kw, snap)
            desc["dtype"] = snap.wire.get("dtype")   # so a client makes it an array again
        else:
            desc = _without_value(desc)
    return desc


def _without_value(desc: Dict[str, Any]) -> Dict[str, Any]:
    return {key: item for key, item in desc.items() if key not in _VALUE_FIELDS}


def _fit(descs: Dict[str, Dict[str, Any]], limit: int) -> Dict[str, Dict[str, Any]]:
    """Leave values out, largest first, until the descriptions fit ``limit`` bytes."""
    sizes = sorted(((len(protocol.dumps(d.get("value"))) + len(protocol.dumps(d.get("ascii"))),
                     name) for name, d in descs.items()), reverse=True)
    total = len(protocol.dumps(descs)) + protocol.ENVELOPE_ALLOWANCE
    out = dict(descs)
    for size, name in sizes:
        if total <= limit:
            break
        out[name] = _without_value(out[name])
        total -= size
    return out


def persistable(keyword: Keyword, snap: Snapshot) -> Any:
    """The JSON form of a value (numpy arrays as lists, not raw frames): saved, described."""
    if snap.raw is not None and hasattr(snap.value, "tolist"):
        return keyword.type.to_wire(snap.value.tolist())[0]
    return snap.wire
