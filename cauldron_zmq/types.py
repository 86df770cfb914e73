"""Keyword value types: the native, ascii and wire forms of a KTL value.

Every KTL keyword value has a *native* ("binary") Python form and an *ascii*
form, and a write may use either.  The dispatcher (DFW side) and the client
(ktl side) must agree exactly on how one becomes the other, so both use the
pure functions collected here: no sockets, no threads, no global state.

A :class:`KeywordType` holds a keyword's type together with the metadata that
affects conversion (range, enumerators).  Its methods convert between

* the native value (``bool``, ``int``, ``float``, ``str``, ``list`` or a numpy
  array) - what :meth:`KeywordType.coerce` returns;
* the ascii value - :meth:`KeywordType.to_ascii` / :meth:`KeywordType.parse_ascii`;
* the wire value - JSON plus, for numpy arrays, one raw frame -
  :meth:`KeywordType.to_wire` / :meth:`KeywordType.from_wire`.

Every refusal raises :class:`~cauldron_zmq.errors.ConversionError` (a
``ValueError``) whose message names the keyword, the offending value (repr)
and the rule it broke.  The rules, and where they differ from the original
Cauldron, are tabulated in ``docs/types.rst``.

numpy is optional.  It is never imported just to load this module: a value can
only be a numpy array if numpy is already loaded, and only decoding a raw array
frame tries to import it (falling back to plain lists through :mod:`struct`).
"""
from __future__ import annotations

import math
import re
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from numbers import Integral, Real
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import ConversionError

__all__ = [
    "TYPE_NAMES",
    "INT32_MIN",
    "INT32_MAX",
    "KeywordType",
    "keyword_type",
    "json_value",
]

TYPE_NAMES: Tuple[str, ...] = (
    "boolean", "integer", "double", "string", "enumerated", "mask",
    "integer-array", "double-array",
)

INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1
# A hard limit that applies even when range checks are off (``check=False``):
# native integers must fit numpy's int64 and every C client's 64-bit integer.
INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
MASK_BITS = 32          # KTL masks are 32-bit integers: bits 0..31

_ALIASES: Dict[str, str] = {
    "boolean": "boolean", "bool": "boolean",
    "integer": "integer", "int": "integer",
    "double": "double", "float": "double", "numeric": "double",
    "string": "string", "str": "string",
    "enumerated": "enumerated", "enum": "enumerated",
    "mask": "mask",
    "integer-array": "integer-array", "int-array": "integer-array",
    "double-array": "double-array", "float-array": "double-array",
}
_NUMERIC = ("integer", "double", "integer-array", "double-array")
_WITH_ENUMERATORS = ("boolean", "enumerated", "mask")

_INT_RE = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*")
_HEX_RE = re.compile(r"[+-]?0[xX][0-9a-fA-F]+")
_ARRAY_SPLIT_RE = re.compile(r"[\s,]+")
_MASK_SPLIT_RE = re.compile(r"[,|]")
_DTYPE_RE = re.compile(r"([<>|=]?)([iuf])([1248])")
_STRUCT_CODES = {
    "i1": "b", "i2": "h", "i4": "i", "i8": "q",
    "u1": "B", "u2": "H", "u4": "I", "u8": "Q",
    "f2": "e", "f4": "f", "f8": "d",
}

_TRUE_WORDS = frozenset(("1", "true", "t", "yes", "y", "on"))
_FALSE_WORDS = frozenset(("0", "false", "f", "no", "n", "off"))

# Tests set this to False to exercise the pure-Python path with numpy installed.
_use_numpy = True


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def _numpy_loaded() -> Any:
    """numpy if it is already imported, else None.

    A value can only be an ndarray if numpy is loaded, so checking
    ``sys.modules`` spares clients that never use numpy its import time.
    """
    return sys.modules.get("numpy") if _use_numpy else None


def _numpy_import() -> Any:
    """numpy, importing it if it is installed; None if it is not."""
    if not _use_numpy:
        return None
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _show(value: Any) -> str:
    """repr() of a value for an error message, kept short and never failing."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<{value.bit_length()}-bit integer>"   # repr() may refuse (int_max_str_digits)
    try:
        text = repr(value)
    except Exception:  # pragma: no cover - a broken __repr__
        text = f"<{type(value).__name__} object>"
    if len(text) > 80:
        text = text[:60] + " ... " + text[-12:]
    return text


def _fail(label: str, value: Any, rule: str) -> ConversionError:
    """The error for ``value`` breaking ``rule``; the caller raises it."""
    return ConversionError(f"{label}: {_show(value)} {rule}")


def _plain(value: Any) -> Any:
    """A numpy scalar as the equivalent Python scalar; anything else unchanged.

    So that ``numpy.int64(3)`` converts exactly like ``3`` and error messages
    show ``3`` rather than ``np.int64(3)``.
    """
    np = _numpy_loaded()
    if np is not None and isinstance(value, np.generic):
        return value.item()
    return value


def _text(value: Any, label: str) -> Optional[str]:
    """``value`` as text if it is text (str, or bytes decoded as UTF-8), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(label, bytes(value), "is not valid UTF-8") from None
    return None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _scalar_equal(a: Any, b: Any) -> bool:
    """``a == b`` that treats NaN as equal to NaN and never raises."""
    try:
        if a == b:
            return True
    except Exception:
        return False
    return _is_nan(a) and _is_nan(b)


