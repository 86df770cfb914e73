"""Configuration: the ``[zmq]``, ``[zmq-router]`` and ``[zmq-security]`` sections of a TOML file.

The original Cauldron read an INI file with ``configparser`` and looked values
up lazily, so a typo surfaced (if ever) deep inside a running dispatcher.  Here
the whole file is read and validated once, up front, into frozen dataclasses:
a bad file fails at start-up with a message that names the file, the section,
the key, the bad value and what was expected, and nothing can change the
configuration behind a running service's back.

Where the configuration comes from (:func:`load_config`):

1. an explicit path (the ``-c/--config`` command-line option) or a
   :class:`Config` object;
2. else the file named by the environment variable ``CAULDRON_ZMQ_CONFIG``;
3. else the built-in defaults, :data:`DEFAULT`.

A file only needs the keys it changes.  Keys use TOML spelling (dashes,
``first-port``); attributes use Python spelling (``first_port``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

from .errors import ConfigurationError

try:
    import tomllib  # type: ignore[import-not-found]
except ModuleNotFoundError:  # Python < 3.11
    try:
        import tomli as tomllib  # type: ignore[no-redef, import-not-found]
    except ModuleNotFoundError:  # only reading files needs it; mappings still work
        tomllib = None  # type: ignore[assignment]

__all__ = [
    "ZmqConfig",
    "RouterConfig",
    "SecurityConfig",
    "FrozenMap",
    "Config",
    "DEFAULT",
    "DEFAULT_PERSIST_DIR",
    "ENV_VAR",
    "SECTIONS",
    "load_config",
    "config_from_mapping",
    "connect_host",
    "bind_host",
    "endpoint",
    "split_replica",
]

ENV_VAR = "CAULDRON_ZMQ_CONFIG"
#: Where keyword values are persisted when ``persist-dir`` is not set.
DEFAULT_PERSIST_DIR = "~/.local/state/cauldron_zmq"

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


# --------------------------------------------------------------------------
# Value checks.  Each takes the raw value and returns the normalised value,
# or raises _Invalid with the "expected ..." half of the error message; the
# caller adds file, section, key and value, which a check cannot know.
# --------------------------------------------------------------------------

class _Invalid(Exception):
    """A value broke a rule; ``expected`` says what would have been accepted."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


Check = Callable[[Any], Any]

_TRUE = frozenset({"yes", "true", "on"})
_FALSE = frozenset({"no", "false", "off"})


def _is_int(value: Any) -> bool:
    """True for real integers; ``True`` is an int to Python but not to a user."""
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(low: Optional[int], high: Optional[int], expected: str) -> Check:
    """An integer check with inclusive bounds (``None``: unbounded)."""
    def check(value: Any) -> int:
        if not _is_int(value):
            raise _Invalid(expected)
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Invalid(expected)
        return int(value)
    return check


def _seconds(value: Any) -> float:
    """A positive, finite duration; TOML ints (``heartbeat = 2``) are fine."""
    expected = "a positive number of seconds"
    if not (_is_int(value) or isinstance(value, float)):
        raise _Invalid(expected)
    if not math.isfinite(value) or value <= 0:
        raise _Invalid(expected)
    return float(value)


def _boolean(value: Any) -> bool:
    """A TOML boolean, or yes/no/on/off/true/false as a string.

    The strings are accepted because the original Cauldron documentation wrote
    ``enable = yes``; people will copy that into TOML as ``enable = "yes"``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _Invalid("a boolean (true/false, or a string yes/no/on/off/true/false)")


def _choice(*choices: str) -> Check:
    """One of a few lower-case words; matched case-insensitively."""
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def check(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise _Invalid(expected)
    return check


def _host(value: Any) -> str:
    """A host name or address (tcp), or a path prefix (ipc); never empty."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise _Invalid("a non-empty host name, address or (for ipc) path")


