"""The exception hierarchy shared by the router, dispatchers and clients.

Every error a user can catch derives from :class:`CauldronError`.  Errors that
travel over the wire carry a stable ``code`` (see :mod:`cauldron_zmq.protocol`)
so that a client in another language can act on them without parsing text.

A dispatcher-side exception reaches the client as a :class:`DispatcherError`
that *also* derives from the original built-in exception type when there is one,
so ``except ValueError`` works on the client exactly as it would locally.  Every
refusal of a value is a ``ValueError``, whichever side found it: locally a
:class:`ConversionError`; remotely a DispatcherError whose code is
``invalid-value`` (a range or enumerator refusal arrives typed
``ConversionError``, which is mapped to ValueError too).
"""
from __future__ import annotations

import builtins
from typing import Dict, Optional, Tuple, Type

__all__ = [
    "CauldronError",
    "ConfigurationError",
    "ProtocolError",
    "RemoteError",
    "RouterError",
    "DispatcherError",
    "TimeoutError",
    "ServiceNotFound",
    "DispatcherRestarted",
    "AuthenticationError",
    "NoWriteNecessary",
    "ConversionError",
    "remote_exception",
]


class CauldronError(Exception):
    """Base of every error raised by cauldron_zmq."""


class ConfigurationError(CauldronError, ValueError):
    """A configuration or keyword file is missing or wrong.

    The message names the file, the section, the key and what was expected.
    """

    def __init__(self, message: str, *, source: Optional[str] = None,
                 section: Optional[str] = None, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.source = source
        self.section = section
        self.key = key


class ProtocolError(CauldronError):
    """A message that does not follow the wire protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class RemoteError(CauldronError):
    """An error reply from a peer (router or dispatcher).

    ``code`` is the stable protocol error code, ``remote_type`` the name of the
    exception type raised on the peer (``"ValueError"``), ``message`` its text.
    """

    def __init__(self, message: str, *, code: str = "internal",
                 remote_type: str = "", peer: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.remote_type = remote_type
        self.peer = peer

    def __str__(self) -> str:
        prefix = f"{self.remote_type}: " if self.remote_type else ""
        return f"{prefix}{self.message}"


class RouterError(RemoteError):
    """The router refused or could not complete a request."""


class DispatcherError(RemoteError):
    """A dispatcher refused a request, or a hook on it raised."""


class TimeoutError(CauldronError, builtins.TimeoutError):  # noqa: A001 - KTL's name
    """No answer within the timeout.  Distinct from errors the peer reported."""


class ServiceNotFound(CauldronError, LookupError):
    """The router knows no dispatcher for the service."""

    def __str__(self) -> str:  # LookupError/KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AuthenticationError(CauldronError, PermissionError):
    """A server's CurveZMQ authenticator refused this process's key.

    The message names the router or dispatcher and the refused public key.
    ZeroMQ itself drops a refused connection without a word; cauldron_zmq
    learns of it from a socket monitor (libzmq >= 4.3), so the caller gets
    this instead of a timeout.
    """

    def __str__(self) -> str:   # OSError would show "[Errno ...]" for two arguments
        return str(self.args[0]) if self.args else ""


class DispatcherRestarted(CauldronError):
    """The dispatcher restarted after acknowledging a request, so no answer will come.

    The request may or may not have been applied: read the keyword to know.
    """


class NoWriteNecessary(Exception):
    """Raised by a ``prewrite`` hook to skip the write without an error (DFW)."""


class ConversionError(CauldronError, ValueError):
    """A value cannot be converted to a keyword's type or breaks its range.

    The message names the keyword, the value and the rule it broke.
    """


# Built-in exception classes a remote error may be mapped onto, so that
# ``except ValueError`` on the client catches a ValueError raised by a hook.
_MAPPABLE: Tuple[Type[BaseException], ...] = (
    ValueError, TypeError, KeyError, LookupError, IndexError, RuntimeError,
    NotImplementedError, PermissionError, OSError, ArithmeticError,
    ZeroDivisionError, OverflowError, AttributeError, AssertionError,
)
# A refusal of a value is a ValueError whichever side found it: the protocol
# code says "refused the value" even when the remote type does not (a
# ConversionError, a TypeError raised by a check hook...).
_CODE_BUILTINS: Dict[str, Type[BaseException]] = {"invalid-value": ValueError}
# cauldron_zmq's own exception types, by the name a peer sends, and the
# built-in each of them also is locally.
_OWN_TYPES: Dict[str, Type[BaseException]] = {
    "ConversionError": ValueError, "ConfigurationError": ValueError,
    "ExpressionError": ValueError, "ServiceNotFound": LookupError,
    "UnknownKeyword": KeyError, "AuthenticationError": PermissionError,
}
_combined: Dict[Tuple[type, ...], type] = {}


def _combine(base: Type[RemoteError], builtins_: Tuple[type, ...]) -> type:
    key = (base,) + builtins_
    cls = _combined.get(key)
    if cls is None:
        name = "_".join([base.__name__] + [b.__name__ for b in builtins_])
        # KeyError/LookupError repr() their argument in str(); RemoteError.__str__ wins (MRO).
        cls = type(name, key, {"__module__": __name__})
        _combined[key] = cls
    return cls


def _builtins_for(code: str, remote_type: str) -> Tuple[type, ...]:
    """The built-in types an error reply's exception also is, most specific first."""
    found = getattr(builtins, remote_type, None) if remote_type else None
    if not (isinstance(found, type) and issubclass(found, _MAPPABLE)):
        found = _OWN_TYPES.get(remote_type)
    types = [found] if found is not None else []
    by_code = _CODE_BUILTINS.get(code)
    if by_code is not None and not any(issubclass(t, by_code) for t in types):
        types.append(by_code)
    return tuple(types)


def remote_exception(message: str, *, code: str, remote_type: str = "",
                     peer: str = "", base: Type[RemoteError] = DispatcherError) -> RemoteError:
    """Build the exception a client raises for an error reply.

    When ``remote_type`` names a well-known built-in exception (or one of
    cauldron_zmq's own, such as ConversionError, a ValueError) the result is
    an instance of both ``base`` and that built-in type.  A reply with the
    code ``invalid-value`` (a refused value) is always also a ValueError.
    """
    by_code = _BY_CODE.get(code)
    if by_code is not None and issubclass(by_code, base):
        base = by_code          # a code with a class of its own (busy -> KeywordBusy)
    extra = tuple(t for t in _builtins_for(code, remote_type) if not issubclass(base, t))
    cls: type = _combine(base, extra) if extra else base
    return cls(message, code=code, remote_type=remote_type, peer=peer)


class KeywordBusy(DispatcherError):
    """The dispatcher refused a request at once (code ``busy``): as many requests
    as ``[zmq] max-queued-writes`` allows already wait for the keyword's hooks.

    Nothing was applied.  Wait for the keyword (the write in progress) and
    try again; ``limit`` is not known on the client, the message says it.
    """


class MessageTooLarge(CauldronError, ValueError):
    """A request larger than ``[zmq] max-message-size``, refused before it was sent.

    ``size`` (bytes, exact or at least) and ``limit`` say by how much.
    ZeroMQ drops a connection that carries a message over the peer's limit
    without a word, so sending it would only end in a timeout.
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


#: Error codes whose client-side exception has a class of its own.
_BY_CODE: Dict[str, Type[RemoteError]] = {"busy": KeywordBusy}
__all__ += ["KeywordBusy", "MessageTooLarge"]


class DispatcherDown(CauldronError, ConnectionError):
    """The dispatcher that serves a keyword is not answering (stopped, killed or expired).

    Not :class:`UnknownKeyword`: the keyword exists, its dispatcher is down.
    """

    def __str__(self) -> str:   # OSError would show "[Errno ...]" for two arguments
        return str(self.args[0]) if self.args else ""


class DispatcherSilent(DispatcherDown, TimeoutError):
    """A request was in flight when its dispatcher went silent (liveness expired).

    Raised as soon as the silence is known, not at the request's timeout; the
    message says since when nothing was heard.  A slow write whose dispatcher
    keeps its heartbeats is a plain :class:`TimeoutError` instead (only with
    an explicit deadline).  A write may or may not have been applied.
    """


__all__ += ["DispatcherDown", "DispatcherSilent"]
