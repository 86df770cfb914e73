"""A keyword's values in their three forms: what is sent, what comes back, what is shown.

Writes go as ascii text (the dispatcher parses it) or as wire JSON, an array
as a raw frame when JSON would be too large; a request over ``[zmq]
max-message-size`` is refused here (MessageTooLarge), since ZeroMQ would drop
the connection it travels on.  Replies and broadcasts are decoded by the
keyword's type.  A mixin of :class:`~cauldron_zmq.client.Keyword`.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

from .. import protocol
from ..errors import CauldronError, ConversionError, MessageTooLarge
from ..types import KeywordType, keyword_type


_UNDECODED = object()      # _result's "decode it yourself"


class Values:
    """Encoding and decoding a keyword's values (see the module)."""

    # Provided by Keyword:
    _kt: KeywordType
    _name: str
    service: Any
    full_name: str

    def _encode(self, value: Any) -> Tuple[Any, Optional[bytes]]:
        """Text goes as ascii (the dispatcher parses it); anything else as wire JSON.

        A request over ``[zmq] max-message-size`` is refused here
        (MessageTooLarge): ZeroMQ would drop the connection it travels on
        and the write would only time out.
        """
        if value is None:
            raise ConversionError(f"{self.full_name}: cannot write None")
        limit = self.service._engine_or_raise().max_size
        overhead = protocol.request_overhead("write", self._name)
        size = None
        if isinstance(value, (list, tuple)) and 2 * len(value) + 1 + overhead > limit:
            size = 2 * len(value) + 1 + overhead     # a byte and a comma each, at least:
        if size is None:                             # refused before converting 10**7 items
            wire, raw = (value, None) if isinstance(value, str) else self._kt.to_wire(value)
            size = protocol.oversize(wire, raw, limit, overhead)
            if size is not None and raw is None and isinstance(value, (list, tuple)):
                framed = self._framed(value)         # too long as JSON: try a raw frame
                if framed is not None and protocol.oversize(*framed, limit, overhead) is None:
                    (wire, raw), size = framed, None
        if size is not None:
            raise MessageTooLarge(
                f"{self.full_name}: the write of {size} bytes or more exceeds the message size "
                f"limit of {limit} bytes ([zmq] max-message-size); nothing was sent",
                size=size, limit=limit)
        return wire, (bytes(raw) if raw is not None else None)

    def _framed(self, value: Any) -> Optional[Tuple[Any, Any]]:
        """An array's (header, frame) wire form, with numpy; None if that cannot be."""
        np = _numpy() if self._kt.is_array else None
        if np is None:
            return None
        try:
            return self._kt.to_wire(self._kt.from_wire(np.asarray(value), check=False))
        except (ConversionError, ValueError, TypeError):
            return None

    def _decode(self, wire: Any, raw: Optional[bytes]) -> Any:
        if wire is None:
            return None
        try:
            return self._kt.from_wire(wire, raw, check=False)
        except (ConversionError, ValueError, TypeError) as exc:
            self.service.log.warning("%s: cannot convert %s: %s", self.full_name, _short(wire), exc)
            return None if isinstance(wire, dict) else wire   # never an array's frame header

    def _ascii_of(self, native: Any) -> str:
        """The ascii form of a value that came without one (strings, arrays)."""
        if isinstance(native, str):
            return native
        try:
            return self._kt.to_ascii(native)
        except (ConversionError, ValueError, TypeError):
            return str(native)

    def _result(self, payload: Any, raw: Optional[bytes], binary: bool, both: bool,
                native: Any = _UNDECODED) -> Any:
        """What read()/write() return: ascii, native, or both (``native``: decoded already)."""
        if not isinstance(payload, dict):
            raise CauldronError(f"{self.full_name}: the dispatcher answered {payload!r}, "
                                "not a value")
        if native is _UNDECODED:
            native = self._decode(payload.get("value"), raw)
        if binary and not both:
            return native
        text = payload.get("ascii")
        if text is None and native is not None:
            text = self._ascii_of(native)
        return (native, text) if both else text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:30] + "..." + text[-6:]


def _described_value(kt: KeywordType, description: Dict[str, Any],
                     raw: Optional[bytes]) -> Tuple[Dict[str, Any], Optional[bytes]]:
    """A DESCRIPTION's value as a read would bring it.

    A describe of every keyword has no room for raw frames: it gives a numpy
    array as a JSON list with its ``dtype``, made an array again here (when
    numpy is installed), so its type does not depend on how it was described.
    """
    dtype, value = description.get("dtype"), description.get("value")
    if raw is not None or not kt.is_array or not isinstance(dtype, str) \
            or not isinstance(value, list):
        return description, raw
    np = _numpy()
    if np is None:
        return description, raw
    try:
        native = np.array(kt.from_wire(value, check=False), dtype=dtype)
        header, frame = kt.to_wire(kt.from_wire(native, check=False))
    except (ConversionError, ValueError, TypeError):
        return description, raw
    return dict(description, value=header), bytes(frame)


def _numpy() -> Any:
    from ..types import _numpy_import
    return _numpy_import()


def _keyword_type(name: str, description: Dict[str, Any], logger: logging.Logger) -> KeywordType:
    """The KeywordType a ``describe`` reply announces (string if it makes no sense)."""
    try:
        return KeywordType.from_description(description, name)
    except (ConversionError, KeyError, TypeError, ValueError) as exc:
        logger.warning("%s: unusable type in describe reply (%s); treating it as a string",
                       name, exc)
        return keyword_type("string", name=name)