def _path(value: Any) -> Optional[str]:
    """An optional path; ``~`` expanded.  ``""`` means unset (TOML has no null)."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return os.path.expanduser(value) if value.strip() else None
    raise _Invalid("a path (string)")


_port = _integer(1, 65535, "an integer port 1..65535")


class FrozenMap(Mapping):  # type: ignore[type-arg]
    """A read-only, hashable mapping: a table value of a frozen configuration."""

    __slots__ = ("_data",)

    def __init__(self, items: Any = ()) -> None:
        self._data: Dict[str, Any] = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._data) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def _key_list(value: Any) -> Tuple[str, ...]:
    """A list of client key names (file stems in authorized-keys) or z85 public keys."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip()
                                                for v in value):
        return tuple(v.strip() for v in value)
    raise _Invalid("a list of key names (file stems in authorized-keys) or z85 public keys")


def _policy_key(text: Any) -> str:
    """``KEYWORD``, ``*``, ``service.KEYWORD`` or ``service.*``, normalised."""
    service, dot, keyword = str(text).strip().rpartition(".")
    keyword = keyword.strip().upper()
    if not keyword or (dot and not service.strip()):
        raise _Invalid(f"keys KEYWORD, \"*\", \"service.KEYWORD\" or \"service.*\"; "
                       f"{text!r} is none of these")
    return f"{service.strip().lower()}.{keyword}" if dot else keyword


def _key_table(value: Any) -> FrozenMap:
    """``{KEYWORD: [key, ...]}``; a nested table is a service (``[x.writers.stage]``)."""
    if not isinstance(value, Mapping):
        raise _Invalid("a table mapping KEYWORD (or \"*\", or \"service.KEYWORD\") to a "
                       "list of key names or z85 public keys")
    out: Dict[str, Tuple[str, ...]] = {}
    for raw, names in value.items():
        if isinstance(names, Mapping):
            for keyword, sub in names.items():
                out[_policy_key(f"{raw}.{keyword}")] = _key_list(sub)
        else:
            out[_policy_key(raw)] = _key_list(names)
    return FrozenMap(sorted(out.items()))
_millis = _integer(1, None, "a positive integer number of milliseconds")

_REPLICA = ("a list of further routers as \"host:port\" strings (tcp; \"[::1]:6510\" for "
            "IPv6), or ipc socket paths")


def _replicas(value: Any) -> Tuple[str, ...]:
    """``["host:port", ...]``: the installation's other routers (see :func:`split_replica`).

    The shape is checked here; whether an entry must be ``host:port`` (tcp)
    or a path (ipc) depends on ``protocol`` and is checked with it.
    """
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip()
                                                       for v in value):
        raise _Invalid(_REPLICA)
    out = tuple(v.strip() for v in value)
    if len(set(out)) != len(out):
        raise _Invalid(_REPLICA + ", each named once")
    return out


