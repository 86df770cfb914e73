"""Dispatcher-side keywords: the DFW ``Keyword`` classes and their hooks.

A keyword holds one value of one type (see :mod:`cauldron_zmq.types`) and the
hooks that connect it to hardware.  The hook names and their order are DFW's:

* a client write runs ``translate`` → conversion → ``prewrite`` (which
  ``check``\\ s) → ``write`` → ``postwrite`` (default: ``set``);
* a client read, or a periodic / scheduled update, runs ``update()``:
  ``preread`` → ``read`` → ``postread`` (default: ``set``);
* ``set()`` is how instrument code changes a value: ``translate`` →
  conversion → (unchanged: stop) → ``check`` → store → broadcast → callbacks.

Hooks are methods to override in a subclass, or callables given to the
constructor (``write=stage.move``) that are called with the same arguments as
the method they replace.

Values come in two meanings, chosen per service (``Service(values=...)``) and
followed by every keyword created in it, so one service never mixes them:

* ``"ascii"`` (KTL's, the default of ``DFW.Service``): :attr:`Keyword.value`
  is a string and the hooks ``check``, ``prewrite``, ``write``, ``postwrite``
  and ``postread`` receive strings (see :meth:`Keyword.hook_value`);
* ``"native"`` (the default of :class:`cauldron_zmq.dispatcher.Service`):
  typed values (int, float, bool, list) everywhere.

Either way :attr:`Keyword.binary` is the typed value, :attr:`Keyword.ascii`
what clients read, and ``set()`` accepts either form.

Where the original fell short this module differs on purpose: timestamps are
sub-second; callbacks are held strongly (a lambda works) and an exception in
one is logged rather than undoing or aborting the ``set``; ``schedule`` is not
truncated to seconds.
"""
from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections import deque
from typing import (Any, Callable, Deque, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple, Type)

from .errors import ConversionError, NoWriteNecessary
from .names import InvalidName, check_name
from .protocol.payloads import Value
from .types import KeywordType, _canonical_type, keyword_type

__all__ = [
    "Keyword", "Basic", "Boolean", "Integer", "Double", "Float", "String",
    "Enumerated", "Mask", "IntegerArray", "DoubleArray", "types",
    "HOOKS", "Snapshot", "AsciiValue", "EnumeratorMapping", "DuplicateKeyword", "VALUE_MODES",
]

#: Value modes a service can have (see the module docstring).
VALUE_MODES = ("ascii", "native")


#: Hook names a constructor accepts as callables.
HOOKS = ("check", "translate", "prewrite", "write", "postwrite",
         "preread", "read", "postread", "update")
_READ_HOOKS = ("preread", "read", "postread", "update")
_WRITE_HOOKS = ("check", "translate", "prewrite", "write", "postwrite")

#: Consecutive failures after which a periodic update is stopped.
MAX_PERIODIC_FAILURES = 5
HISTORY_LENGTH = 100

Callback = Callable[["Keyword"], Any]


# Keywords whose callbacks run in the current thread: one thread-local for all
# keywords (a threading.local per keyword cost ~0.7 kB each, 7 MB per 10,000).
_propagating = threading.local()


class Snapshot(NamedTuple):
    """A keyword's value and everything a reply or broadcast needs, taken atomically.

    Replacing one attribute that holds a tuple is atomic in Python, so the
    I/O thread reads a consistent value without taking the keyword's lock.
    """
    value: Any
    ascii: str
    wire: Any
    raw: Any
    time: Optional[float]
    seq: int


_EMPTY = Snapshot(None, "", None, None, None, 0)


class DuplicateKeyword(RuntimeError, ValueError):
    """A second keyword under a name already used in the service.

    A RuntimeError, as in KTL; also a ValueError, which this project raised
    before, so either ``except`` catches it.
    """


class AsciiValue(str):
    """The ascii-mode value of an enumerated or boolean keyword.

    The string is the number, as KTL's dispatcher code compares it
    (``value == '1'``, ``keyword.value == '3'``, ``int(value)``); it also
    equals the enumerator name, ignoring case (``value == 'On'``), as KTL
    expressions compare an enumerated keyword.  ``name`` is that name.  Its
    hash is the number's, so use ``value.name`` as a dictionary key of names.
    """

    name: Optional[str]

    def __new__(cls, number: str, name: Optional[str] = None) -> "AsciiValue":
        obj = str.__new__(cls, number)
        obj.name = name
        return obj

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str):
            return NotImplemented
        if str.__eq__(self, other):
            return True
        return self.name is not None and other.strip().casefold() == self.name.casefold()

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = str.__hash__

    def __repr__(self) -> str:
        return f"AsciiValue({str(self)!r}, name={self.name!r})"