def _fmt_bound(bound: Any) -> str:
    return repr(bound)


def _range_text(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f"the range {_fmt_bound(lo)} to {_fmt_bound(hi)}"
    if lo is not None:
        return f"the minimum {_fmt_bound(lo)}"
    return f"the maximum {_fmt_bound(hi)}"


# --------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _whole(value: Any, label: str) -> int:
    """A whole number as a Python int, refusing (never truncating) fractions.

    The original Cauldron cast through ``int(float(value))``, which silently
    turned 2.5 into 2 and lost precision above 2**53.
    """
    if type(value) is int:              # the common case, before the ABC checks below
        return value
    value = _plain(value)
    if isinstance(value, bool):
        raise _fail(label, value, "is a boolean, not an integer")
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(label, value, "is not a finite number")
        if not value.is_integer():
            raise _fail(label, value, "is not a whole number (integers are not truncated)")
        return int(value)
    if isinstance(value, (Real, Decimal)):
        return _whole_decimal(_as_decimal(value, label), value, label)
    text = _text(value, label)
    if text is None:
        raise _fail(label, value, "is not an integer")
    return _parse_int_text(text, value, label)


def _as_decimal(value: Any, label: str) -> Decimal:
    """An exact Decimal of a Real (Fraction, Decimal, other numeric types)."""
    if isinstance(value, Decimal):
        return value
    if getattr(value, "denominator", 1) != 1:  # a Fraction that is not whole
        raise _fail(label, value, "is not a whole number (integers are not truncated)")
    try:
        return Decimal(int(value)) if hasattr(value, "denominator") else Decimal(float(value))
    except (TypeError, ValueError, OverflowError):
        raise _fail(label, value, "is not an integer") from None


def _whole_decimal(number: Decimal, raw: Any, label: str) -> int:
    """A finite, whole Decimal as int; enormous ones become a stand-in.

    ``Decimal("1e999999999")`` is whole, but expanding it to an int would
    take forever; any value with more than 40 digits is outside every range
    we allow, so a 41-digit stand-in produces the right range error.
    """
    if not number.is_finite():
        raise _fail(label, raw, "is not a finite number")
    if number != number.to_integral_value():
        raise _fail(label, raw, "is not a whole number (integers are not truncated)")
    if number.adjusted() > 40:
        return 10 ** 41 if number > 0 else -(10 ** 41)
    return int(number)


def _parse_int_text(text: str, raw: Any, label: str) -> int:
    """Parse "42", " -7 ", "0x1f", "4.0" or "1e3" as an int."""
    s = text.strip()
    if not s:
        raise _fail(label, raw, "is empty; expected an integer")
    if _INT_RE.fullmatch(s):
        try:
            return int(s)
        except ValueError:  # more digits than int() will parse (Python >= 3.11)
            return 10 ** 41 if not s.startswith("-") else -(10 ** 41)
    if _HEX_RE.fullmatch(s):
        return int(s, 16)
    try:
        number = Decimal(s)
    except (InvalidOperation, ValueError):
        raise _fail(label, raw, "is not an integer") from None
    return _whole_decimal(number, raw, label)


def _real(value: Any, label: str) -> float:
    """Any real number, or text float() understands (plus 0x hex), as a float."""
    value = _plain(value)
    if isinstance(value, bool):
        raise _fail(label, value, "is a boolean, not a number")
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (Real, Decimal)):
        try:
            return float(value)
        except OverflowError:
            raise _fail(label, value, "is too large for a double") from None
        except (TypeError, ValueError):  # e.g. Decimal('sNaN')
            raise _fail(label, value, "is not a number") from None
    text = _text(value, label)
    if text is None:
        raise _fail(label, value, "is not a number")
    s = text.strip()
    if not s:
        raise _fail(label, value, "is empty; expected a number")
    try:
        return float(s)
    except ValueError:
        pass
    if _HEX_RE.fullmatch(s):
        try:
            return float(int(s, 16))
        except OverflowError:
            raise _fail(label, value, "is too large for a double") from None
    raise _fail(label, value, "is not a number")


def _float_wire(x: float) -> Any:
    """A float as JSON can carry it: NaN and infinities become strings."""
    if math.isfinite(x):
        return x
    if x != x:
        return "nan"
    return "inf" if x > 0 else "-inf"


# --------------------------------------------------------------------------
# construction helpers
# --------------------------------------------------------------------------

def _canonical_type(type_name: Any, label: str) -> str:
    """The TYPE_NAMES entry for a type name or one of its aliases."""
    if not isinstance(type_name, str):
        raise ConversionError(f"{label}: keyword type {_show(type_name)} is not a string")
    key = re.sub(r"[\s_]+", "-", type_name.strip().lower())
    if key.startswith("ktl-"):
        key = key[4:]
    try:
        return _ALIASES[key]
    except KeyError:
        names = ", ".join(TYPE_NAMES)
        raise ConversionError(
            f"{label}: {type_name!r} is not a keyword type (expected one of {names})") from None


