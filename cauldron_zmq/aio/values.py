"""A keyword's values on their way out (encode, size check) and back in (decode).

Pure functions of the keyword's type, the same rules as the threaded
``ktl.Keyword``: text goes as ascii for the dispatcher to parse, anything else
as wire JSON (an array as a raw frame when JSON would not fit); a request over
``[zmq] max-message-size`` is refused before it is sent (:class:`MessageTooLarge`);
a value that does not convert on the way in is logged, never raised.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

from .. import protocol
from ..errors import CauldronError, ConversionError, MessageTooLarge
from ..types import KeywordType

__all__ = ["encode", "decode", "ascii_of", "result"]


def encode(kt: KeywordType, full_name: str, name: str, value: Any,
           limit: int) -> Tuple[Any, Optional[bytes]]:
    """``value`` as a write's (wire, raw); ConversionError or MessageTooLarge (ValueErrors)."""
    if value is None:
        raise ConversionError(f"{full_name}: cannot write None")
    overhead = protocol.request_overhead("write", name)
    size = None
    if isinstance(value, (list, tuple)) and 2 * len(value) + 1 + overhead > limit:
        size = 2 * len(value) + 1 + overhead      # refused before converting 10**7 items
    if size is None:
        wire, raw = (value, None) if isinstance(value, str) else kt.to_wire(value)
        size = protocol.oversize(wire, raw, limit, overhead)
        if size is not None and raw is None and isinstance(value, (list, tuple)):
            framed = _framed(kt, value)           # too long as JSON: try a raw frame
            if framed is not None and protocol.oversize(*framed, limit, overhead) is None:
                (wire, raw), size = framed, None
    if size is not None:
        raise MessageTooLarge(
            f"{full_name}: the write of {size} bytes or more exceeds the message size "
            f"limit of {limit} bytes ([zmq] max-message-size); nothing was sent",
            size=size, limit=limit)
    return wire, (bytes(raw) if raw is not None else None)


def _framed(kt: KeywordType, value: Any) -> Optional[Tuple[Any, Any]]:
    from ..types import _numpy_import
    np = _numpy_import() if kt.is_array else None
    if np is None:
        return None
    try:
        return kt.to_wire(kt.from_wire(np.asarray(value), check=False))
    except (ConversionError, ValueError, TypeError):
        return None


def decode(kt: KeywordType, full_name: str, wire: Any, raw: Optional[bytes],
           log: logging.Logger) -> Any:
    """The native value of a VALUE payload's ``value`` (and raw frame)."""
    if wire is None:
        return None
    try:
        return kt.from_wire(wire, raw, check=False)
    except (ConversionError, ValueError, TypeError) as exc:
        log.warning("%s: cannot convert %.40r: %s", full_name, wire, exc)
        return None if isinstance(wire, dict) else wire   # never an array's frame header


def ascii_of(kt: KeywordType, native: Any) -> str:
    """The ascii form of a value that came without one (strings, arrays)."""
    if isinstance(native, str):
        return native
    try:
        return kt.to_ascii(native)
    except (ConversionError, ValueError, TypeError):
        return str(native)


def result(kt: KeywordType, full_name: str, payload: Any, raw: Optional[bytes], binary: bool,
           both: bool, log: logging.Logger) -> Any:
    """What a read or write returns: ascii, native (``binary``) or both."""
    if not isinstance(payload, dict):
        raise CauldronError(f"{full_name}: the dispatcher answered {payload!r}, not a value")
    native = decode(kt, full_name, payload.get("value"), raw, log)
    if binary and not both:
        return native
    text = payload.get("ascii")
    if text is None and native is not None:
        text = ascii_of(kt, native)
    return (native, text) if both else text