class EnumeratorMapping(Dict[str, str]):
    """An enumerated keyword's ``mapping``: number (as a string) → enumerator name.

    Lookups also take the number as an int, and a name (any case), which
    gives its number: ``mapping[2] == mapping['2'] == 'Red'``,
    ``mapping['red'] == '2'``.  Assigning (``mapping[3] = 'Green'``) or
    deleting an entry changes the keyword's enumerators, as the original
    Cauldron's code did to fill an enumerated keyword created without them.
    """

    def __init__(self, pairs: Sequence[Tuple[int, str]],
                 changed: Optional[Callable[[List[Tuple[int, str]]], None]] = None) -> None:
        super().__init__((str(number), name) for number, name in pairs)
        self._changed = changed
        self._index()

    def _index(self) -> None:
        self._numbers = {name.casefold(): number for number, name in dict.items(self)}

    def pairs(self) -> List[Tuple[int, str]]:
        """(number, name) pairs, sorted by number."""
        return sorted((int(number), name) for number, name in dict.items(self))

    def _update_owner(self, before: Dict[str, str]) -> None:
        self._index()
        if self._changed is None:
            return
        try:
            self._changed(self.pairs())
        except Exception:
            dict.clear(self)
            dict.update(self, before)
            self._index()
            raise

    def __setitem__(self, key: Any, name: Any) -> None:
        number = self._key(key)
        if not isinstance(number, str) or not number.lstrip("-").isdigit():
            raise KeyError(f"an enumerator's key is its number, not {key!r}")
        before = dict(self)
        dict.__setitem__(self, str(int(number)), name)
        self._update_owner(before)

    def __delitem__(self, key: Any) -> None:
        before = dict(self)
        dict.__delitem__(self, self._key(key))
        self._update_owner(before)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, name in dict(*args, **kwargs).items():
            self[key] = name

    def _key(self, key: Any) -> Any:
        if isinstance(key, int) and not isinstance(key, bool):
            return str(key)
        if isinstance(key, str) and not dict.__contains__(self, key):
            return key.strip()
        return key

    def __getitem__(self, key: Any) -> str:
        key = self._key(key)
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        if isinstance(key, str) and key.casefold() in self._numbers:
            return self._numbers[key.casefold()]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def get(self, key: Any, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default


class Keyword:
    """A generic keyword (KTL's ``Basic``); the base class of every typed keyword.

    Creating one attaches it to ``service`` under its upper-cased name; a
    duplicate name is a :class:`DuplicateKeyword` (a RuntimeError).
    ``initial`` is applied by ``service.begin()`` (unless a persisted value was
    restored), ``period`` starts periodic updates.

    When the service has a KTL XML declaration of this name, what the code
    does not say comes from it: the type (for this generic class and its
    subclasses; a typed class keeps its type), enumerators and boolean
    names, units, format, range, read/write capability, help, array labels
    and length, and the ``serverside`` settings.
    """

    KTL_TYPE = "string"          # a cauldron_zmq.types type name
    KTL_REGISTERED = True        # listed in ``types``
    KTL_GENERIC = True           # takes its type from the XML declaration

    def __init__(self, name: str, service: Any, initial: Any = None,
                 period: Optional[float] = None, units: Optional[str] = None,
                 description: Optional[str] = None, minimum: Any = None,
                 maximum: Any = None, readonly: bool = False, writeonly: bool = False,
                 persist: bool = False, enumerators: Any = None, *,
                 check: Optional[Callable[..., Any]] = None,
                 translate: Optional[Callable[..., Any]] = None,
                 prewrite: Optional[Callable[..., Any]] = None,
                 write: Optional[Callable[..., Any]] = None,
                 postwrite: Optional[Callable[..., Any]] = None,
                 preread: Optional[Callable[..., Any]] = None,
                 read: Optional[Callable[..., Any]] = None,
                 postread: Optional[Callable[..., Any]] = None,
                 update: Optional[Callable[..., Any]] = None,
                 format: Optional[str] = None,  # noqa: A002 - KTL's word
                 timeout: Optional[float] = None,
                 progress: Optional[str] = None) -> None:
        self._fast: Optional[Tuple[bool, bool]] = None
        self.name = _keyword_name(name)
        self.service = service
        self.log = getattr(service, "log", logging.getLogger(__name__))
        decl = _declaration(service, self.name)
        kind = self._xml_kind(decl)
        if decl is not None:
            enumerators = _pick(enumerators, decl.enumerators if _has_values(kind) else None)
            numeric = kind in ("integer", "double", "integer-array", "double-array")
            minimum = _pick(minimum, decl.minimum if numeric else None)
            maximum = _pick(maximum, decl.maximum if numeric else None)
            units = _pick(units, decl.units)
            description = _pick(description, decl.brief)
            format = _pick(format, decl.format)
            initial = _pick(initial, decl.initial)
            readonly = readonly or decl.readonly
            writeonly = writeonly or decl.writeonly
            # <serverside><timeout>S</timeout><progress>KW</progress>: see docs/client.rst
            timeout = _pick(timeout, decl.serverside_value("timeout"))
            progress = _pick(progress, decl.serverside_value("progress"))
        if kind in ("enumerated", "mask") and enumerators is None:
            kind = "integer"      # no names (yet): see _set_enumerators
        self.type: KeywordType = keyword_type(kind, name=self.name, minimum=minimum,
                                              maximum=maximum, enumerators=enumerators)
        #: "ascii" (KTL's string values) or "native" (typed values): the service's mode.
        self.values: str = getattr(service, "values", "native")
        self._ascii_mode = self.values == "ascii"
        self.units = units
        self.description = description
        self.help: Optional[str] = decl.verbose if decl is not None else None
        self.format = _check_format(self.name, format)
        self.labels: Optional[Tuple[str, ...]] = decl.labels if decl is not None else None
        self.length: Optional[int] = len(self.labels) if self.labels else None
        self._serverside: Tuple[Tuple[str, str], ...] = decl.serverside if decl else ()
        self._declaration = decl
        if self.KTL_TYPE == "enumerated" or self.type.type == "enumerated":
            self.mapping = EnumeratorMapping(self.type.enumerators or (),
                                             self._set_enumerators)
        self.readonly = bool(readonly)
        self.writeonly = bool(writeonly)
        if self.readonly and self.writeonly:
            raise ValueError(f"{self.name}: a keyword cannot be both read-only and write-only")
        self.persist = bool(persist)
        self.initial = initial
        # What clients are told (describe): a write's default deadline in seconds
        # (a long move says how long it may take) and the keyword showing its progress.
        self.timeout = None if timeout is None else _check_seconds(self.name, "timeout", timeout)
        self.progress = None if progress is None else _keyword_name(progress)
        if period is not None:
            _check_period(self.name, period)
        self.history: Deque[Tuple[Any, float]] = deque(maxlen=HISTORY_LENGTH)
        self._snap = _EMPTY
        self._lock = threading.Lock()          # guards seq/store/enqueue; never held around hooks
        self._callbacks: List[Callback] = []
        self._period: Optional[float] = None
        self._periodic: Any = None              # workers.ScheduledEntry
        self._appointments: List[Any] = []
        hooks = dict(check=check, translate=translate, prewrite=prewrite, write=write,
                     postwrite=postwrite, preread=preread, read=read, postread=postread,
                     update=update)
        for hook, fn in hooks.items():
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"{self.name}: {hook}= must be callable, got {fn!r}")
                setattr(self, hook, fn)
        service._attach(self)
        if period is not None:
            self.period(period)

    def __setattr__(self, attr: str, value: Any) -> None:
        """Replacing a hook invalidates the cached fast-path decision."""
        if attr in HOOKS:
            object.__setattr__(self, "_fast", None)
        object.__setattr__(self, attr, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.full_name} = {self._snap.ascii!r}>"

    def __contains__(self, item: Any) -> bool:
        """``'text' in keyword``: whether the value (or its ascii form) contains ``item``."""
        if self._snap.seq == 0:
            return False
        texts = (str(self.value), self._snap.ascii)
        return any(str(item) in text for text in texts)

    def _set_enumerators(self, pairs: List[Tuple[int, str]]) -> None:
        """``mapping`` changed: the type follows (an integer while it is empty)."""
        kt = self.type
        if pairs:
            self.type = keyword_type("enumerated", name=self.name, enumerators=pairs)
        else:
            self.type = keyword_type("integer", name=self.name, minimum=kt.minimum,
                                     maximum=kt.maximum)

    def _xml_kind(self, decl: Any) -> str:
        """The type: the class's, or the declaration's for a generic class."""
        if decl is None or decl.type == _canonical(self.KTL_TYPE):
            return self.KTL_TYPE
        if type(self).KTL_GENERIC:
            return decl.type
        self.log.warning("%s: the KTL XML (%s) declares a %s keyword; the code's %s keeps "
                         "its type %s", self.name, decl.source, decl.type, type(self).__name__,
                         self.KTL_TYPE)
        return self.KTL_TYPE

    # ------------------------------------------------------------ attributes

    @property
    def full_name(self) -> str:
        return f"{getattr(self.service, 'name', '?')}.{self.name}"

    @property
    def value(self) -> Any:
        """The value (None until first set), in the service's mode; change it with :meth:`set`.

        ascii mode: a string, as KTL gives it (:meth:`hook_value`); native
        mode: the typed value, as :attr:`binary`.
        """
        snap = self._snap
        if not self._ascii_mode or snap.seq == 0:
            return snap.value
        return self.hook_value(snap.value)

    @property
    def binary(self) -> Any:
        """The typed (native) value in either mode: int, float, bool, str or list."""
        return self._snap.value

    def hook_value(self, native: Any) -> Any:
        """A typed value as this keyword's hooks and :attr:`value` show it.

        Native mode: unchanged.  ascii mode: the string KTL's dispatcher code
        compares -- ``'3'`` for an integer, ``repr`` of a double, the text of
        a string, elements joined by spaces for an array, and for an
        enumerated or boolean keyword its number (``'1'``) as an
        :class:`AsciiValue` that also equals its enumerator name.
        """
        if not self._ascii_mode or native is None:
            return native
        kt = self.type
        if kt.type in ("enumerated", "boolean"):
            number = int(native)
            return AsciiValue(str(number), _enumerator_name(kt, number))
        if kt.type == "mask":
            return str(int(native))
        return kt.to_ascii(native)

    def cast(self, value: Any) -> Any:
        """``value`` (ascii or native) as this keyword's Python type: int, float, bool, str, list.

        Raises ValueError for a value the keyword cannot hold.
        """
        return self._coerce(value)

    def serverside(self, name: str, default: Any = None) -> Any:
        """A setting of the keyword's KTL XML ``<serverside>`` block, as text (``'5'``).

        ``default`` when the block does not have it (or there is no XML).
        """
        decl = self._declaration
        found = decl.serverside_value(name) if decl is not None else None
        return default if found is None else found

    @property
    def ascii(self) -> Optional[str]:
        snap = self._snap
        if snap.seq and snap.raw is not None:    # a numpy array: formatted when asked
            return self._client_ascii(snap.value)
        return None if snap.seq == 0 else snap.ascii

    @property
    def timestamp(self) -> Optional[float]:
        """Epoch seconds (sub-second) of the last change."""
        return self._snap.time

    @property
    def seq(self) -> int:
        """How many times the value changed (1 after the first set)."""
        return self._snap.seq

    def __getitem__(self, key: str) -> Any:
        """DFW's dictionary interface: ``kw['value']``, ``kw['name']``, ..."""
        allowed = {"value": lambda: self.value, "name": lambda: self.name,
                   "binary": lambda: self.binary, "bin": lambda: self.binary,
                   "readonly": lambda: self.readonly, "writeonly": lambda: self.writeonly,
                   "ascii": lambda: self.ascii, "timestamp": lambda: self.timestamp,
                   "units": lambda: self.units, "type": lambda: self.type.ktl_type}
        if key not in allowed:
            raise KeyError(f"{self.name}: no key {key!r}; one of {', '.join(sorted(allowed))}")
        return allowed[key]()

    # ---------------------------------------------------------------- hooks

    def check(self, value: Any) -> None:
        """Raise (ValueError) to refuse ``value``; called by ``set`` and ``prewrite``."""

    def translate(self, value: Any) -> Any:
        """Map a user-facing value onto one the type accepts (identity).

        Called by ``modify`` and ``set``; a ``postwrite`` that calls ``set``
        translates again, so it should accept values it already translated.
        """
        return value

    def prewrite(self, value: Any) -> Any:
        """Skip equal writes (NoWriteNecessary), else ``check`` and return the value."""
        native = self._coerce(value) if self._ascii_mode else value
        if self.type.equal(self._snap.value, native):
            raise NoWriteNecessary(f"{self.full_name} is already {self._snap.ascii!r}")
        self.check(value)
        return value

    def write(self, value: Any) -> None:
        """Drive the hardware.  May raise; may take long (it runs on a worker)."""

    def postwrite(self, value: Any) -> None:
        """After a successful write: store and broadcast the value.

        Like ``set(value)``, without translating again: the value has been
        through translation on its way here.
        """
        self._set_native(self._coerce(value) if self._ascii_mode else value, False)

    def preread(self) -> None:
        """Before ``read``."""

    def read(self) -> Any:
        """Read the authoritative source; the default is the stored :attr:`value`."""
        return self.value

    def postread(self, value: Any) -> Any:
        """After ``read``: store (and broadcast, if changed) what was read."""
        self.set(value)
        return value

    def update(self) -> Any:
        """``preread`` → ``read`` → ``postread`` (when ``read`` returned a value)."""
        self.preread()
        value = self.read()
        if value is not None:
            self.postread(self.hook_value(self._coerce(value)) if self._ascii_mode else value)
        return value

    # ------------------------------------------------------- public actions

    def set(self, value: Any, force: bool = False) -> bool:
        """Change the value and broadcast it; callable from any thread.

        translate → conversion → unchanged and not ``force``: return False
        without broadcasting → ``check`` → store (time, seq+1) → broadcast →
        callbacks.  Returns True when a new value was stored.
        """
        return self._set_native(self._translate(value), force)

    def _translate(self, value: Any) -> Any:
        """translate → conversion.  In ascii mode a ``translate`` hook gets a string."""
        if (self._ascii_mode and not isinstance(value, str)
                and not _defaults(self, ("translate",))):
            value = self.hook_value(self._coerce(value))
        return self._coerce(self.translate(value))

    def _coerce(self, value: Any) -> Any:
        """The canonical native of an ascii or native value; checks the XML array length."""
        native = self.type.coerce(value)
        if self.length is not None and len(native) != self.length:
            raise ConversionError(
                f"{self.name}: {len(native)} element{'' if len(native) == 1 else 's'}, "
                f"expected {self.length} ({', '.join(repr(label) for label in self.labels or ())})")
        return native

    def _set_native(self, value: Any, force: bool, expect: Optional[int] = None) -> Any:
        """``set`` after translate and conversion: True if stored, False if unchanged.

        ``expect`` makes it a compare-and-set (``increment``): the value is
        stored only while the keyword still holds the snapshot of that seq;
        else None is returned and nothing is done (the caller recomputes).
        """
        if expect is None and not force and self.type.equal(self._snap.value, value):
            return False
        self.check(self.hook_value(value))
        wait_for_room = getattr(self.service, "_wait_for_room", None)
        if wait_for_room is not None:
            wait_for_room()              # backpressure when the I/O thread is far behind
        with self._lock:
            current = self._snap
            if expect is not None and current.seq != expect:
                return None
            if not force and self.type.equal(current.value, value):
                return False
            snap = self._store(value)
            self.service._publish(self, snap)
        self.service._changed(self, snap)
        self._propagate()
        return True

    def _store(self, value: Any) -> Snapshot:
        """Called with the lock held: the new snapshot, recorded in the history."""
        now = time.time()
        wire, raw = self.type.to_wire(value)
        # A numpy array's ascii is formatted when asked (Keyword.ascii), not on
        # every set: 2 s for a 16 MB array, and no reply or broadcast carries it.
        text = "" if raw is not None else self._client_ascii(value)
        snap = Snapshot(value, text, wire, raw, now, self._snap.seq + 1)
        self._snap = snap
        self.history.append((value, now))
        return snap

    def _client_ascii(self, value: Any) -> str:
        """The ascii form clients read: a boolean's names, the XML ``format``."""
        kt = self.type
        if kt.type == "boolean" and kt.enumerators:
            return _enumerator_name(kt, int(value)) or kt.to_ascii(value)
        if self.format and (kt.is_numeric or kt.type == "string"):
            try:
                if kt.is_array:
                    return " ".join(self.format % item for item in _items(value))
                return self.format % value
            except (TypeError, ValueError):
                pass
        return kt.to_ascii(value)

    def modify(self, value: Any) -> bool:
        """The client write path: translate, convert, prewrite, write, postwrite.

        NoWriteNecessary from any hook is success.  Returns whether the
        stored value changed.  Local calls raise the hooks' exceptions.
        """
        if self.readonly:
            raise ValueError(f"{self.full_name} is read-only")
        try:
            value = self._prepare_write(value)
            return self._apply_write(value)
        except NoWriteNecessary:
            return False

    def _prepare_write(self, value: Any) -> Any:
        """translate → conversion → prewrite: may refuse, changes nothing."""
        value = self._translate(value)
        shown = self.hook_value(value)
        result = self.prewrite(shown)
        if result is None or result is shown:
            return value
        return self._coerce(result)     # a prewrite that substituted a value

    def _apply_write(self, value: Any) -> bool:
        """write → postwrite (both given :meth:`hook_value`); whether a new value was stored."""
        before = self._snap.seq
        shown = self.hook_value(value)
        self.write(shown)
        self.postwrite(shown)
        return self._snap.seq != before

    def _fast_modify(self, value: Any) -> bool:
        """``modify`` for a keyword whose write hooks are all the defaults.

        What the default hooks do, without the calls: convert, skip an equal
        value, store and broadcast.  Used on the I/O thread (fast path).
        """
        value = self._coerce(value)
        with self._lock:
            if self.type.equal(self._snap.value, value):
                return False
            snap = self._store(value)
            self.service._publish(self, snap)
        self.service._changed(self, snap)
        self._propagate()
        return True

    def callback(self, function: Callback, remove: bool = False) -> None:
        """Call ``function(keyword)`` after every set that changes the value.

        Held strongly until removed, so a lambda works.  Callbacks run on the
        thread that called ``set`` (never the I/O thread).
        """
        if not callable(function):
            raise TypeError(f"{self.name}: callback must be callable, got {function!r}")
        with self._lock:
            callbacks = [cb for cb in self._callbacks if cb != function]
            if not remove:
                callbacks.append(function)
            self._callbacks = callbacks

    def _propagate(self) -> None:
        """Run callbacks; errors are logged; a set from a callback does not re-enter."""
        if not self._callbacks:
            return
        active = _propagating.__dict__.setdefault("keywords", set())
        if id(self) in active:
            return
        active.add(id(self))
        try:
            for function in list(self._callbacks):
                try:
                    function(self)
                except Exception:  # noqa: BLE001 - a callback must not undo a set
                    self.log.exception("%s: callback %r raised", self.full_name, function)
        finally:
            active.discard(id(self))

    # ------------------------------------------------ periodic / scheduled

    def period(self, seconds: Optional[float]) -> None:
        """Run ``update()`` every ``seconds`` (None or 0 stops it).

        After MAX_PERIODIC_FAILURES consecutive exceptions the period is
        stopped and an error logged: a broken sensor should not flood the log.
        """
        if self._periodic is not None:
            self._periodic.cancel()
            self._periodic = None
        if not seconds:
            self._period = None
            return
        seconds = _check_period(self.name, seconds)
        self._period = seconds
        self._periodic = self.service._scheduler.add(
            self.name, self._run_periodic, time.time() + seconds, seconds)

    def schedule(self, appointment: Any = None, cancel: bool = False) -> None:
        """Run ``update()`` once at ``appointment`` (epoch seconds or datetime; None: now).

        ``cancel=True`` cancels every pending appointment (or the given one).
        Times keep their sub-second part.
        """
        if cancel:
            self._cancel_appointments(appointment)
            return
        when = _epoch(appointment)
        entry = self.service._scheduler.add(self.name, self._run_appointment, when)
        self._appointments = [e for e in self._appointments if not e.cancelled] + [entry]

    def _cancel_appointments(self, appointment: Any) -> None:
        when = None if appointment is None else _epoch(appointment)
        for entry in self._appointments:
            if when is None or abs(entry.when - when) < 1e-6:
                entry.cancel()
        self._appointments = [e for e in self._appointments if not e.cancelled]

    def _run_appointment(self, entry: Any) -> None:
        entry.cancel()   # done: drop from the pending list
        try:
            self.update()
        except Exception:  # noqa: BLE001
            self.log.exception("%s: scheduled update failed", self.full_name)

    def _run_periodic(self, entry: Any) -> None:
        try:
            self.update()
        except Exception:  # noqa: BLE001
            entry.failures += 1
            if entry.failures >= MAX_PERIODIC_FAILURES:
                entry.cancel()
                self.log.error("%s: periodic update failed %d times in a row; stopped "
                               "(call period() again to restart)", self.full_name, entry.failures,
                               exc_info=True)
            else:
                self.log.warning("%s: periodic update failed (%d in a row)", self.full_name,
                                 entry.failures, exc_info=True)
        else:
            entry.failures = 0

    # --------------------------------------------------------- description

    def value_payload(self, snap: Optional[Snapshot] = None) -> Dict[str, Any]:
        """A protocol VALUE (without the raw frame, which is ``snap.raw``).

        Strings and arrays carry no ``ascii``: a string's is its value, and
        clients format an array's when asked, so a large value travels once.
        """
        snap = snap or self._snap
        return Value(snap.wire, snap.ascii, snap.time, snap.seq).to_payload(
            self.name, with_ascii=not (self.type.is_array or self.type.type == "string"))

    def describe(self) -> Dict[str, Any]:
        """A protocol DESCRIPTION: the VALUE plus type and metadata."""
        out = self.value_payload()
        out.update(self.type.describe())
        out.update({"ktl_type": self.type.ktl_type, "units": self.units,
                    "description": self.description, "readonly": self.readonly,
                    "writeonly": self.writeonly, "period": self._period,
                    "persist": self.persist, "timeout": self.timeout,
                    "progress": self.progress})
        return out

    # ----------------------------------------------------------- fast path

    def _fast_paths(self) -> Tuple[bool, bool]:
        """(read, write) can be answered on the I/O thread: no user hooks involved."""
        fast = self._fast
        if fast is None:
            fast = (_defaults(self, _READ_HOOKS), _defaults(self, _WRITE_HOOKS))
            object.__setattr__(self, "_fast", fast)
        return fast

    def fast_read(self) -> bool:
        return self._fast_paths()[0]

    def fast_write(self) -> bool:
        """Also false while callbacks exist: they run in ``set``, on the caller's thread."""
        return self._fast_paths()[1] and not self._callbacks