def split_replica(text: str) -> Tuple[str, int]:
    """``"host:port"`` -> (host, port); ``"[::1]:6510"`` -> ("::1", 6510); ValueError if bad."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host.strip() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port with a port 1..65535")
    return host.strip(), int(port)


def _option(default: Any, check: Check) -> Any:
    """A dataclass field carrying the check that validates its TOML value."""
    return field(default=default, metadata={"check": check})


# --------------------------------------------------------------------------
# The configuration objects
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ZmqConfig:
    """Section ``[zmq]``: what a dispatcher serves and advertises; client defaults."""

    host: str = _option("localhost", _host)
    protocol: str = _option("tcp", _choice("tcp", "ipc"))
    dispatch_port: int = _option(6511, _port)
    broadcast_port: int = _option(6512, _port)
    timeout: int = _option(5000, _millis)
    heartbeat: float = _option(1.0, _seconds)
    liveness: float = _option(3.0, _seconds)
    hwm: int = _option(100000, _integer(1, None, "an integer number of messages >= 1"))
    max_message_size: int = _option(
        16777216, _integer(1024, None, "an integer number of bytes >= 1024"))
    persist_dir: Optional[str] = _option(None, _path)
    xml_dir: Optional[str] = _option(None, _path)
    max_queued_writes: int = _option(
        100, _integer(0, None, "an integer number of requests >= 0"))


@dataclass(frozen=True)
class RouterConfig:
    """Section ``[zmq-router]``: where the router listens and what it hands out."""

    enable: bool = _option(True, _boolean)
    host: str = _option("localhost", _host)
    protocol: str = _option("tcp", _choice("tcp", "ipc"))
    port: int = _option(6510, _port)
    first_port: int = _option(6600, _port)
    last_port: int = _option(6700, _port)
    timeout: int = _option(1000, _millis)
    verbose: int = _option(0, _integer(0, 3, "an integer 0..3"))
    process: str = _option("thread", _choice("thread", "process"))
    allow_spawn: bool = _option(True, _boolean)
    state_file: Optional[str] = _option(None, _path)
    heartbeat: float = _option(2.0, _seconds)
    expiry: float = _option(10.0, _seconds)
    replicas: Tuple[str, ...] = _option((), _replicas)


@dataclass(frozen=True)
class SecurityConfig:
    """Section ``[zmq-security]``: CurveZMQ keys and who may write what (docs/security.rst)."""

    enable: bool = _option(False, _boolean)
    server_secret_key: Optional[str] = _option(None, _path)
    server_public_key: Optional[str] = _option(None, _path)
    client_secret_key: Optional[str] = _option(None, _path)
    authorized_keys: Optional[str] = _option(None, _path)
    admins: Tuple[str, ...] = _option((), _key_list)
    writers: FrozenMap = _option(FrozenMap(), _key_table)


Section = Union[ZmqConfig, RouterConfig, SecurityConfig]

#: TOML section name -> (dataclass, attribute of :class:`Config`).
SECTIONS: Dict[str, Tuple[Type[Any], str]] = {
    "zmq": (ZmqConfig, "zmq"),
    "zmq-router": (RouterConfig, "router"),
    "zmq-security": (SecurityConfig, "security"),
}


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration.  Immutable: use :meth:`replace`.

    ``source`` is the absolute path of the file it was read from (``None`` for
    the built-in defaults and for :func:`config_from_mapping`).  It does not
    take part in ``==``: two configurations with the same settings are equal
    wherever they came from.
    """

    zmq: ZmqConfig = ZmqConfig()
    router: RouterConfig = RouterConfig()
    security: SecurityConfig = SecurityConfig()
    source: Optional[str] = field(default=None, compare=False)

    def router_address(self) -> str:
        """The address clients and dispatchers connect to to reach the router.

        tcp: ``tcp://<connect_host(host)>:<port>``.  ipc: ``ipc://<host>``,
        the ``host`` key being the socket's path (``port`` is not used).
        """
        router = self.router
        if router.protocol == "ipc":
            return f"ipc://{router.host}"
        return endpoint(router.protocol, router.host, router.port, bind=False)

    def router_addresses(self) -> List[str]:
        """Every router of the installation: :meth:`router_address`, then ``replicas``.

        A replica that names this configuration's own router is left out, so
        every host of an installation can list all routers in ``replicas``.
        """
        router = self.router
        addresses = [self.router_address()]
        for text in router.replicas:
            if router.protocol == "ipc":
                address = f"ipc://{text}"
            else:
                host, port = split_replica(text)
                address = endpoint("tcp", host, port, bind=False)
            if address not in addresses:
                addresses.append(address)
        return addresses

    def replace(self, **sections: Any) -> "Config":
        """A new, re-validated Config with some keys changed.

        ``cfg.replace(router={"port": 7000, "state-file": "/x"}, zmq={"host": "h"})``.
        Sections may be named ``zmq``, ``router`` or ``zmq_router``, ``security``
        or ``zmq_security``; keys may be
        spelled as in TOML (``first-port``) or as attributes (``first_port``);
        a section may also be given as a whole :class:`ZmqConfig`/:class:`RouterConfig`.
        """
        label = f"replace() on {self.source}" if self.source else "replace()"
        data = self.to_mapping(include_unset=True)
        for name, changes in sections.items():
            section = _replace_section_name(name, label)
            for key, value in _replace_changes(changes, section, label).items():
                data[section][key] = value
        return _from_mapping(data, label, self.source)

    def to_mapping(self, *, include_unset: bool = False) -> Dict[str, Dict[str, Any]]:
        """The settings as nested dicts with TOML-spelled sections and keys.

        Unset optional keys (``None``) are left out unless ``include_unset``,
        because TOML cannot spell ``None``.
        """
        return {name: _section_mapping(getattr(self, attr), include_unset)
                for name, (_cls, attr) in SECTIONS.items()}

    def to_toml(self) -> str:
        """The settings as a complete TOML file, e.g. for a spawned process's ``-c``."""
        lines: List[str] = []
        for name, body in self.to_mapping().items():
            if lines:
                lines.append("")
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in body.items())
        return "\n".join(lines) + "\n"


