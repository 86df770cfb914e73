"""DFW: the dispatcher API with the names KTL's Python DFW module uses.

``DFW.Service`` is a keyword service; ``DFW.Keyword`` is the module of
keyword classes (``DFW.Keyword.Integer(...)``), whose classes are also
available here (``DFW.Integer``).  See ``docs/dispatcher.rst``.

Example::

    from cauldron_zmq import DFW

    def setup(service):
        DFW.Keyword.Double("TEMP", service, initial=20.0, units="degC")
        DFW.Keyword.Integer("COUNT", service, initial=0, write=counter.reset)

    with DFW.Service("mysvc", setup=setup) as service:
        service.serve_forever()
"""
from __future__ import annotations

from ..dispatcher import DEFAULT_DISPATCHER, BindError, Service
from ..errors import NoWriteNecessary
from . import Keyword
from .Keyword import (Basic, Boolean, Double, DoubleArray, Enumerated, Float, Integer,
                      IntegerArray, Mask, String, types)

__all__ = [
    "Service", "Keyword", "Basic", "Boolean", "Integer", "Double", "Float", "String",
    "Enumerated", "Mask", "IntegerArray", "DoubleArray", "types", "NoWriteNecessary",
    "DEFAULT_DISPATCHER", "BindError",
]
