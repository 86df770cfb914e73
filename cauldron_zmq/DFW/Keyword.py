"""``DFW.Keyword``: the keyword classes, as KTL's ``DFW.Keyword`` module names them.

``Keyword`` (alias ``Basic``) is the generic string keyword and the base
class to subclass for custom hooks; ``types`` maps type names to classes.
The implementation lives in :mod:`cauldron_zmq.keywords`.
"""
from __future__ import annotations

from ..errors import NoWriteNecessary
from ..keywords import (HOOKS, MAX_PERIODIC_FAILURES, Basic, Boolean, Double, DoubleArray,
                        Enumerated, Float, Integer, IntegerArray, Keyword, Mask, String,
                        keyword_class, types)

__all__ = [
    "Keyword", "Basic", "Boolean", "Integer", "Double", "Float", "String", "Enumerated",
    "Mask", "IntegerArray", "DoubleArray", "types", "keyword_class", "HOOKS",
    "MAX_PERIODIC_FAILURES", "NoWriteNecessary",
]