DEFAULT = Config()


# --------------------------------------------------------------------------
# Building a Config from nested mappings
# --------------------------------------------------------------------------

def _toml_key(name: str) -> str:
    return name.replace("_", "-")


def _fields_by_key(cls: Type[Any]) -> Dict[str, "dataclasses.Field[Any]"]:
    return {_toml_key(f.name): f for f in dataclasses.fields(cls)}


def _section_mapping(obj: Section, include_unset: bool = False) -> Dict[str, Any]:
    return {_toml_key(f.name): getattr(obj, f.name)
            for f in dataclasses.fields(obj)
            if include_unset or getattr(obj, f.name) is not None}


def _error(source: str, section: str, key: str, expected: str, value: Any) -> ConfigurationError:
    return ConfigurationError(
        f"{source}: [{section}] {key}: expected {expected}, got {value!r}",
        source=source, section=section, key=key)


def _suggest(word: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' for a near miss, else the list of what is allowed."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of " + ", ".join(repr(c) for c in choices)


def _unknown_key(source: str, section: str, key: str, value: Any,
                 known: Mapping[str, Any]) -> ConfigurationError:
    tables = [k for k, f in known.items() if isinstance(f.default, FrozenMap)]
    if isinstance(value, Mapping) and tables:
        hint = "the only sub-tables here are " + ", ".join(f"[{section}.{t}]" for t in tables)
    elif isinstance(value, Mapping):
        hint = f"sub-tables are not allowed; sections are {', '.join(f'[{s}]' for s in SECTIONS)}"
    else:
        hint = _suggest(key, known)
    return ConfigurationError(f"{source}: [{section}] {key}: unknown key; {hint}",
                              source=source, section=section, key=key)


def _build_section(cls: Type[Any], section: str, values: Mapping[Any, Any],
                   source: str) -> Section:
    """Check every key of one section and build its dataclass (defaults for the rest)."""
    known = _fields_by_key(cls)
    kwargs: Dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key)
        spec = known.get(key)
        if spec is None:
            raise _unknown_key(source, section, key, value, known)
        try:
            kwargs[spec.name] = spec.metadata["check"](value)
        except _Invalid as exc:
            raise _error(source, section, key, exc.expected, value) from None
    obj = cls(**kwargs)
    _CROSS_CHECKS[cls](obj, source)
    return obj


def _check_zmq(zmq: ZmqConfig, source: str) -> None:
    """Rules between [zmq] keys: a client must not declare a live dispatcher dead."""
    if zmq.liveness <= zmq.heartbeat:
        raise _error(source, "zmq", "liveness",
                     f"a number of seconds greater than heartbeat ({zmq.heartbeat!r})",
                     zmq.liveness)