def _bound(value: Any, which: str, kind: str, label: str) -> Any:
    """Normalise a minimum/maximum: numbers only, +-inf meaning "no bound"."""
    if value is None:
        return None
    if kind not in _NUMERIC:
        raise ConversionError(f"{label}: a {which} only applies to numeric keywords, not {kind}")
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, Integral) and not isinstance(value, bool) and kind.startswith("integer"):
        return int(value)
    try:
        x = _real(value, label)
    except ConversionError:
        raise ConversionError(f"{label}: the {which} {_show(value)} is not a number") from None
    if x != x:
        raise ConversionError(f"{label}: the {which} {_show(value)} is not a number")
    if math.isinf(x):
        if (which == "minimum") == (x < 0):
            return None     # -inf minimum / +inf maximum: no bound at all
        raise ConversionError(f"{label}: the {which} {_show(value)} would exclude every value")
    if kind.startswith("integer") and x.is_integer():
        return int(x)
    return x


def _enumerator_key(key: Any, label: str) -> int:
    """An enumerator's value (or a mask's bit number): an int or a string of one."""
    if isinstance(key, bool):
        raise ConversionError(f"{label}: enumerator value {key!r} is a boolean, not an integer")
    if isinstance(key, Integral):
        return int(key)
    if isinstance(key, str) and _INT_RE.fullmatch(key.strip()):
        return int(key.strip())
    raise ConversionError(f"{label}: enumerator value {_show(key)} is not an integer")


def _enumerator_items(raw: Any, label: str) -> List[Tuple[Any, Any]]:
    """(value, name) pairs from a list of names, a mapping or a list of pairs."""
    if isinstance(raw, (str, bytes)):
        raise ConversionError(
            f"{label}: enumerators must be a list of names or a mapping, not {_show(raw)}")
    if isinstance(raw, Mapping):
        return list(raw.items())
    try:
        seq = list(raw)
    except TypeError:
        raise ConversionError(
            f"{label}: enumerators must be a list of names or a mapping, not {_show(raw)}") from None
    if seq and all(isinstance(item, (list, tuple)) and len(item) == 2 for item in seq):
        return [(item[0], item[1]) for item in seq]     # the normalised form, or JSON pairs
    return list(enumerate(seq))


def _normalise_enumerators(raw: Any, kind: str, label: str) -> Optional[Tuple[Tuple[int, str], ...]]:
    """Validate enumerators for ``kind`` and return sorted (value, name) pairs."""
    if raw is None:
        if kind in ("enumerated", "mask"):
            raise ConversionError(f"{label}: {_article(kind)} {kind} keyword needs enumerators")
        return None
    if kind not in _WITH_ENUMERATORS:
        raise ConversionError(
            f"{label}: enumerators only apply to enumerated, mask and boolean keywords, not {kind}")
    pairs: List[Tuple[int, str]] = []
    for key, name in _enumerator_items(raw, label):
        value = _enumerator_key(key, label)
        if not isinstance(name, str) or not name or name != name.strip():
            raise ConversionError(
                f"{label}: enumerator name {_show(name)} must be a non-empty string "
                "without surrounding whitespace")
        pairs.append((value, name))
    if not pairs:
        raise ConversionError(f"{label}: {_article(kind)} {kind} keyword needs at least one enumerator")
    _check_enumerator_pairs(pairs, kind, label)
    return tuple(sorted(pairs))


def _check_enumerator_pairs(pairs: List[Tuple[int, str]], kind: str, label: str) -> None:
    """Refuse duplicates and values a ``kind`` keyword cannot hold."""
    seen_values: Dict[int, str] = {}
    seen_names: Dict[str, int] = {}
    for value, name in pairs:
        if value in seen_values:
            raise ConversionError(
                f"{label}: enumerator value {value} is given twice ({seen_values[value]!r}, {name!r})")
        if name in seen_names:
            raise ConversionError(f"{label}: duplicate enumerator name {name!r}")
        seen_values[value] = name
        seen_names[name] = value
        if kind == "enumerated" and not INT32_MIN <= value <= INT32_MAX:
            raise ConversionError(f"{label}: enumerator value {value} is outside the 32-bit KTL range")
        if kind == "mask":
            if not 0 <= value < MASK_BITS:
                raise ConversionError(f"{label}: mask bit {value} ({name!r}) is not in 0..{MASK_BITS - 1}")
            if _MASK_SPLIT_RE.search(name):
                raise ConversionError(f"{label}: mask bit name {name!r} may not contain ',' or '|'")
    if kind == "boolean" and set(seen_values) != {0, 1}:
        raise ConversionError(f"{label}: boolean enumerators must name exactly the values 0 and 1")


