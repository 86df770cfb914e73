"""TOML keyword files: keywords without code.

One table per keyword::

    [keyword.TEMP]
    type = "double"            # boolean, integer, double, string, enumerated,
                               # mask, integer-array, double-array
    units = "degC"
    min = -50.0
    max = 50.0
    initial = 20.0
    description = "Detector temperature"
    period = 5.0               # update() every 5 s (broadcasts only on change)
    persist = true             # survive a restart
    read-only = false
    write-only = false

    [keyword.MODE]
    type = "enumerated"
    enumerators = ["OFF", "STANDBY", "ON"]
    initial = "STANDBY"

The whole file is checked before any keyword is created, and every problem
is a :class:`~cauldron_zmq.errors.ConfigurationError` naming the file, the
keyword table and the key (with a suggestion for a misspelt key), so a typo
fails at start-up instead of surfacing as a strange keyword later.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import ConfigurationError, ConversionError
from .keywords import Keyword, keyword_class
from .names import InvalidName, check_name
from .types import TYPE_NAMES, keyword_type

try:
    import tomllib  # type: ignore[import-not-found]
except ModuleNotFoundError:  # Python < 3.11
    try:
        import tomli as tomllib  # type: ignore[no-redef, import-not-found]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["KeywordSpec", "read_keyword_file", "parse_keywords", "load_keywords", "KEYS"]

#: Keys a ``[keyword.NAME]`` table may hold.
KEYS = ("type", "units", "min", "max", "enumerators", "initial", "read-only",
        "write-only", "description", "period", "persist", "timeout", "progress")
#: Spellings people reach for, mapped to the key they meant (for suggestions only).
_KEY_ALIASES = {"minimum": "min", "maximum": "max", "readonly": "read-only",
                "read_only": "read-only", "writeonly": "write-only", "write_only": "write-only",
                "unit": "units", "enum": "enumerators", "enums": "enumerators",
                "values": "enumerators", "default": "initial", "value": "initial",
                "persistent": "persist", "doc": "description", "help": "description"}
_NUMERIC = ("integer", "double", "integer-array", "double-array")
_ENUMERATED = ("enumerated", "mask", "boolean")


@dataclass(frozen=True)
class KeywordSpec:
    """One keyword as a file declares it (already validated)."""

    name: str
    type: str
    units: Optional[str] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    enumerators: Optional[Tuple[str, ...]] = None
    initial: Any = None
    readonly: bool = False
    writeonly: bool = False
    description: Optional[str] = None
    period: Optional[float] = None
    persist: bool = False
    timeout: Optional[float] = None
    progress: Optional[str] = None

    def create(self, service: Any) -> Keyword:
        """The keyword, attached to ``service``."""
        cls = keyword_class(self.type)
        return cls(self.name, service, initial=self.initial, period=self.period,
                   units=self.units, description=self.description, minimum=self.minimum,
                   maximum=self.maximum, readonly=self.readonly, writeonly=self.writeonly,
                   persist=self.persist,
                   enumerators=list(self.enumerators) if self.enumerators else None,
                   timeout=self.timeout, progress=self.progress)


class _Where:
    """File and table that an error message names."""

    def __init__(self, source: str, table: str = "") -> None:
        self.source = source
        self.table = table

    def error(self, key: Optional[str], message: str) -> ConfigurationError:
        where = f"[{self.table}]" if self.table else ""
        if key:
            where = f"{where} {key}".strip()
        text = f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}"
        return ConfigurationError(text, source=self.source, section=self.table or None, key=key)


def read_keyword_file(path: Union[str, "os.PathLike[str]"]) -> List[KeywordSpec]:
    """Read and validate a keyword file; ConfigurationError on any problem."""
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    where = _Where(full)
    if tomllib is None:
        raise where.error(None, "reading TOML needs the 'tomli' package on Python < 3.11")
    try:
        with open(full, "rb") as stream:
            text = stream.read().decode("utf-8")
    except FileNotFoundError:
        raise where.error(None, "keyword file not found") from None
    except OSError as exc:
        raise where.error(None, f"cannot read keyword file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise where.error(None, f"not UTF-8 text: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise where.error(None, f"TOML syntax error: {exc}") from None
    return parse_keywords(data, full)


def parse_keywords(data: Mapping[str, Any], source: str = "<keywords>") -> List[KeywordSpec]:
    """Validate already-parsed data (``{"keyword": {NAME: {...}}}``)."""
    where = _Where(source)
    for key in data:
        if key != "keyword":
            raise where.error(key, f"unknown top-level key; {_suggest(key, ['keyword'])}; "
                                   "keywords are tables [keyword.NAME]")
    tables = data.get("keyword")
    if "keyword" in data and not isinstance(tables, Mapping):
        raise where.error("keyword", f"expected tables [keyword.NAME], got "
                                     f"{tables!r} ({type(tables).__name__})")
    if not tables:
        raise where.error(None, "defines no keywords; add tables such as [keyword.TEMP]")
    specs: Dict[str, KeywordSpec] = {}
    for raw_name, body in tables.items():
        table = _Where(source, f"keyword.{raw_name}")
        name = str(raw_name).strip().upper()
        if not name or any(c.isspace() for c in name):
            raise table.error(None, "a keyword name must be non-empty and without whitespace")
        try:
            check_name("keyword", name)
        except InvalidName as exc:
            raise table.error(None, str(exc)) from None
        if name in specs:
            raise table.error(None, f"keyword {name} is defined twice (names are case-insensitive)")
        if not isinstance(body, Mapping):
            raise table.error(None, f"expected a table of keys, got {body!r}")
        specs[name] = _spec(name, body, table)
    return list(specs.values())


def load_keywords(service: Any, path: Union[str, "os.PathLike[str]"]) -> List[Keyword]:
    """Create every keyword of a file in ``service`` (all checked before any is created)."""
    return [spec.create(service) for spec in read_keyword_file(path)]


# --------------------------------------------------------------------------
# one table
# --------------------------------------------------------------------------

def _spec(name: str, body: Mapping[str, Any], where: _Where) -> KeywordSpec:
    for key in body:
        if key not in KEYS:
            raise where.error(str(key), f"unknown key; {_suggest_key(str(key))}")
    kind = _type(body, where)
    minimum = _number(body, "min", kind, where)
    maximum = _number(body, "max", kind, where)
    enumerators = _enumerators(body, kind, where)
    readonly = _flag(body, "read-only", where)
    writeonly = _flag(body, "write-only", where)
    if readonly and writeonly:
        raise where.error("write-only", "a keyword cannot be both read-only and write-only")
    try:
        ktype = keyword_type(kind, name=name, minimum=minimum, maximum=maximum,
                             enumerators=list(enumerators) if enumerators else None)
    except ConversionError as exc:
        raise where.error(_blame(str(exc)), str(exc)) from None
    initial = body.get("initial")
    if initial is not None:
        try:
            ktype.coerce(initial)
        except ConversionError as exc:
            raise where.error("initial", f"{initial!r} is not a valid {kind}: {exc}") from None
    return KeywordSpec(
        name=name, type=kind, units=_text(body, "units", where), minimum=minimum,
        maximum=maximum, enumerators=enumerators, initial=initial, readonly=readonly,
        writeonly=writeonly, description=_text(body, "description", where),
        period=_period(body, where), persist=_flag(body, "persist", where),
        timeout=_period(body, where, "timeout"), progress=_text(body, "progress", where))


def _type(body: Mapping[str, Any], where: _Where) -> str:
    if "type" not in body:
        raise where.error("type", f"missing; expected one of {', '.join(TYPE_NAMES)}")
    kind = body["type"]
    if not isinstance(kind, str) or kind.strip().lower() not in TYPE_NAMES:
        raise where.error("type", f"expected one of {', '.join(TYPE_NAMES)}, got {kind!r}"
                          + _maybe(str(kind), TYPE_NAMES))
    return kind.strip().lower()


def _number(body: Mapping[str, Any], key: str, kind: str, where: _Where) -> Optional[float]:
    if key not in body:
        return None
    value = body[key]
    if kind not in _NUMERIC:
        raise where.error(key, f"only numeric keywords ({', '.join(_NUMERIC)}) have a {key}, "
                               f"not {kind}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise where.error(key, f"expected a number, got {value!r}")
    return value


def _enumerators(body: Mapping[str, Any], kind: str, where: _Where) -> Optional[Tuple[str, ...]]:
    value = body.get("enumerators")
    if value is None:
        if kind in ("enumerated", "mask"):
            article = "an" if kind[:1] in "aeiou" else "a"
            raise where.error("enumerators", f"missing; {article} {kind} keyword needs a list of names")
        return None
    if kind not in _ENUMERATED:
        raise where.error("enumerators", f"only enumerated, mask and boolean keywords have "
                                         f"enumerators, not {kind}")
    if not isinstance(value, list) or not value:
        raise where.error("enumerators", f"expected a non-empty list of names, got {value!r}")
    names: List[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or item != item.strip():
            raise where.error("enumerators", f"expected names (non-empty strings without "
                                             f"surrounding spaces), got {item!r}")
        if item in names:
            raise where.error("enumerators", f"{item!r} appears twice")
        names.append(item)
    return tuple(names)


def _flag(body: Mapping[str, Any], key: str, where: _Where) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise where.error(key, f"expected true or false, got {value!r}")
    return value


def _text(body: Mapping[str, Any], key: str, where: _Where) -> Optional[str]:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise where.error(key, f"expected a string, got {value!r}")
    return value


def _period(body: Mapping[str, Any], where: _Where, key: str = "period") -> Optional[float]:
    value = body.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise where.error(key, f"expected a positive number of seconds, got {value!r}")
    return float(value)


def _blame(message: str) -> str:
    """Which key a type-construction error is about."""
    lowered = message.lower()
    if "enumerator" in lowered or "bit" in lowered:
        return "enumerators"
    if "maximum" in lowered:
        return "max"
    if "minimum" in lowered:
        return "min"
    return "type"


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of " + ", ".join(repr(c) for c in choices)


def _suggest_key(word: str) -> str:
    """A suggestion for a misspelt key, knowing the usual wrong spellings."""
    folded = word.strip().lower()
    close = difflib.get_close_matches(folded, list(KEYS) + list(_KEY_ALIASES), n=1)
    if close:
        return f"did you mean {_KEY_ALIASES.get(close[0], close[0])!r}?"
    return "expected one of " + ", ".join(repr(k) for k in KEYS)


def _maybe(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word.strip().lower(), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