def _check_router(router: RouterConfig, source: str) -> None:
    """Rules between [zmq-router] keys: a usable port range that spares the router."""
    section = "zmq-router"
    if router.first_port > router.last_port:
        raise _error(source, section, "first-port",
                     f"a port not above last-port ({router.last_port})", router.first_port)
    if router.last_port - router.first_port + 1 < 2:
        raise _error(source, section, "last-port",
                     f"a port above first-port ({router.first_port}), so that the range "
                     "holds at least one (dispatch, broadcast) pair", router.last_port)
    if router.first_port <= router.port <= router.last_port:
        raise _error(source, section, "port",
                     f"a port outside first-port..last-port ({router.first_port}.."
                     f"{router.last_port}), which the router hands out to dispatchers",
                     router.port)
    if router.expiry <= router.heartbeat:
        raise _error(source, section, "expiry",
                     f"a number of seconds greater than heartbeat ({router.heartbeat!r})",
                     router.expiry)
    if router.protocol == "tcp":
        for text in router.replicas:
            try:
                split_replica(text)
            except ValueError as exc:
                raise _error(source, section, "replicas", f"{_REPLICA}; {exc}",
                             list(router.replicas)) from None


def _check_security(security: SecurityConfig, source: str) -> None:
    """Access rules need client keys: without CurveZMQ nobody can be told apart."""
    if security.enable:
        return
    for key, empty in (("writers", "an empty table"), ("admins", "an empty list")):
        value = getattr(security, key)
        if value:
            shown = dict(value) if isinstance(value, Mapping) else list(value)
            raise _error(source, "zmq-security", key,
                         f"{empty} while enable = false (access rules name CurveZMQ client "
                         "keys, which exist only with security enabled)", shown)


_CROSS_CHECKS: Dict[Type[Any], Callable[[Any, str], None]] = {
    ZmqConfig: _check_zmq,
    RouterConfig: _check_router,
    SecurityConfig: _check_security,
}


def _split_sections(data: Any, source: str) -> Dict[str, Mapping[Any, Any]]:
    """Sort the top level into known sections; anything else is an error."""
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"{source}: expected a table of sections, got {type(data).__name__}", source=source)
    sections: Dict[str, Mapping[Any, Any]] = {}
    for raw_name, body in data.items():
        name = str(raw_name)
        if name in SECTIONS and isinstance(body, Mapping):
            sections[name] = body
        elif name in SECTIONS:
            raise ConfigurationError(
                f"{source}: [{name}]: expected a table of keys, got {body!r}",
                source=source, section=name)
        elif isinstance(body, Mapping):
            raise ConfigurationError(
                f"{source}: [{name}]: unknown section; {_suggest(name, SECTIONS)}",
                source=source, section=name)
        else:
            raise ConfigurationError(
                f"{source}: {name}: key outside any section (got {body!r}); keys belong "
                f"in {' or '.join(f'[{s}]' for s in SECTIONS)}",
                source=source, key=name)
    return sections


def _from_mapping(data: Any, label: str, source: Optional[str]) -> Config:
    """Validate nested mappings; ``label`` prefixes messages, ``source`` is stored."""
    sections = _split_sections(data, label)
    built = {attr: _build_section(cls, name, sections.get(name, {}), label)
             for name, (cls, attr) in SECTIONS.items()}
    return Config(source=source, **built)


def config_from_mapping(data: Mapping[str, Any], source: str = "<mapping>") -> Config:
    """Validate already-parsed data exactly as a file would be.

    ``data`` is ``{"zmq": {...}, "zmq-router": {...}}`` with TOML-spelled keys.
    ``source`` only labels error messages; the result's ``source`` is ``None``
    because it did not come from a file.
    """
    return _from_mapping(data, source, None)


_SECTION_ALIASES = {"zmq": "zmq", "router": "zmq-router",
                    "zmq_router": "zmq-router", "zmq-router": "zmq-router",
                    "security": "zmq-security", "zmq_security": "zmq-security",
                    "zmq-security": "zmq-security"}


