"""How the command-line tools write values, times and tables: pure functions.

Kept apart from the commands so that every tool prints a value, a count or
a time the same way, and so they can be tested without a process.
"""
from __future__ import annotations

import datetime
import math
import re
from typing import Any, List, Optional, Sequence

__all__ = ["plural", "columns", "binary_text", "range_text", "access_text", "stamp_text",
           "seconds_text", "in_seconds"]


def plural(n: int, word: str) -> str:
    """'1 keyword', '2 keywords', '0 keywords'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def columns(rows: Sequence[Sequence[str]]) -> List[str]:
    """Rows as lines, each column padded to its widest cell; no trailing blanks."""
    if not rows:
        return []
    count = max(len(row) for row in rows)
    padded = [list(row) + [""] * (count - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in padded) for i in range(count)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in padded]


# ------------------------------------------------------------------- values

def binary_text(native: Any) -> str:
    """KTL's binary form of a native value: booleans 0/1, numbers as numbers,
    arrays as their elements separated by spaces, never a Python repr."""
    if native is None:
        return ""
    if hasattr(native, "tolist") and not isinstance(native, (str, bytes)):
        native = native.tolist()          # numpy arrays and scalars
    if isinstance(native, (list, tuple)):
        return " ".join(_scalar_text(item) for item in native)
    return _scalar_text(native)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)               # shortest form that reads back exactly; inf, -inf
    return str(value)


def _number(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def range_text(keyword_type: Any, limit: int = 40) -> str:
    """'0..100', '>= -20.0', '<= 5' for numbers; 'OFF|STANDBY|ON' for names."""
    enumerators = getattr(keyword_type, "enumerators", None)
    if enumerators:
        text = "|".join(name for _, name in enumerators)
        return text if len(text) <= limit else text[:limit - 3] + "..."
    lo = getattr(keyword_type, "minimum", None)
    hi = getattr(keyword_type, "maximum", None)
    if lo is not None and hi is not None:
        return f"{_number(lo)}..{_number(hi)}"
    if lo is not None:
        return f">= {_number(lo)}"
    if hi is not None:
        return f"<= {_number(hi)}"
    return ""


def access_text(reads: bool, writes: bool) -> str:
    """'rw', 'read-only' or 'write-only'."""
    if reads and writes:
        return "rw"
    return "read-only" if reads else "write-only"


# -------------------------------------------------------------------- times

def stamp_text(stamp: Optional[float]) -> str:
    """A dispatcher timestamp as local time to the millisecond ('?' if unknown)."""
    if stamp is None:
        return "????-??-?? ??:??:??.???"
    when = datetime.datetime.fromtimestamp(stamp)
    return when.isoformat(sep=" ", timespec="milliseconds")


def seconds_text(seconds: float) -> str:
    """Every message gives times in seconds: '0.2 s', '3 s', '12.5 s', '3600 s'."""
    if seconds >= 10:
        return f"{seconds:.0f} s"
    return f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.1f}".rstrip("0").rstrip(".") + " s"


_MILLIS = re.compile(r"\b(\d+(?:\.\d+)?) ms\b")


def in_seconds(message: str) -> str:
    """A message with its 'N ms' durations rewritten in seconds (the router's are in ms)."""
    return _MILLIS.sub(lambda m: seconds_text(float(m.group(1)) / 1000.0), message)