# --------------------------------------------------------------------------
# the keyword type
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class KeywordType:
    """One keyword's type and the metadata that affects converting its values.

    Instances are immutable, hashable and cheap to share between threads.
    ``type`` accepts aliases ("float", "int", "bool", "enum", "integer array",
    "KTL_DOUBLE", ...) and is stored as one of :data:`TYPE_NAMES`;
    ``enumerators`` accepts a list of names, a ``{value: name}`` mapping or
    (value, name) pairs and is stored as sorted (value, name) pairs.
    """

    type: str
    name: str = "?"
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    enumerators: Optional[Tuple[Tuple[int, str], ...]] = None

    # ---- construction ----------------------------------------------------

    def __post_init__(self) -> None:
        name = str(self.name).strip().upper() or "?"
        kind = _canonical_type(self.type, name)
        minimum = _bound(self.minimum, "minimum", kind, name)
        maximum = _bound(self.maximum, "maximum", kind, name)
        if minimum is not None and maximum is not None and minimum > maximum:
            raise ConversionError(f"{name}: the minimum {minimum!r} is above the maximum {maximum!r}")
        enumerators = _normalise_enumerators(self.enumerators, kind, name)
        for attr, value in (("name", name), ("type", kind), ("minimum", minimum),
                            ("maximum", maximum), ("enumerators", enumerators)):
            object.__setattr__(self, attr, value)
        self._build_lookups()

    def _build_lookups(self) -> None:
        """Precompute name/value lookups (private, not dataclass fields)."""
        pairs = self.enumerators or ()
        by_folded: Dict[str, List[int]] = {}
        for value, name in pairs:
            by_folded.setdefault(name.casefold(), []).append(value)
        known_bits = 0
        if self.type == "mask":
            for bit, _ in pairs:
                known_bits |= 1 << bit
        int_lo, int_hi = self._integer_bounds()
        extra = {
            "_by_value": dict(pairs),
            "_by_name": {name: value for value, name in pairs},
            "_by_folded": by_folded,
            "_known_bits": known_bits,
            "_int_lo": int_lo,
            "_int_hi": int_hi,
        }
        for attr, value in extra.items():
            object.__setattr__(self, attr, value)

    def _integer_bounds(self) -> Tuple[Tuple[Any, str], Tuple[Any, str]]:
        """(bound, note) pairs: the keyword's range narrowed to 32-bit KTL."""
        note = " (the 32-bit KTL integer limit)"
        lo: Tuple[Any, str] = (INT32_MIN, note)
        hi: Tuple[Any, str] = (INT32_MAX, note)
        if self.minimum is not None and self.minimum >= INT32_MIN:
            lo = (self.minimum, "")
        if self.maximum is not None and self.maximum <= INT32_MAX:
            hi = (self.maximum, "")
        return lo, hi

    @classmethod
    def from_description(cls, description: Mapping[str, Any], name: str = "?") -> "KeywordType":
        """Rebuild a type from :meth:`describe` output (or a DESCRIPTION reply)."""
        return cls(description["type"], name=description.get("keyword", name),
                   minimum=description.get("min"), maximum=description.get("max"),
                   enumerators=description.get("enumerators"))

    # ---- properties ------------------------------------------------------

    @property
    def ktl_type(self) -> str:
        """The KTL C-API style name: ``KTL_DOUBLE``, ``KTL_INTEGER_ARRAY``, ..."""
        return "KTL_" + self.type.upper().replace("-", "_")

    @property
    def is_array(self) -> bool:
        return self.type.endswith("-array")

    @property
    def is_numeric(self) -> bool:
        return self.type in _NUMERIC

    # ---- public conversions ---------------------------------------------

    def coerce(self, value: Any) -> Any:
        """Accept a native or ascii value, validate it, return the canonical native.

        Raises ConversionError naming the keyword, the value and the rule.
        """
        return self._convert(value, self.name, True)

    def parse_ascii(self, text: Any) -> Any:
        """The native value of an ascii string (what a client's cast() needs)."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise _fail(self.name, text, "is not ascii text")
        return self._convert(text, self.name, True)

    def to_ascii(self, native: Any) -> str:
        """The canonical ascii form of a native value.

        Meant for coerced values; anything else is converted first (without
        range checks) rather than formatted wrongly.
        """
        return _TO_ASCII[self.type](self, self._ensure(native))

    def to_wire(self, native: Any) -> Tuple[Any, Optional[memoryview]]:
        """(JSON-able value, raw frame or None) for sending a native value.

        Only numpy arrays use a frame; everything else is plain JSON, with
        double NaN/infinities as the strings "nan", "inf", "-inf".
        """
        native = self._ensure(native)
        np = _numpy_loaded()
        if self.is_array and np is not None and isinstance(native, np.ndarray):
            return _ndarray_to_wire(np, native)
        return _TO_WIRE[self.type](self, native), None

    def from_wire(self, wire: Any, frame: Any = None, *, check: bool = True) -> Any:
        """The native value of a wire value (and its raw frame, for arrays).

        ``check=False`` skips the range rules (minimum/maximum, the 32-bit
        limit, unknown enumerators or mask bits) but never the type rules: a
        client uses it to accept whatever its dispatcher publishes.
        """
        if isinstance(wire, Mapping) and self.is_array:
            wire = _decode_frame(wire, frame, self.name)
        elif frame is not None:
            raise ConversionError(f"{self.name}: a raw frame only comes with an array header, "
                                  f"not with {_show(wire)}")
        return self._convert(wire, self.name, check)

    def equal(self, a: Any, b: Any) -> bool:
        """Whether two natives are the same value (NaN equals NaN; lists equal arrays).

        Used to decide that a write changed nothing and need not be broadcast.
        """
        if a is b:
            return True
        if a is None or b is None:
            return False
        if self.is_array:
            return _array_equal(a, b)
        return _scalar_equal(_plain(a), _plain(b))

    def describe(self) -> Dict[str, Any]:
        """JSON-able metadata: type, min, max and enumerators (None when unset).

        Enumerators are a list of names when their values are 0, 1, 2, ...
        (bit 0, 1, 2, ... for a mask), else a list of [value, name] pairs.
        """
        return {
            "type": self.type,
            "min": self.minimum,
            "max": self.maximum,
            "enumerators": self._describe_enumerators(),
        }

    def _describe_enumerators(self) -> Optional[List[Any]]:
        if self.enumerators is None:
            return None
        if [value for value, _ in self.enumerators] == list(range(len(self.enumerators))):
            return [name for _, name in self.enumerators]
        return [[value, name] for value, name in self.enumerators]

    # ---- internals -------------------------------------------------------

    def _convert(self, value: Any, label: str, check: bool) -> Any:
        return _CONVERTERS[self.type](self, value, label, check)

    def _ensure(self, value: Any) -> Any:
        """``value`` if it is already native, else it converted without range checks."""
        if _is_native(self, value):
            return value
        return self._convert(value, self.name, False)

    def _lookup_name(self, text: str, raw: Any, label: str) -> Optional[int]:
        """The value of an enumerator name: exact match, else unique case-insensitive."""
        value = self._by_name.get(text)  # type: ignore[attr-defined]
        if value is not None:
            return value
        matches = self._by_folded.get(text.casefold(), ())  # type: ignore[attr-defined]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(repr(self._by_value[v]) for v in matches)  # type: ignore[attr-defined]
            raise _fail(label, raw, f"matches more than one enumerator ignoring case: {names}")
        return None

    def _names(self) -> str:
        return ", ".join(repr(name) for _, name in self.enumerators or ())

    def _values(self) -> str:
        return ", ".join(f"{value} ({name!r})" for value, name in self.enumerators or ())

    def _check_int_range(self, n: int, raw: Any, label: str, check: bool) -> int:
        """Inclusive range check (the original Cauldron's bounds were exclusive)."""
        if check:
            (lo, lo_note), (hi, hi_note) = self._int_lo, self._int_hi  # type: ignore[attr-defined]
            if n < lo:
                raise _fail(label, raw, f"is below the minimum {_fmt_bound(lo)}{lo_note}")
            if n > hi:
                raise _fail(label, raw, f"is above the maximum {_fmt_bound(hi)}{hi_note}")
        elif not INT64_MIN <= n <= INT64_MAX:
            raise _fail(label, raw, "is outside the 64-bit integer range")
        return n

    def _check_float_range(self, x: float, raw: Any, label: str) -> float:
        """Inclusive range check; NaN cannot satisfy a range, so it is refused."""
        lo, hi = self.minimum, self.maximum
        if lo is None and hi is None:
            return x
        if x != x:
            raise _fail(label, raw, f"is not a number, so it cannot satisfy {_range_text(lo, hi)}")
        if lo is not None and x < lo:
            raise _fail(label, raw, f"is below the minimum {_fmt_bound(lo)}")
        if hi is not None and x > hi:
            raise _fail(label, raw, f"is above the maximum {_fmt_bound(hi)}")
        return x


def keyword_type(type: str, **meta: Any) -> KeywordType:  # noqa: A002 - mirrors the field
    """Build a :class:`KeywordType`, accepting ``min``/``max`` for minimum/maximum.

    Unknown metadata is a TypeError so that a misspelt option is not ignored.
    """
    aliases = {"min": "minimum", "max": "maximum"}
    allowed = ("name", "minimum", "maximum", "enumerators")
    kwargs: Dict[str, Any] = {}
    for key, value in meta.items():
        field = aliases.get(key, key)
        if field not in allowed:
            raise TypeError(f"keyword_type() got unknown metadata {key!r}")
        if field in kwargs:
            raise TypeError(f"keyword_type() got {field!r} twice (as {field!r} and an alias)")
        kwargs[field] = value
    return KeywordType(type, **kwargs)


# --------------------------------------------------------------------------
# per-type converters: (kt, value, label, check) -> native
# --------------------------------------------------------------------------

def _to_boolean(kt: KeywordType, value: Any, label: str, check: bool) -> bool:
    """bool; 0/1; or text 1/0, true/false, t/f, yes/no, y/n, on/off (any case)."""
    value = _plain(value)
    if isinstance(value, bool):
        return value
    text = _text(value, label)
    if text is not None:
        s = text.strip()
        if kt.enumerators and s:
            found = kt._lookup_name(s, value, label)
            if found is not None:
                return bool(found)
        word = s.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    elif isinstance(value, (Real, Decimal)) and not (isinstance(value, Decimal) and value.is_nan()):
        if value == 1:
            return True
        if value == 0:
            return False
    names = f", or {kt._names()}" if kt.enumerators else ""
    raise _fail(label, value, f"is not a boolean (expected 1/0, true/false, yes/no, on/off{names})")


def _to_integer(kt: KeywordType, value: Any, label: str, check: bool) -> int:
    """A whole number within the inclusive 32-bit KTL range and min/max."""
    return kt._check_int_range(_whole(value, label), value, label, check)


def _to_double(kt: KeywordType, value: Any, label: str, check: bool) -> float:
    """Any real number or numeric text; NaN is refused only when a range is set."""
    x = _real(value, label)
    return kt._check_float_range(x, value, label) if check else x


def _to_string(kt: KeywordType, value: Any, label: str, check: bool) -> str:
    """str; bytes as UTF-8; int and float through str().  Nothing else."""
    value = _plain(value)
    text = _text(value, label)
    if text is not None:
        return str(text)
    if isinstance(value, bool):
        raise _fail(label, value, "is a boolean, not a string (write '1'/'0' or 'True'/'False')")
    if isinstance(value, (Integral, float)):
        return str(value)
    raise _fail(label, value, "is not a string")


def _to_enumerated(kt: KeywordType, value: Any, label: str, check: bool) -> int:
    """An enumerator name (exact, else unique case-insensitive) or value."""
    value = _plain(value)
    text = _text(value, label)
    if text is not None:
        s = text.strip()
        found = kt._lookup_name(s, value, label) if s else None
        if found is not None:
            return found
        if not (_INT_RE.fullmatch(s) or _HEX_RE.fullmatch(s)):
            raise _fail(label, value, f"is not one of the enumerators {kt._names()}")
    elif isinstance(value, bool):
        raise _fail(label, value, "is a boolean, not an enumerator")
    elif not isinstance(value, (Real, Decimal)):
        raise _fail(label, value, f"is not an enumerator name or value (one of {kt._names()})")
    n = _whole(value, label)
    if check and n not in kt._by_value:  # type: ignore[attr-defined]
        raise _fail(label, value, f"is not one of the enumerator values {kt._values()}")
    return kt._check_int_range(n, value, label, False)


def _to_mask(kt: KeywordType, value: Any, label: str, check: bool) -> int:
    """A bit pattern: an int, a string of names (or of an int), or a list of names."""
    value = _plain(value)
    text = _text(value, label)
    if text is not None:
        n = _parse_mask_text(kt, text, value, label)
    elif isinstance(value, bool):
        raise _fail(label, value, "is a boolean, not a mask")
    elif isinstance(value, (Real, Decimal)):
        n = _whole(value, label)
    elif isinstance(value, (Sequence, set, frozenset)) and not isinstance(value, Mapping):
        n = _mask_from_names(kt, value, label)
    else:
        raise _fail(label, value, "is not a mask (expected an int, bit names or a string of them)")
    if n < 0:
        raise _fail(label, value, "is negative; a mask is a non-negative bit pattern")
    if n.bit_length() > 64:
        raise _fail(label, value, "has bits above 63")
    unknown = n & ~kt._known_bits  # type: ignore[attr-defined]
    if check and unknown:
        bit = (unknown & -unknown).bit_length() - 1
        raise _fail(label, value, f"sets bit {bit}, which is not one of the named bits {kt._values()}")
    return n


def _parse_mask_text(kt: KeywordType, text: str, raw: Any, label: str) -> int:
    """Names separated by ',', '|' or whitespace; "" is 0; a lone int or 0x hex is the pattern."""
    s = text.strip()
    if not s:
        return 0
    bit = kt._lookup_name(s, raw, label)
    if bit is not None:
        return 1 << bit
    if _INT_RE.fullmatch(s) or _HEX_RE.fullmatch(s):
        return _parse_int_text(s, raw, label)
    n = 0
    for piece in _MASK_SPLIT_RE.split(s):
        piece = piece.strip()
        if piece:
            n |= _mask_piece(kt, piece, raw, label)
    return n


def _mask_piece(kt: KeywordType, piece: str, raw: Any, label: str) -> int:
    """One ','/'|'-separated piece: a name (which may contain spaces) or space-separated names.

    Raw 0x hex tokens are accepted too: :meth:`KeywordType.to_ascii` writes
    unnamed bits that way when range checks were skipped.
    """
    bit = kt._lookup_name(piece, raw, label)
    if bit is not None:
        return 1 << bit
    tokens = piece.split() if not _HEX_RE.fullmatch(piece) else [piece]
    n = 0
    for token in tokens:
        bit = kt._lookup_name(token, raw, label) if len(tokens) > 1 else None
        if bit is not None:
            n |= 1 << bit
        elif _HEX_RE.fullmatch(token):
            n |= int(token, 16)
        else:
            shown = piece if len(tokens) == 1 else token
            if isinstance(raw, str) and raw.strip() == shown:
                raise _fail(label, raw, f"is not one of the bit names {kt._names()}")
            raise _fail(label, raw, f"contains {shown!r}, which is not one of the bit names {kt._names()}")
    return n


def _mask_from_names(kt: KeywordType, names: Any, label: str) -> int:
    n = 0
    for item in names:
        text = _text(_plain(item), label)
        bit = kt._lookup_name(text.strip(), names, label) if text is not None else None
        if bit is None:
            raise _fail(label, names,
                        f"contains {_show(item)}, which is not one of the bit names {kt._names()}")
        n |= 1 << bit
    return n


def _element_converter(kt: KeywordType) -> Callable[[KeywordType, Any, str, bool], Any]:
    return _to_integer if kt.type == "integer-array" else _to_double


def _to_array(kt: KeywordType, value: Any, label: str, check: bool) -> Any:
    """A list (or 1-D numpy array) whose elements obey the scalar rules."""
    np = _numpy_loaded()
    if np is not None and isinstance(value, np.ndarray):
        return _ndarray_to_native(kt, np, value, label, check)
    convert = _element_converter(kt)
    text = _text(value, label)
    if text is not None:
        items: List[Any] = _split_numbers(text)
    elif isinstance(value, Sequence) and not isinstance(value, (Mapping, str)):
        items = list(value)
    else:
        raise _fail(label, value, "is not a sequence of numbers "
                                  "(expected a list, tuple, 1-D array or a string of numbers)")
    return [convert(kt, item, f"{label}[{i}]", check) for i, item in enumerate(items)]


def _split_numbers(text: str) -> List[str]:
    """Numbers separated by whitespace and/or commas, optionally in [] or ()."""
    s = text.strip()
    if len(s) >= 2 and (s[0], s[-1]) in (("[", "]"), ("(", ")")):
        s = s[1:-1]
    return [token for token in _ARRAY_SPLIT_RE.split(s) if token]


def _ndarray_to_native(kt: KeywordType, np: Any, arr: Any, label: str, check: bool) -> Any:
    """A numpy array converted to int64/float64 with vectorised checks.

    The first offending element is re-run through the scalar rules so the
    error reads exactly as it would for a list.  The result never aliases a
    writable input: a caller mutating its own array afterwards must not change
    the keyword's value behind the dispatcher's back.  A read-only array of
    the right dtype (as decoded from a frame) is kept without a copy.
    """
    if arr.ndim != 1:
        raise ConversionError(f"{label}: an array of shape {tuple(arr.shape)} is not "
                              "one-dimensional (KTL arrays are 1-D)")
    convert = _element_converter(kt)
    dtype = np.dtype(np.int64) if kt.type == "integer-array" else np.dtype(np.float64)
    if arr.dtype.kind not in "iuf":
        items = [convert(kt, item, f"{label}[{i}]", check) for i, item in enumerate(arr.tolist())]
        return np.array(items, dtype=dtype)
    bad = _bad_elements(kt, np, arr, check)
    if bad is not None and bad.any():
        i = int(np.argmax(bad))
        convert(kt, arr[i].item(), f"{label}[{i}]", check)   # raises the scalar error
        raise _fail(f"{label}[{i}]", arr[i].item(), "is out of range")  # pragma: no cover
    if arr.dtype == dtype and not arr.flags.writeable:
        return arr
    return np.array(arr, dtype=dtype, copy=True)


def _bad_elements(kt: KeywordType, np: Any, arr: Any, check: bool) -> Any:
    """A boolean mask of the elements that break the rules, or None if none can."""
    if arr.size == 0:
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        if kt.type == "integer-array":
            lo, hi = INT64_MIN, INT64_MAX
            if check:
                (lo, _), (hi, _) = kt._int_lo, kt._int_hi  # type: ignore[attr-defined]
            bad = (arr < lo) | (arr > hi)
            if arr.dtype.kind == "f":   # whole, finite and exactly representable in int64
                bad = (bad | ~np.isfinite(arr) | (arr != np.floor(arr))
                       | (arr >= 2.0 ** 63) | (arr < -(2.0 ** 63)))
            return bad
        if not check or (kt.minimum is None and kt.maximum is None):
            return None
        x = arr.astype(np.float64, copy=False)
        bad = np.isnan(x)
        if kt.minimum is not None:
            bad = bad | (x < kt.minimum)
        if kt.maximum is not None:
            bad = bad | (x > kt.maximum)
        return bad


_CONVERTERS: Dict[str, Callable[[KeywordType, Any, str, bool], Any]] = {
    "boolean": _to_boolean,
    "integer": _to_integer,
    "double": _to_double,
    "string": _to_string,
    "enumerated": _to_enumerated,
    "mask": _to_mask,
    "integer-array": _to_array,
    "double-array": _to_array,
}

_NATIVE_SCALAR = {
    "boolean": bool, "integer": int, "double": float, "string": str,
    "enumerated": int, "mask": int,
}


def _is_native(kt: KeywordType, value: Any) -> bool:
    """Whether ``value`` already has the exact native type (so needs no conversion)."""
    if not kt.is_array:
        return type(value) is _NATIVE_SCALAR[kt.type]
    element = int if kt.type == "integer-array" else float
    if type(value) is list:
        return all(type(item) is element for item in value)
    np = _numpy_loaded()
    if np is not None and isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype == (np.int64 if element is int else np.float64)
    return False


# --------------------------------------------------------------------------
# ascii and wire formatting (natives only; see KeywordType._ensure)
# --------------------------------------------------------------------------

def _enumerated_ascii(kt: KeywordType, n: int) -> str:
    return kt._by_value.get(n, str(n))  # type: ignore[attr-defined]


def _mask_ascii(kt: KeywordType, n: int) -> str:
    """Names of the set bits in bit order, joined by ", "; 0 is ""."""
    names = [name for bit, name in kt.enumerators or () if n >> bit & 1]
    unknown = n & ~kt._known_bits  # type: ignore[attr-defined]
    if unknown:
        names.append(hex(unknown))
    return ", ".join(names)


def _array_items(native: Any) -> List[Any]:
    return native.tolist() if hasattr(native, "tolist") and not isinstance(native, list) else native


def _array_ascii(kt: KeywordType, native: Any) -> str:
    fmt: Callable[[Any], str] = str if kt.type == "integer-array" else repr
    return " ".join(fmt(item) for item in _array_items(native))


_TO_ASCII: Dict[str, Callable[[KeywordType, Any], str]] = {
    "boolean": lambda kt, v: "1" if v else "0",
    "integer": lambda kt, v: str(v),
    "double": lambda kt, v: repr(v),
    "string": lambda kt, v: v,
    "enumerated": _enumerated_ascii,
    "mask": _mask_ascii,
    "integer-array": _array_ascii,
    "double-array": _array_ascii,
}


def _array_wire(kt: KeywordType, native: Any) -> List[Any]:
    items = _array_items(native)
    if kt.type == "double-array":
        return [_float_wire(x) for x in items]
    return list(items)


_TO_WIRE: Dict[str, Callable[[KeywordType, Any], Any]] = {
    "boolean": lambda kt, v: v,
    "integer": lambda kt, v: v,
    "double": lambda kt, v: _float_wire(v),
    "string": lambda kt, v: v,
    "enumerated": lambda kt, v: v,
    "mask": lambda kt, v: v,
    "integer-array": _array_wire,
    "double-array": _array_wire,
}


def _ndarray_to_wire(np: Any, arr: Any) -> Tuple[Dict[str, Any], memoryview]:
    """({"dtype", "shape"}, little-endian C-contiguous bytes), copying only if needed."""
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    little = np.ascontiguousarray(little)
    header = {"dtype": little.dtype.str, "shape": [int(n) for n in little.shape]}
    return header, memoryview(little).cast("B")


def _decode_frame(header: Mapping[str, Any], frame: Any, label: str) -> Any:
    """A raw array frame as a numpy array (if numpy is installed) or a list.

    numpy.frombuffer shares the frame's memory: the array is read-only when
    the frame is (bytes, a received zmq frame), and is then kept as it is.
    """
    if frame is None:
        raise ConversionError(f"{label}: the array header {_show(dict(header))} needs a raw frame, "
                              "but none was given")
    dtype = header.get("dtype")
    match = _DTYPE_RE.fullmatch(dtype) if isinstance(dtype, str) else None
    if match is None:
        raise ConversionError(f"{label}: array dtype {_show(dtype)} is not one of the supported "
                              "integer or float dtypes such as '<i8' or '<f8'")
    order, kind, size = match.group(1) or "=", match.group(2), int(match.group(3))
    if kind == "f" and size == 1:
        raise ConversionError(f"{label}: array dtype {dtype!r} does not exist")
    buf = memoryview(frame)
    if buf.format != "B" or buf.ndim != 1:
        buf = buf.cast("B")
    count = _frame_count(header.get("shape"), len(buf), size, label)
    np = _numpy_import()
    if np is not None:
        return np.frombuffer(buf, dtype=np.dtype(dtype if order != "|" else kind + str(size)), count=count)
    prefix = {"<": "<", ">": ">", "=": "=", "|": "<"}[order]
    return list(struct.unpack(f"{prefix}{count}{_STRUCT_CODES[kind + str(size)]}", buf))


def _frame_count(shape: Any, nbytes: int, size: int, label: str) -> int:
    """The element count: the 1-D shape, checked against the frame's length."""
    if shape is None:
        count = nbytes // size
    elif (isinstance(shape, (list, tuple)) and len(shape) == 1
          and isinstance(shape[0], int) and not isinstance(shape[0], bool) and shape[0] >= 0):
        count = shape[0]
    else:
        raise ConversionError(f"{label}: array shape {_show(shape)} is not one-dimensional "
                              "(KTL arrays are 1-D)")
    if count * size != nbytes:
        raise ConversionError(f"{label}: the raw frame has {nbytes} bytes, but {count} elements "
                              f"of {size} bytes need {count * size}")
    return count


def _array_equal(a: Any, b: Any) -> bool:
    """Element-wise equality of lists and/or numpy arrays; NaN equals NaN."""
    np = _numpy_loaded()
    if np is not None and (isinstance(a, np.ndarray) or isinstance(b, np.ndarray)):
        try:
            x, y = np.asarray(a), np.asarray(b)
            if x.shape != y.shape:
                return False
            if x.dtype.kind == "f" or y.dtype.kind == "f":
                with np.errstate(invalid="ignore"):   # no copies of float64 arrays (16 MB ones)
                    x, y = x.astype(np.float64, copy=False), y.astype(np.float64, copy=False)
                    same = x == y
                    if same.all():
                        return True
                    return bool(np.all(same | (np.isnan(x) & np.isnan(y))))
            return bool(np.array_equal(x, y))
        except (TypeError, ValueError):
            return False
    try:
        left, right = list(a), list(b)
    except TypeError:
        return False
    return len(left) == len(right) and all(_scalar_equal(x, y) for x, y in zip(left, right))


def json_value(kind: "KeywordType", native: Any) -> Any:
    """A native value as plain JSON (the CLI's ``--json``, the web gateway): arrays as
    lists, NaN and infinities as their wire text (JSON has no number for them)."""
    if native is None:
        return None
    try:
        wire, raw = kind.to_wire(native)
    except (ValueError, TypeError):
        return str(native)
    if raw is not None:
        return native.tolist()
    if isinstance(wire, float) and not math.isfinite(wire):
        return str(wire)
    return wire