def _declaration(service: Any, name: str) -> Any:
    """The service's KTL XML declaration of ``name`` (a ktlxml.Declaration), if any."""
    declarations = getattr(service, "declarations", None)
    return declarations.get(name) if declarations else None


def _pick(code: Any, xml: Any) -> Any:
    """What the code says wins over the XML."""
    return xml if code is None else code


def _canonical(kind: str) -> str:
    return _canonical_type(kind, "?")


def _has_values(kind: str) -> bool:
    return _canonical(kind) in ("boolean", "enumerated", "mask")


def _enumerator_name(kt: KeywordType, number: int) -> Optional[str]:
    return kt._by_value.get(number)  # type: ignore[attr-defined]


def _items(native: Any) -> List[Any]:
    return native.tolist() if hasattr(native, "tolist") else list(native)


def _check_format(name: str, fmt: Optional[str]) -> Optional[str]:
    if fmt is None:
        return None
    if not isinstance(fmt, str) or "%" not in fmt:
        raise ValueError(f"{name}: format must be a printf format such as '%.2f', got {fmt!r}")
    return fmt


def _defaults(kw: Keyword, hooks: Sequence[str]) -> bool:
    cls = type(kw)
    instance = kw.__dict__
    return all(hook not in instance and getattr(cls, hook) is getattr(Keyword, hook)
               for hook in hooks)


