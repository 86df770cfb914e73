"""KTL XML keyword bundles: file → keyword declarations (pure: no service, no sockets).

A KTL service declares its keywords in XML files, one ``<bundle>`` per file,
conventionally under ``$RELDIR/data/<service>/``::

    <bundle name="wheel" service="demo">
      <dispatcher><name>demo_dispatch_1</name></dispatcher>
      <keyword>
        <name>FILTNAME</name>
        <type>enumerated</type>
        <help level="brief">Filter in the beam</help>
        <capability type="write">True</capability>
        <values>
          <entry><key>2</key><value>Red</value></entry>
          <entry><key>0</key><value>Clear</value></entry>
        </values>
      </keyword>
    </bundle>

:func:`read_bundle` turns one file into a :class:`Bundle` of
:class:`Declaration`\\ s; :func:`bundle_files` finds the files of a service in
a directory; :func:`load_declarations` reads several and refuses a keyword
declared twice.  Every problem is a
:class:`~cauldron_zmq.errors.ConfigurationError` naming the file, the keyword
and the element, raised before any keyword exists.

The parser is the standard library's ``xml.etree``; ``defusedxml`` is not a
dependency, so a document type declaration or an entity declaration (the
vehicle of "billion laughs" expansion and external entities) is refused
outright: KTL bundles never use them.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from urllib.parse import urlparse
from xml.etree import ElementInclude
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from .errors import ConfigurationError, ConversionError
from .types import keyword_type

__all__ = ["Declaration", "Bundle", "XML_TYPES", "read_bundle", "parse_bundle",
           "bundle_files", "load_declarations", "service_directory", "is_bundle_path"]

PathArg = Union[str, "os.PathLike[str]"]

#: KTL XML type names → cauldron_zmq type names.  ``enumm`` (an enumerated
#: keyword that holds several enumerators at once) is a mask of named bits.
XML_TYPES: Dict[str, str] = {
    "boolean": "boolean", "integer": "integer", "int": "integer",
    "double": "double", "float": "double", "string": "string",
    "enumerated": "enumerated", "enum": "enumerated", "enumm": "mask", "mask": "mask",
    "integer array": "integer-array", "int array": "integer-array",
    "double array": "double-array", "float array": "double-array",
}
_NUMERIC = ("integer", "double", "integer-array", "double-array")
_WITH_VALUES = ("boolean", "enumerated", "mask")
_TRUE = frozenset(("true", "yes", "1"))
_FALSE = frozenset(("false", "no", "0"))
_DANGEROUS = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
MAX_BYTES = 64 * 1024 * 1024       # a bundle is kilobytes; refuse to slurp anything huge


@dataclass(frozen=True)
class Declaration:
    """One ``<keyword>`` of a bundle, validated.

    ``enumerators`` are (key, name) pairs (bits, for a mask); ``labels`` the
    array element labels by index (their number is the array's length);
    ``serverside`` the ``<serverside>`` settings as text (of an element with
    a ``<value>``, that: ``<initialize><value>3</value><x>y</x></initialize>``
    is ``("initialize", "3")``).
    """

    name: str
    type: str
    source: str
    units: Optional[str] = None
    format: Optional[str] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    enumerators: Optional[Tuple[Tuple[int, str], ...]] = None
    readonly: bool = False
    writeonly: bool = False
    brief: Optional[str] = None
    verbose: Optional[str] = None
    labels: Optional[Tuple[str, ...]] = None
    serverside: Tuple[Tuple[str, str], ...] = field(default=())
    dispatcher: Optional[str] = None      # the bundle's <dispatcher><name>

    @property
    def initial(self) -> Optional[str]:
        """``<serverside><initialize><value>``: the initial value KTL gives, as text."""
        return self.serverside_value("initialize")

    def serverside_value(self, name: str) -> Optional[str]:
        """A ``<serverside>`` setting by element name (exact, else ignoring case)."""
        for key, value in self.serverside:
            if key == name:
                return value
        folded = name.casefold()
        for key, value in self.serverside:
            if key.casefold() == folded:
                return value
        return None


@dataclass(frozen=True)
class Bundle:
    """One file: its ``<bundle>`` attributes and its keywords in file order."""

    source: str
    name: Optional[str]
    service: Optional[str]
    dispatcher: Optional[str]
    keywords: Tuple[Declaration, ...]


class _Where:
    """File and keyword an error names."""

    def __init__(self, source: str, keyword: str = "") -> None:
        self.source = source
        self.keyword = keyword

    def error(self, element: Optional[str], message: str) -> ConfigurationError:
        parts = [self.source]
        if self.keyword:
            parts.append(f"keyword {self.keyword}")
        if element:
            parts.append(f"<{element}>")
        return ConfigurationError(": ".join(parts + [message]), source=self.source,
                                  section=self.keyword or None, key=element)


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------

def read_bundle(path: PathArg) -> Bundle:
    """Read and validate one bundle file."""
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    where = _Where(full)
    try:
        with open(full, "rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise where.error(None, "KTL XML file not found") from None
    except OSError as exc:
        raise where.error(None, f"cannot read KTL XML file: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise where.error(None, f"larger than {MAX_BYTES} bytes; not a keyword bundle")
    return parse_bundle(data, full)


def _parse(raw: bytes, where: _Where) -> ET.Element:
    """One document, refusing DOCTYPE/ENTITY declarations."""
    found = _DANGEROUS.search(raw)
    if found:
        raise where.error(None, f"<!{found.group(1).decode().upper()}> declarations are "
                                "refused (KTL bundles have none; they allow entity expansion)")
    try:
        return ET.fromstring(raw)
    except ET.ParseError as exc:
        raise where.error(None, f"malformed XML: {exc}") from None


def _include(root: ET.Element, source: str) -> None:
    """Resolve ``<xi:include href="...">`` (local files, relative to the including one)."""
    def loader(href: str, parse: str, encoding: Optional[str] = None) -> Any:
        scheme = urlparse(href).scheme
        if scheme not in ("", "file"):
            raise _Where(source).error("xi:include", f"href {href!r}: only local files")
        path = urlparse(href).path if scheme == "file" else href
        where = _Where(os.path.abspath(path))
        try:
            with open(path, "rb") as stream:
                raw = stream.read(MAX_BYTES + 1)
        except OSError as exc:
            raise _Where(source).error("xi:include", f"cannot read {path}: "
                                                     f"{exc.strerror or exc}") from None
        if len(raw) > MAX_BYTES:
            raise where.error(None, f"larger than {MAX_BYTES} bytes")
        if parse == "xml":
            return _parse(raw, where)
        return raw.decode(encoding or "utf-8")

    try:
        ElementInclude.include(root, loader=loader, base_url=source, max_depth=6)
    except ElementInclude.FatalIncludeError as exc:
        raise _Where(source).error("xi:include", str(exc)) from None


def _keyword_elements(root: ET.Element) -> List[ET.Element]:
    """The bundle's keywords, and those of bundles included into it."""
    out: List[ET.Element] = []
    for element in root:
        if element.tag == "keyword":
            out.append(element)
        elif element.tag == "bundle":
            out.extend(_keyword_elements(element))
    return out


def parse_bundle(data: Union[bytes, str], source: str = "<xml>") -> Bundle:
    """Validate the text of one bundle; ``source`` names it in errors.

    XInclude (``<xi:include href="common.xml"/>``) is resolved for local
    files relative to ``source``; an included file may hold a ``<keyword>``
    or a ``<bundle>`` of them.
    """
    where = _Where(source)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    root = _parse(raw, where)
    if root.tag != "bundle":
        raise where.error(root.tag, "expected a <bundle> at the top")
    _include(root, source)
    dispatcher = root.find("dispatcher")
    dispatcher_name = _text(dispatcher.find("name")) if dispatcher is not None else None
    declarations: Dict[str, Declaration] = {}
    for element in _keyword_elements(root):
        declaration = _keyword(element, source, dispatcher_name or None)
        if declaration.name in declarations:
            raise _Where(source, declaration.name).error(
                "name", "declared twice in this bundle (names are case-insensitive)")
        declarations[declaration.name] = declaration
    return Bundle(source=source, name=root.get("name"), service=root.get("service"),
                  dispatcher=dispatcher_name or None, keywords=tuple(declarations.values()))


def bundle_files(path: PathArg, service: Optional[str] = None) -> List[str]:
    """The bundle files ``path`` stands for, sorted.

    A file is itself.  A directory holding a folder named after ``service``
    stands for that folder's ``*.xml``; any other directory for its own
    ``*.xml`` (those declaring another service are dropped later, by
    :func:`load_declarations`).  A missing path is an error.
    """
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isfile(full):
        return [full]
    if not os.path.isdir(full):
        raise ConfigurationError(f"{full}: no such KTL XML file or directory", source=full)
    if service:
        for entry in sorted(os.listdir(full)):
            sub = os.path.join(full, entry)
            if entry.lower() == service.lower() and os.path.isdir(sub):
                full = sub
                break
    return sorted(os.path.join(full, entry) for entry in os.listdir(full)
                  if entry.lower().endswith(".xml") and os.path.isfile(os.path.join(full, entry)))


def is_bundle_path(path: PathArg) -> bool:
    """Whether ``path`` names KTL XML: a directory, a ``*.xml`` name, or a file starting ``<``."""
    name = os.fspath(path)
    if os.path.isdir(name) or name.lower().endswith(".xml"):
        return True
    try:
        with open(name, "rb") as stream:
            return stream.read(64).lstrip().startswith(b"<")
    except OSError:
        return False      # whoever reads it as a keyword file says what is wrong


def service_directory(service: str, environ: Optional[Dict[str, str]] = None) -> Optional[str]:
    """KTL's per-service data directory, ``$RELDIR/data/<service>``, if it exists."""
    env = os.environ if environ is None else environ
    reldir = env.get("RELDIR", "").strip()
    if not reldir:
        return None
    data = os.path.join(os.path.expanduser(reldir), "data")
    path = os.path.join(data, service)
    if os.path.isdir(path):
        return path
    try:                                  # a folder spelt in another case
        for entry in sorted(os.listdir(data)):
            if entry.lower() == service.lower() and os.path.isdir(os.path.join(data, entry)):
                return os.path.join(data, entry)
    except OSError:
        pass
    return None


def load_declarations(paths: Iterable[PathArg], service: Optional[str] = None
                      ) -> Dict[str, Declaration]:
    """Every keyword of the bundles at ``paths`` (files or directories), by name.

    In a directory that is not the service's own folder, a bundle whose
    ``service`` attribute names another service is skipped; a file named
    explicitly is always read.  A keyword declared in two bundles is an error.
    """
    out: Dict[str, Declaration] = {}
    for path in paths:
        explicit = os.path.isfile(os.path.expanduser(os.fspath(path)))
        for name in bundle_files(path, service):
            bundle = read_bundle(name)
            if (not explicit and service and bundle.service
                    and bundle.service.strip().lower() != service.lower()
                    and os.path.basename(os.path.dirname(name)).lower() != service.lower()):
                continue
            for declaration in bundle.keywords:
                if declaration.name in out:
                    raise _Where(name, declaration.name).error(
                        "name", f"also declared in {out[declaration.name].source}")
                out[declaration.name] = declaration
    return out


# --------------------------------------------------------------------------
# one keyword
# --------------------------------------------------------------------------

def _keyword(element: ET.Element, source: str, dispatcher: Optional[str]) -> Declaration:
    name = _text(element.find("name"))
    if not name:
        raise _Where(source).error("keyword", "a <keyword> without a <name>")
    name = name.upper()
    where = _Where(source, name)
    if any(c.isspace() for c in name):
        raise where.error("name", f"{name!r} contains whitespace")
    kind = _type(element, where)
    readonly, writeonly = _capabilities(element, where)
    minimum, maximum = _range(element, kind, where)
    enumerators = _values(element, kind, where)
    try:
        keyword_type(kind, name=name, minimum=minimum, maximum=maximum,
                     enumerators=list(enumerators) if enumerators else None)
    except ConversionError as exc:
        raise where.error("values" if "enumerator" in str(exc) or "bit" in str(exc)
                          else "range", str(exc)) from None
    brief, verbose = _help(element)
    return Declaration(
        name=name, type=kind, source=source, units=_text(element.find("units")) or None,
        format=_format(element, kind, where), minimum=minimum, maximum=maximum,
        enumerators=enumerators, readonly=readonly, writeonly=writeonly, brief=brief,
        verbose=verbose, labels=_labels(element, kind, where),
        serverside=_serverside(element), dispatcher=dispatcher)


def _text(element: Optional[ET.Element]) -> Optional[str]:
    if element is None:
        return None
    return "".join(element.itertext()).strip()


def _type(element: ET.Element, where: _Where) -> str:
    text = _text(element.find("type"))
    if not text:
        raise where.error("type", "missing; expected one of " + ", ".join(sorted(XML_TYPES)))
    key = " ".join(text.lower().replace("_", " ").split())
    if key.startswith("ktl "):
        key = key[4:]
    if key not in XML_TYPES:
        raise where.error("type", f"unknown type {text!r}; expected one of "
                                  + ", ".join(sorted(XML_TYPES)))
    return XML_TYPES[key]


def _flag(text: Optional[str], where: _Where, element: str) -> bool:
    word = (text or "").strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise where.error(element, f"expected True or False, got {text!r}")


def _capabilities(element: ET.Element, where: _Where) -> Tuple[bool, bool]:
    """(readonly, writeonly); an absent capability is allowed."""
    can = {"read": True, "write": True}
    for cap in element.findall("capability"):
        which = (cap.get("type") or "").strip().lower()
        if which not in can:
            raise where.error("capability", f"type={cap.get('type')!r}; expected 'read' or "
                                            "'write'")
        can[which] = _flag(_text(cap), where, f"capability type=\"{which}\"")
    if not can["read"] and not can["write"]:
        raise where.error("capability", "neither readable nor writable")
    return not can["write"], not can["read"]


def _number(text: Optional[str], kind: str, where: _Where, element: str) -> Optional[float]:
    if text is None or not text.strip():
        return None
    try:
        if kind.startswith("integer"):
            return int(text.strip(), 0)
        return float(text.strip())
    except ValueError:
        raise where.error(element, f"{text.strip()!r} is not a number") from None


Bounds = Tuple[Optional[float], Optional[float]]


def _range(element: ET.Element, kind: str, where: _Where) -> Bounds:
    rng = element.find("range")
    if rng is None:
        return None, None
    if kind not in _NUMERIC:
        raise where.error("range", f"a {kind} keyword has no range")
    minimum = _number(_text(rng.find("minimum")), kind, where, "range/minimum")
    maximum = _number(_text(rng.find("maximum")), kind, where, "range/maximum")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise where.error("range", f"minimum {minimum!r} is above maximum {maximum!r}")
    return minimum, maximum


def _values(element: ET.Element, kind: str, where: _Where) -> Optional[Tuple[Tuple[int, str], ...]]:
    values = element.find("values")
    if values is None:
        if kind in ("enumerated", "mask"):
            raise where.error("values", f"missing; {'an' if kind[0] in 'aeiou' else 'a'} "
                                        f"{kind} keyword needs <entry> elements")
        return None
    if kind not in _WITH_VALUES:
        raise where.error("values", f"a {kind} keyword has no enumerators")
    pairs: List[Tuple[int, str]] = []
    for entry in values.findall("entry"):
        key, name = _text(entry.find("key")), _text(entry.find("value"))
        if key is None or name is None or not name:
            raise where.error("values/entry", "an <entry> needs a <key> and a non-empty "
                                              "<value>")
        try:
            number = int(key, 0)
        except ValueError:
            raise where.error("values/entry/key", f"{key!r} is not an integer") from None
        pairs.append((number, " ".join(name.split()) if "\n" in name else name))
    if not pairs:
        raise where.error("values", "no <entry> elements")
    return tuple(sorted(pairs))


def _help(element: ET.Element) -> Tuple[Optional[str], Optional[str]]:
    brief = verbose = None
    for item in element.findall("help"):
        text = " ".join((_text(item) or "").split()) or None
        if (item.get("level") or "brief").strip().lower() == "verbose":
            verbose = verbose or text
        else:
            brief = brief or text
    return brief, verbose


def _format(element: ET.Element, kind: str, where: _Where) -> Optional[str]:
    fmt = _text(element.find("format"))
    if not fmt:
        return None
    sample: Any = 1 if kind.startswith("integer") else 1.5
    if kind in ("string",):
        sample = "x"
    try:
        fmt % sample
    except (TypeError, ValueError) as exc:
        raise where.error("format", f"{fmt!r} is not a printf format for a {kind}: "
                                    f"{exc}") from None
    return fmt


def _labels(element: ET.Element, kind: str, where: _Where) -> Optional[Tuple[str, ...]]:
    elements = element.find("elements")
    if elements is None:
        return None
    if not kind.endswith("-array"):
        raise where.error("elements", f"a {kind} keyword has no array elements")
    by_index: Dict[int, str] = {}
    for entry in elements.findall("entry"):
        index = _text(entry.find("index"))
        try:
            number = int(index or "")
        except ValueError:
            raise where.error("elements/entry/index", f"{index!r} is not an integer") from None
        if number in by_index:
            raise where.error("elements/entry/index", f"index {number} appears twice")
        by_index[number] = _text(entry.find("label")) or ""
    if sorted(by_index) != list(range(len(by_index))):
        raise where.error("elements", f"indices {sorted(by_index)} are not 0..{len(by_index) - 1}")
    return tuple(by_index[i] for i in range(len(by_index))) or None


def _serverside(element: ET.Element) -> Tuple[Tuple[str, str], ...]:
    block = element.find("serverside")
    if block is None:
        return ()
    pairs = []
    for child in block:       # <initialize><value>3</value></initialize> is "3"
        inner = child.find("value")
        pairs.append((child.tag, _text(inner if inner is not None else child) or ""))
    return tuple(pairs)