def _replace_section_name(name: str, label: str) -> str:
    section = _SECTION_ALIASES.get(name)
    if section is None:
        raise ConfigurationError(
            f"{label}: [{name}]: unknown section; "
            f"{_suggest(name, ['zmq', 'router', 'security'])}",
            source=label, section=name)
    return section


def _replace_changes(changes: Any, section: str, label: str) -> Dict[str, Any]:
    """The changes for one section with keys in TOML spelling."""
    cls = SECTIONS[section][0]
    if isinstance(changes, cls):
        return _section_mapping(changes, include_unset=True)
    if not isinstance(changes, Mapping):
        raise ConfigurationError(
            f"{label}: [{section}]: expected a mapping of keys or a {cls.__name__}, "
            f"got {changes!r}", source=label, section=section)
    return {_toml_key(str(key)): value for key, value in changes.items()}


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

def load_config(path: Union[PathArg, Config, None] = None) -> Config:
    """The configuration to use: explicit path or Config, else $CAULDRON_ZMQ_CONFIG, else defaults.

    A file that was asked for but is missing is an error, never a silent
    fall-back to defaults: a dispatcher started with the wrong ports would
    register fine and then be unreachable.  An empty environment variable
    counts as unset.
    """
    if isinstance(path, Config):
        return path
    if path is not None:
        return _load_file(os.fsdecode(path), "")
    named = os.environ.get(ENV_VAR, "")
    if named.strip():
        return _load_file(named, f" (named by ${ENV_VAR})")
    return DEFAULT


def _load_file(path: str, origin: str) -> Config:
    """Read, parse and validate one TOML file; ``origin`` explains where the name came from."""
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(full):
        raise ConfigurationError(f"{full}: configuration file not found{origin}", source=full)
    if tomllib is None:
        raise ConfigurationError(
            f"{full}: reading TOML needs the 'tomli' package on Python < 3.11", source=full)
    try:
        with open(full, "rb") as stream:
            text = stream.read().decode("utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"{full}: cannot read configuration file{origin}: {exc.strerror or exc}",
            source=full) from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{full}: not UTF-8 text: {exc}", source=full) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # message ends "(at line N, column M)"
        raise ConfigurationError(f"{full}: TOML syntax error: {exc}", source=full) from exc
    return _from_mapping(data, full, full)


def _toml_value(value: Any) -> str:
    """A TOML literal for the few value types a configuration holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):    # an inline table, keys quoted
        return "{" + ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    """A TOML basic string; control characters (and DEL) must be escaped."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# --------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------

_LOOPBACK = "127.0.0.1"


def connect_host(host: str) -> str:
    """The address to *connect* to for a configured host.

    ``localhost`` becomes 127.0.0.1 so that ZeroMQ neither resolves it to ::1
    (where nothing listens unless IPv6 is enabled) nor waits on a resolver;
    wildcard bind addresses (``*``, ``0.0.0.0``) are reached via loopback.
    """
    if host.lower() == "localhost" or host in ("*", "0.0.0.0"):
        return _LOOPBACK
    return host


def bind_host(host: str) -> str:
    """The address to *bind* for a configured host.

    ``localhost`` binds loopback only (127.0.0.1); ``*`` binds all interfaces;
    any other name or address (127.x.y.z included) is bound as given.
    """
    if host.lower() == "localhost":
        return _LOOPBACK
    return host


def endpoint(protocol: str, host: str, port: int, *, bind: bool) -> str:
    """A ZeroMQ endpoint for bind (``bind=True``) or connect.

    tcp: ``tcp://<host>:<port>`` through :func:`bind_host`/:func:`connect_host`
    (IPv6 literals get brackets).  ipc: ``ipc://<host>-<port>``, the host being
    a path prefix, so several sockets can share one prefix.
    """
    if protocol == "ipc":
        return f"ipc://{host}-{port}"
    if protocol != "tcp":
        raise ConfigurationError(f"protocol: expected 'tcp' or 'ipc', got {protocol!r}",
                                 key="protocol")
    address = bind_host(host) if bind else connect_host(host)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"tcp://{address}:{port}"
