"""DFW: the dispatcher API with the names and meanings of KTL's Python DFW module.

``DFW.Service`` is a keyword service; ``DFW.Keyword`` is the module of
keyword classes (``DFW.Keyword.Integer(...)``), whose classes are also
available here (``DFW.Integer``).  See ``docs/dispatcher.rst``.

As KTL's, a ``DFW.Service``:

* **starts serving when constructed** (``start=False`` constructs without
  starting; ``begin()`` then starts it, and is harmless on a started one);
* takes KTL's own configuration file (a ``stdiosvc.conf``) as ``config``:
  a file that is not TOML is logged and cauldron_zmq's configuration comes
  from ``$CAULDRON_ZMQ_CONFIG`` or the defaults; a TOML file is a
  cauldron_zmq configuration;
* gives values as ascii strings (``values="ascii"``; ``values="native"``
  for typed values, or use :class:`cauldron_zmq.dispatcher.Service`);
* reads the KTL XML of its service (``xml=``, ``[zmq] xml-dir`` or
  ``$RELDIR/data/<service>/``).

A dispatcher as KTL's are written::

    import time
    from cauldron_zmq import DFW

    class Lamp(DFW.Keyword.Boolean):
        def write(self, value):
            if value == '1':
                lamp.on()
            else:
                lamp.off()

    def setup(service):
        Lamp("LAMPON", service)
        DFW.Keyword.Enumerated("MODE", service, "initializing")   # names from the XML

    service = DFW.Service("demo", "stdiosvc.conf", setup)
    while True:
        time.sleep(1)
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence, Union

from .. import dispatcher as _dispatcher
from ..config import ENV_VAR, Config
from ..dispatcher import DEFAULT_DISPATCHER, BindError
from ..errors import NoWriteNecessary
from . import Keyword
from .Keyword import (Basic, Boolean, Double, DoubleArray, Enumerated, Float, Integer,
                      IntegerArray, Mask, String, types)

__all__ = [
    "Service", "Keyword", "Basic", "Boolean", "Integer", "Double", "Float", "String",
    "Enumerated", "Mask", "IntegerArray", "DoubleArray", "types", "NoWriteNecessary",
    "DEFAULT_DISPATCHER", "BindError", "ktl_config",
]

PathLike = Union[str, "os.PathLike[str]"]
_log = logging.getLogger("cauldron_zmq.DFW")


class Service(_dispatcher.Service):
    """KTL's ``DFW.Service(name, config, setup)``: serving once constructed.

    ``config`` is KTL's configuration file (see :func:`ktl_config`), a
    cauldron_zmq TOML file or :class:`~cauldron_zmq.config.Config`, or None.
    ``start=False`` constructs without serving (tests, or to add keywords
    first); call :meth:`begin` (or use ``with``) later.  ``values`` is
    ``"ascii"`` (KTL's, the default) or ``"native"``.  The other arguments are
    those of :class:`cauldron_zmq.dispatcher.Service`.
    """

    def __init__(self, name: str, config: Union[PathLike, Config, None] = None,
                 setup: Optional[Callable[["Service"], Any]] = None,
                 dispatcher: Optional[str] = None,
                 keywords: Union[PathLike, Sequence[PathLike], None] = None, *,
                 values: str = "ascii",
                 xml: Union[PathLike, Sequence[PathLike], None] = None,
                 start: bool = True) -> None:
        super().__init__(name, ktl_config(config), setup, dispatcher, keywords,
                         values=values, xml=xml)
        if start:
            self.begin()


def ktl_config(config: Any) -> Union[PathLike, Config, None]:
    """``config`` as cauldron_zmq reads it: a KTL (non-TOML) file becomes None.

    A dispatcher written for KTL passes KTL's own configuration (a
    ``stdiosvc.conf``), which this project does not need; one log line names
    it and says where cauldron_zmq's configuration comes from instead.  A
    missing file is left for :func:`~cauldron_zmq.config.load_config` to
    refuse; a TOML file (even a wrong one) keeps its meaning.  A file is
    KTL's when it does not parse as TOML, or when its name does not end
    ``.toml`` and it has no ``[zmq]``, ``[zmq-router]`` or ``[zmq-security]``
    section.
    """
    if config is None or isinstance(config, Config):
        return config
    if isinstance(config, (str, bytes, os.PathLike)):
        what: Any = os.path.abspath(os.path.expanduser(os.fsdecode(config)))
        if _is_toml(what):
            return config
        what = f"{what} is a KTL configuration (not TOML)"
    else:                  # the original Cauldron also took a ConfigParser
        what = f"a {type(config).__name__} is a KTL/Cauldron configuration object"
    named = os.environ.get(ENV_VAR, "").strip()
    source = f"${ENV_VAR} ({named})" if named else "the built-in defaults"
    _log.warning("%s, which cauldron_zmq does not need; its own configuration comes from %s",
                 what, source)
    return None


def _is_toml(path: str) -> bool:
    """Whether ``path`` is a cauldron_zmq TOML file; True when unsure (missing, unreadable).

    Not TOML: it does not parse as TOML, or its name does not end ``.toml``
    and it has none of cauldron_zmq's sections (a KTL file of comments only,
    or of ``key = 1`` lines, parses as TOML).
    """
    from ..config import SECTIONS, tomllib
    if tomllib is None or not os.path.isfile(path):
        return True
    try:
        with open(path, "rb") as stream:
            data = tomllib.loads(stream.read().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    except OSError:
        return True
    return path.lower().endswith(".toml") or any(name in SECTIONS for name in data)