def _check_seconds(name: str, what: str, seconds: Any) -> float:
    """A positive, finite number of seconds (a keyword's declared timeout)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(seconds, bool) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name}: {what} must be a positive number of seconds, got {seconds!r}")
    return value


def _check_period(name: str, seconds: Any) -> float:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(seconds, bool) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name}: period must be a positive number of seconds, got {seconds!r}")
    return value


def _keyword_name(name: Any) -> str:
    """Stripped and upper-cased, then :func:`cauldron_zmq.names.check_name`.

    The router refuses a registration whose keyword names that validator
    refuses, so a bad name is refused here, where the code creating it can
    see why, instead of failing ``begin()``.  White space inside is refused
    too (as keyword files and KTL XML do): ``KW=value`` on a command line and
    ``$svc.KW`` in an expression could not name it.  Anything KTL names use
    (letters, digits, ``_``, ``-`` as in ``DATE-OBS``) is valid.
    """
    if not isinstance(name, str):
        raise TypeError(f"keyword name must be a string, got {name!r}")
    text = name.strip().upper()
    if not text or any(c.isspace() for c in text):
        raise InvalidName(f"invalid keyword name {name!r}: it must be non-empty, without "
                          "whitespace")
    return check_name("keyword", text)


def _epoch(appointment: Any) -> float:
    if appointment is None:
        return time.time()
    if isinstance(appointment, _dt.datetime):
        return appointment.timestamp()
    if isinstance(appointment, (int, float)) and not isinstance(appointment, bool):
        return float(appointment)
    raise TypeError(f"appointment must be epoch seconds or a datetime, got {appointment!r}")


# --------------------------------------------------------------------------
# typed keywords
# --------------------------------------------------------------------------

#: KTL's name of the generic keyword class, which every typed class derives from.
Basic = Keyword


class String(Keyword):
    KTL_TYPE = "string"
    KTL_GENERIC = False


class Boolean(Keyword):
    """``True``/``False``; accepts 1/0, true/false, yes/no, on/off."""

    KTL_TYPE = "boolean"
    KTL_GENERIC = False


class Integer(Keyword):
    """A 32-bit integer (inclusive range); fractions are refused, not truncated."""

    KTL_TYPE = "integer"
    KTL_GENERIC = False

    def increment(self, amount: int = 1) -> bool:
        """Add ``amount`` to the value (0 when unset) and broadcast; False if unchanged.

        Atomic: a compare-and-set on the keyword's seq, so when another
        ``set()`` lands between reading the value and storing the sum, the
        sum is taken again from the new value and concurrent increments all
        count.  Hooks (``translate``, ``check``) never run under the lock.
        """
        while True:
            snap = self._snap            # one consistent snapshot (value and seq)
            done = self._set_native(self._translate((snap.value or 0) + amount), False,
                                    expect=snap.seq)
            if done is not None:
                return bool(done)


class Double(Keyword):
    """A double; NaN and infinities are allowed unless a range is set."""

    KTL_TYPE = "double"
    KTL_GENERIC = False


Float = Double


class Enumerated(Keyword):
    """An integer whose ascii form is an enumerator name.

    The enumerators come from the code (``enumerators=``) or the KTL XML;
    ``mapping`` (an :class:`EnumeratorMapping`) maps numbers to names.
    """

    KTL_TYPE = "enumerated"
    KTL_GENERIC = False


class Mask(Keyword):
    """A bit pattern whose bits are named by ``enumerators``."""

    KTL_TYPE = "mask"
    KTL_GENERIC = False


class IntegerArray(Keyword):
    """A 1-D list of integers (a numpy int64 array when numpy is used)."""

    KTL_TYPE = "integer-array"
    KTL_GENERIC = False


class DoubleArray(Keyword):
    """A 1-D list of doubles (a numpy float64 array when numpy is used)."""

    KTL_TYPE = "double-array"
    KTL_GENERIC = False


def _type_table() -> Dict[str, Type[Keyword]]:
    table: Dict[str, Type[Keyword]] = {
        "keyword": Keyword, "basic": Basic, "string": String, "boolean": Boolean,
        "integer": Integer, "double": Double, "float": Double, "enumerated": Enumerated,
        "mask": Mask, "integer-array": IntegerArray, "double-array": DoubleArray,
    }
    for name in list(table):   # KTL spellings: "integer array", "integer_array"
        if "-" in name:
            table[name.replace("-", " ")] = table[name]
            table[name.replace("-", "_")] = table[name]
    table["float-array"] = table["float array"] = DoubleArray
    return table


#: Keyword classes by type name (``types['integer']``, ``types['double array']``, ...).
types: Dict[str, Type[Keyword]] = _type_table()


def keyword_class(type_name: str) -> Type[Keyword]:
    """The class for a keyword-file / KTL type name; KeyError if unknown."""
    key = type_name.strip().lower()
    if key.startswith("ktl_"):
        key = key[4:]
    return types[key]
