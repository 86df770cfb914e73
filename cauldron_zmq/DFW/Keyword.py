"""``DFW.Keyword``: the keyword classes, as KTL's ``DFW.Keyword`` module names them.

``Basic`` (also ``Keyword``) is the generic keyword, whose type comes from
the service's KTL XML, and the base class of every typed class and of the
classes to subclass for custom hooks; ``types`` maps type names to classes.
The implementation lives in :mod:`cauldron_zmq.keywords`.
"""
from __future__ import annotations

from ..errors import NoWriteNecessary
from ..keywords import (HOOKS, MAX_PERIODIC_FAILURES, AsciiValue, Basic, Boolean, Double,
                        DoubleArray, DuplicateKeyword, EnumeratorMapping, Enumerated, Float,
                        Integer, IntegerArray, Keyword, Mask, String, keyword_class, types)

__all__ = [
    "Keyword", "Basic", "Boolean", "Integer", "Double", "Float", "String", "Enumerated",
    "Mask", "IntegerArray", "DoubleArray", "types", "keyword_class", "HOOKS",
    "MAX_PERIODIC_FAILURES", "NoWriteNecessary", "AsciiValue", "EnumeratorMapping",
    "DuplicateKeyword",
]
