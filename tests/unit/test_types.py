"""Tests for cauldron_zmq.types: native <-> ascii <-> wire conversions."""
from __future__ import annotations

import json
import math
import pickle
import struct
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cauldron_zmq import types as ktypes
from cauldron_zmq.errors import ConversionError
from cauldron_zmq.types import (INT32_MAX, INT32_MIN, TYPE_NAMES, KeywordType,
                                keyword_type)

NAN = float("nan")
INF = float("inf")

MODE = keyword_type("enumerated", name="mode", enumerators=["Open", "Closed"])
FLAGS = keyword_type("mask", name="flags", enumerators=["a", "b", "not ready"])


def same(a, b) -> bool:
    """Equality that also checks the type and treats NaN as equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def refused(kt: KeywordType, value, *fragments: str) -> str:
    """Assert coerce() refuses ``value`` with a message holding every fragment."""
    with pytest.raises(ConversionError) as info:
        kt.coerce(value)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert isinstance(info.value, ValueError)
    return message


# ---------------------------------------------------------------------------
# type names and construction
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("alias, canonical", [
    ("boolean", "boolean"), ("bool", "boolean"), ("BOOL", "boolean"),
    ("integer", "integer"), ("int", "integer"), ("KTL_INTEGER", "integer"),
    ("double", "double"), ("float", "double"), ("KTL_DOUBLE", "double"),
    ("string", "string"), ("str", "string"),
    ("enumerated", "enumerated"), ("enum", "enumerated"),
    ("mask", "mask"),
    ("integer-array", "integer-array"), ("integer array", "integer-array"),
    ("KTL_INTEGER_ARRAY", "integer-array"), ("int array", "integer-array"),
    ("double-array", "double-array"), ("double array", "double-array"),
    ("float array", "double-array"),
])
def test_type_aliases(alias, canonical):
    enumerators = ["x"] if canonical in ("enumerated", "mask") else None
    kt = keyword_type(alias, enumerators=enumerators)
    assert kt.type == canonical
    assert kt.type in TYPE_NAMES


@pytest.mark.parametrize("name, ktl", [
    ("boolean", "KTL_BOOLEAN"), ("integer", "KTL_INTEGER"), ("double", "KTL_DOUBLE"),
    ("string", "KTL_STRING"), ("enumerated", "KTL_ENUMERATED"), ("mask", "KTL_MASK"),
    ("integer-array", "KTL_INTEGER_ARRAY"), ("double-array", "KTL_DOUBLE_ARRAY"),
])
def test_ktl_type(name, ktl):
    enumerators = ["x"] if name in ("enumerated", "mask") else None
    assert keyword_type(name, enumerators=enumerators).ktl_type == ktl


def test_unknown_type_is_refused():
    with pytest.raises(ConversionError, match=r"TEMP: 'quaternion' is not a keyword type"):
        keyword_type("quaternion", name="temp")


def test_name_is_upper_cased():
    assert keyword_type("double", name="temp").name == "TEMP"
    assert KeywordType("double").name == "?"


@pytest.mark.parametrize("kind, meta, fragment", [
    ("enumerated", {}, "needs enumerators"),
    ("mask", {}, "needs enumerators"),
    ("enumerated", {"enumerators": []}, "at least one enumerator"),
    ("enumerated", {"enumerators": ["Open", "Open"]}, "duplicate enumerator name 'Open'"),
    ("enumerated", {"enumerators": [(0, "a"), (0, "b")]}, "value 0 is given twice"),
    ("enumerated", {"enumerators": "Open, Closed"}, "must be a list of names or a mapping"),
    ("enumerated", {"enumerators": ["Open", " Closed"]}, "without surrounding whitespace"),
    ("enumerated", {"enumerators": ["Open", ""]}, "non-empty string"),
    ("enumerated", {"enumerators": {"x": "Open"}}, "is not an integer"),
    ("mask", {"enumerators": {32: "high"}}, "not in 0..31"),
    ("mask", {"enumerators": ["a,b"]}, "may not contain"),
    ("boolean", {"enumerators": ["no"]}, "exactly the values 0 and 1"),
    ("integer", {"enumerators": ["a"]}, "enumerators only apply"),
    ("string", {"minimum": 0}, "minimum only applies to numeric"),
    ("enumerated", {"maximum": 3, "enumerators": ["a"]}, "maximum only applies"),
    ("double", {"minimum": 5, "maximum": 1}, "minimum 5.0 is above the maximum 1.0"),
    ("double", {"minimum": "abc"}, "minimum 'abc' is not a number"),
    ("double", {"minimum": NAN}, "is not a number"),
    ("double", {"minimum": INF}, "would exclude every value"),
])
def test_bad_construction(kind, meta, fragment):
    with pytest.raises(ConversionError) as info:
        keyword_type(kind, name="kw", **meta)
    assert str(info.value).startswith("KW: ")
    assert fragment in str(info.value)


def test_enumerator_forms_normalise_alike():
    forms = [["Open", "Closed"], ("Open", "Closed"), {0: "Open", 1: "Closed"},
             {"1": "Closed", "0": "Open"}, [(1, "Closed"), (0, "Open")], [[0, "Open"], [1, "Closed"]]]
    types = [keyword_type("enum", name="mode", enumerators=form) for form in forms]
    assert all(kt == MODE for kt in types)
    assert MODE.enumerators == ((0, "Open"), (1, "Closed"))
    assert len({hash(kt) for kt in types}) == 1


def test_bounds_normalise():
    kt = keyword_type("integer", min="0", max=10.0)
    assert (kt.minimum, kt.maximum) == (0, 10)
    assert type(kt.minimum) is int
    kt = keyword_type("double", minimum=-INF, maximum=INF)
    assert (kt.minimum, kt.maximum) == (None, None)
    assert keyword_type("double", minimum=1).minimum == 1.0


def test_keyword_type_refuses_unknown_metadata():
    with pytest.raises(TypeError, match="unknown metadata 'units'"):
        keyword_type("double", units="K")
    with pytest.raises(TypeError, match="twice"):
        keyword_type("double", min=1, minimum=2)


def test_frozen_hashable_picklable():
    kt = keyword_type("enum", name="mode", enumerators={0: "Open", 5: "Closed"})
    with pytest.raises(Exception):
        kt.name = "X"  # type: ignore[misc]
    clone = pickle.loads(pickle.dumps(kt))
    assert clone == kt and hash(clone) == hash(kt)
    assert clone.coerce("closed") == 5


def test_describe_and_back():
    assert MODE.describe() == {"type": "enumerated", "min": None, "max": None,
                               "enumerators": ["Open", "Closed"]}
    sparse = keyword_type("enum", name="x", enumerators={0: "Open", 5: "Closed"})
    assert sparse.describe()["enumerators"] == [[0, "Open"], [5, "Closed"]]
    temp = keyword_type("double", name="temp", min=0, max=100)
    assert temp.describe() == {"type": "double", "min": 0.0, "max": 100.0, "enumerators": None}
    for kt in (MODE, sparse, temp, FLAGS):
        description = json.loads(json.dumps(kt.describe()))
        assert KeywordType.from_description(description, name=kt.name) == kt


# ---------------------------------------------------------------------------
# accepted inputs: value -> (native, ascii), table-driven per type
# ---------------------------------------------------------------------------

ACCEPTED = [
    # boolean
    ("boolean", {}, True, True, "1"),
    ("boolean", {}, False, False, "0"),
    ("boolean", {}, 1, True, "1"),
    ("boolean", {}, 0, False, "0"),
    ("boolean", {}, 1.0, True, "1"),
    ("boolean", {}, "1", True, "1"),
    ("boolean", {}, " 0 ", False, "0"),
    ("boolean", {}, "TRUE", True, "1"),
    ("boolean", {}, "f", False, "0"),
    ("boolean", {}, "Yes", True, "1"),
    ("boolean", {}, "n", False, "0"),
    ("boolean", {}, "on", True, "1"),
    ("boolean", {}, "OFF", False, "0"),
    ("boolean", {}, b"true", True, "1"),
    ("boolean", {"enumerators": ["Closed", "Open"]}, "open", True, "1"),
    ("boolean", {"enumerators": ["Closed", "Open"]}, "Closed", False, "0"),
    # integer
    ("integer", {}, 42, 42, "42"),
    ("integer", {}, "42", 42, "42"),
    ("integer", {}, " -7 ", -7, "-7"),
    ("integer", {}, "+7", 7, "7"),
    ("integer", {}, "4.0", 4, "4"),
    ("integer", {}, "0x1f", 31, "31"),
    ("integer", {}, "-0X1F", -31, "-31"),
    ("integer", {}, "1e3", 1000, "1000"),
    ("integer", {}, 2.0, 2, "2"),
    ("integer", {}, -0.0, 0, "0"),
    ("integer", {}, Fraction(6, 3), 2, "2"),
    ("integer", {}, Decimal("12.000"), 12, "12"),
    ("integer", {}, b"12", 12, "12"),
    ("integer", {}, INT32_MAX, INT32_MAX, "2147483647"),
    ("integer", {}, INT32_MIN, INT32_MIN, "-2147483648"),
    ("integer", {}, "2147483647", INT32_MAX, "2147483647"),
    ("integer", {"minimum": 0, "maximum": 10}, 0, 0, "0"),
    ("integer", {"minimum": 0, "maximum": 10}, 10, 10, "10"),
    # double
    ("double", {}, 1, 1.0, "1.0"),
    ("double", {}, 0.1, 0.1, "0.1"),
    ("double", {}, "0.1", 0.1, "0.1"),
    ("double", {}, " 2.5e3 ", 2500.0, "2500.0"),
    ("double", {}, "nan", NAN, "nan"),
    ("double", {}, "inf", INF, "inf"),
    ("double", {}, "-Infinity", -INF, "-inf"),
    ("double", {}, "0x10", 16.0, "16.0"),
    ("double", {}, Decimal("0.5"), 0.5, "0.5"),
    ("double", {}, Fraction(1, 4), 0.25, "0.25"),
    ("double", {}, 1e300, 1e300, "1e+300"),
    ("double", {}, -0.0, -0.0, "-0.0"),
    ("double", {"minimum": 0.0, "maximum": 100.0}, 100, 100.0, "100.0"),
    ("double", {"minimum": 0.0, "maximum": 100.0}, "0", 0.0, "0.0"),
    ("double", {"minimum": 0.0}, INF, INF, "inf"),
    # string
    ("string", {}, "hello", "hello", "hello"),
    ("string", {}, "  spaced  ", "  spaced  ", "  spaced  "),
    ("string", {}, "", "", ""),
    ("string", {}, b"caf\xc3\xa9", "café", "café"),
    ("string", {}, 12, "12", "12"),
    ("string", {}, 0.5, "0.5", "0.5"),
    # enumerated
    ("enumerated", {"enumerators": ["Open", "Closed"]}, "Open", 0, "Open"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, "closed", 1, "Closed"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, " CLOSED ", 1, "Closed"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, 1, 1, "Closed"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, 1.0, 1, "Closed"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, "1", 1, "Closed"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, b"Open", 0, "Open"),
    ("enumerated", {"enumerators": {0: "Open", 5: "Closed"}}, "Closed", 5, "Closed"),
    ("enumerated", {"enumerators": {0: "Open", 5: "Closed"}}, "5", 5, "Closed"),
    # exact match beats case-insensitive, and a name beats an integer string
    ("enumerated", {"enumerators": ["open", "Open"]}, "Open", 1, "Open"),
    ("enumerated", {"enumerators": ["1", "0"]}, "1", 0, "1"),
    ("enumerated", {"enumerators": ["Not Homed", "Homed"]}, "not homed", 0, "Not Homed"),
    # mask
    ("mask", {"enumerators": ["a", "b", "c"]}, 0, 0, ""),
    ("mask", {"enumerators": ["a", "b", "c"]}, "", 0, ""),
    ("mask", {"enumerators": ["a", "b", "c"]}, 5, 5, "a, c"),
    ("mask", {"enumerators": ["a", "b", "c"]}, "a, c", 5, "a, c"),
    ("mask", {"enumerators": ["a", "b", "c"]}, "c|a", 5, "a, c"),
    ("mask", {"enumerators": ["a", "b", "c"]}, "c a", 5, "a, c"),
    ("mask", {"enumerators": ["a", "b", "c"]}, " A , B ", 3, "a, b"),
    ("mask", {"enumerators": ["a", "b", "c"]}, "a, a", 1, "a"),
    ("mask", {"enumerators": ["a", "b", "c"]}, "0x5", 5, "a, c"),
    ("mask", {"enumerators": ["a", "b", "c"]}, "6", 6, "b, c"),
    ("mask", {"enumerators": ["a", "b", "c"]}, ["c", "a"], 5, "a, c"),
    ("mask", {"enumerators": ["a", "b", "c"]}, ("b",), 2, "b"),
    ("mask", {"enumerators": ["a", "b", "c"]}, [], 0, ""),
    ("mask", {"enumerators": {0: "ready", 4: "not ready"}}, "not ready", 16, "not ready"),
    ("mask", {"enumerators": {0: "ready", 4: "not ready"}}, "ready, not ready", 17, "ready, not ready"),
    # integer-array
    ("integer-array", {}, [1, 2, 3], [1, 2, 3], "1 2 3"),
    ("integer-array", {}, (1, 2.0, "3"), [1, 2, 3], "1 2 3"),
    ("integer-array", {}, "1 2 3", [1, 2, 3], "1 2 3"),
    ("integer-array", {}, "1,2, 3", [1, 2, 3], "1 2 3"),
    ("integer-array", {}, "[1, -2, 0x3]", [1, -2, 3], "1 -2 3"),
    ("integer-array", {}, "", [], ""),
    ("integer-array", {}, [], [], ""),
    ("integer-array", {}, range(3), [0, 1, 2], "0 1 2"),
    ("integer-array", {"minimum": 0, "maximum": 5}, [0, 5], [0, 5], "0 5"),
    # double-array
    ("double-array", {}, [1, 2.5], [1.0, 2.5], "1.0 2.5"),
    ("double-array", {}, "0.1, nan -inf", [0.1, NAN, -INF], "0.1 nan -inf"),
    ("double-array", {}, "\t1\n2 ", [1.0, 2.0], "1.0 2.0"),
    ("double-array", {}, ["nan", "inf"], [NAN, INF], "nan inf"),
    ("double-array", {}, "", [], ""),
]


@pytest.mark.parametrize("kind, meta, value, native, ascii", ACCEPTED)
def test_accepted(kind, meta, value, native, ascii):
    kt = keyword_type(kind, name="kw", **meta)
    got = kt.coerce(value)
    assert same(got, native), (got, native)
    assert kt.to_ascii(got) == ascii
    # the ascii form converts back to the same native value
    assert same(kt.parse_ascii(ascii), native)
    assert kt.equal(kt.coerce(ascii), native)


# ---------------------------------------------------------------------------
# refusals: the message names the keyword, the value (repr) and the rule
# ---------------------------------------------------------------------------

REFUSED = [
    ("boolean", {}, "", "KW: '' is not a boolean"),
    ("boolean", {}, "  ", "KW: '  ' is not a boolean"),
    ("boolean", {}, 2, "KW: 2 is not a boolean"),
    ("boolean", {}, -1, "KW: -1 is not a boolean"),
    ("boolean", {}, "01", "KW: '01' is not a boolean"),
    ("boolean", {}, "maybe", "KW: 'maybe' is not a boolean (expected 1/0, true/false"),
    ("boolean", {}, None, "KW: None is not a boolean"),
    ("boolean", {}, NAN, "KW: nan is not a boolean"),
    ("integer", {}, 2.5, "KW: 2.5 is not a whole number (integers are not truncated)"),
    ("integer", {}, "2.5", "KW: '2.5' is not a whole number (integers are not truncated)"),
    ("integer", {}, Fraction(5, 2), "is not a whole number"),
    ("integer", {}, "4.0000000000000000000001", "is not a whole number"),
    ("integer", {}, True, "KW: True is a boolean, not an integer"),
    ("integer", {}, INF, "KW: inf is not a finite number"),
    ("integer", {}, NAN, "KW: nan is not a finite number"),
    ("integer", {}, "nan", "KW: 'nan' is not a finite number"),
    ("integer", {}, "abc", "KW: 'abc' is not an integer"),
    ("integer", {}, "", "KW: '' is empty; expected an integer"),
    ("integer", {}, None, "KW: None is not an integer"),
    ("integer", {}, [1], "KW: [1] is not an integer"),
    ("integer", {}, INT32_MAX + 1,
     "KW: 2147483648 is above the maximum 2147483647 (the 32-bit KTL integer limit)"),
    ("integer", {}, INT32_MIN - 1,
     "KW: -2147483649 is below the minimum -2147483648 (the 32-bit KTL integer limit)"),
    ("integer", {}, "1e999999999", "KW: '1e999999999' is above the maximum 2147483647"),
    ("integer", {}, "9" * 5000, "is above the maximum 2147483647"),
    ("integer", {"maximum": 100}, 101, "KW: 101 is above the maximum 100"),
    ("integer", {"minimum": -5}, "-6", "KW: '-6' is below the minimum -5"),
    ("integer", {"minimum": -1e12}, -2 ** 40, "is below the minimum -2147483648 (the 32-bit"),
    ("double", {"maximum": 100.0}, 150.0, "KW: 150.0 is above the maximum 100.0"),
    ("double", {"minimum": 0.0}, "-0.5", "KW: '-0.5' is below the minimum 0.0"),
    ("double", {"maximum": 100}, INF, "KW: inf is above the maximum 100.0"),
    ("double", {"minimum": 0, "maximum": 100}, NAN,
     "KW: nan is not a number, so it cannot satisfy the range 0.0 to 100.0"),
    ("double", {"minimum": 0}, "nan", "KW: 'nan' is not a number, so it cannot satisfy the minimum 0.0"),
    ("double", {}, True, "KW: True is a boolean, not a number"),
    ("double", {}, "abc", "KW: 'abc' is not a number"),
    ("double", {}, "", "KW: '' is empty; expected a number"),
    ("double", {}, None, "KW: None is not a number"),
    ("double", {}, 1j, "KW: 1j is not a number"),
    ("double", {}, 10 ** 400, "is too large for a double"),
    ("string", {}, True, "KW: True is a boolean, not a string"),
    ("string", {}, None, "KW: None is not a string"),
    ("string", {}, ["a"], "KW: ['a'] is not a string"),
    ("string", {}, b"\xff", "KW: b'\\xff' is not valid UTF-8"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, "bogus",
     "KW: 'bogus' is not one of the enumerators 'Open', 'Closed'"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, "", "KW: '' is not one of the enumerators"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, 7,
     "KW: 7 is not one of the enumerator values 0 ('Open'), 1 ('Closed')"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, "7", "KW: '7' is not one of the enumerator values"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, 0.5, "KW: 0.5 is not a whole number"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, True, "KW: True is a boolean, not an enumerator"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, None, "KW: None is not an enumerator name or value"),
    ("enumerated", {"enumerators": ["Open", "OPEN"]}, "open",
     "KW: 'open' matches more than one enumerator ignoring case: 'Open', 'OPEN'"),
    ("mask", {"enumerators": ["a", "b"]}, "bogus", "KW: 'bogus' is not one of the bit names 'a', 'b'"),
    ("mask", {"enumerators": ["a", "b"]}, "a, bogus",
     "KW: 'a, bogus' contains 'bogus', which is not one of the bit names 'a', 'b'"),
    ("mask", {"enumerators": ["a", "b"]}, "a 3", "contains '3'"),
    ("mask", {"enumerators": ["a", "b"]}, ["a", "zz"], "contains 'zz', which is not one of the bit names"),
    ("mask", {"enumerators": ["a", "b"]}, [1], "contains 1"),
    ("mask", {"enumerators": ["a", "b"]}, 4,
     "KW: 4 sets bit 2, which is not one of the named bits 0 ('a'), 1 ('b')"),
    ("mask", {"enumerators": ["a", "b"]}, "0x8", "KW: '0x8' sets bit 3"),
    ("mask", {"enumerators": ["a", "b"]}, -1, "KW: -1 is negative; a mask is a non-negative bit pattern"),
    ("mask", {"enumerators": ["a", "b"]}, 1.5, "KW: 1.5 is not a whole number"),
    ("mask", {"enumerators": ["a", "b"]}, True, "KW: True is a boolean, not a mask"),
    ("mask", {"enumerators": ["a", "b"]}, None, "KW: None is not a mask"),
    ("integer-array", {}, [1, 2, 2.5], "KW[2]: 2.5 is not a whole number (integers are not truncated)"),
    ("integer-array", {}, "1 2 x", "KW[2]: 'x' is not an integer"),
    ("integer-array", {}, [1, True], "KW[1]: True is a boolean, not an integer"),
    ("integer-array", {}, [2 ** 31], "KW[0]: 2147483648 is above the maximum 2147483647"),
    ("integer-array", {"minimum": 0}, [3, -1], "KW[1]: -1 is below the minimum 0"),
    ("integer-array", {"maximum": 9}, "1, 10", "KW[1]: '10' is above the maximum 9"),
    ("integer-array", {}, 5, "KW: 5 is not a sequence of numbers"),
    ("integer-array", {}, None, "KW: None is not a sequence of numbers"),
    ("integer-array", {}, {"a": 1}, "is not a sequence of numbers"),
    ("double-array", {}, [1.0, "abc"], "KW[1]: 'abc' is not a number"),
    ("double-array", {"minimum": 0, "maximum": 1}, [0.5, NAN], "KW[1]: nan is not a number, so it cannot"),
    ("double-array", {"maximum": 1}, "0 2", "KW[1]: '2' is above the maximum 1.0"),
]


@pytest.mark.parametrize("kind, meta, value, fragment", REFUSED)
def test_refused(kind, meta, value, fragment):
    refused(keyword_type(kind, name="kw", **meta), value, fragment)


def test_long_values_are_shortened_in_messages():
    message = refused(keyword_type("integer", name="kw"), "x" * 500, "is not an integer")
    assert len(message) < 200


def test_parse_ascii_wants_text():
    assert keyword_type("integer").parse_ascii("5") == 5
    with pytest.raises(ConversionError, match="5 is not ascii text"):
        keyword_type("integer", name="kw").parse_ascii(5)


def test_to_ascii_of_unconverted_values():
    """to_ascii converts what it is given rather than formatting it wrongly."""
    assert keyword_type("boolean").to_ascii("0") == "0"
    assert keyword_type("double").to_ascii(2) == "2.0"
    assert keyword_type("integer-array").to_ascii((1, "2")) == "1 2"
    assert MODE.to_ascii("closed") == "Closed"


# ---------------------------------------------------------------------------
# wire form
# ---------------------------------------------------------------------------

WIRE = [
    ("boolean", {}, True, True),
    ("integer", {}, -7, -7),
    ("double", {}, 0.1, 0.1),
    ("double", {}, NAN, "nan"),
    ("double", {}, INF, "inf"),
    ("double", {}, -INF, "-inf"),
    ("string", {}, "x y", "x y"),
    ("enumerated", {"enumerators": ["Open", "Closed"]}, 1, 1),
    ("mask", {"enumerators": ["a", "b"]}, 3, 3),
    ("integer-array", {}, [1, 2], [1, 2]),
    ("double-array", {}, [1.5, NAN, -INF], [1.5, "nan", "-inf"]),
]


@pytest.mark.parametrize("kind, meta, native, wire", WIRE)
def test_wire(kind, meta, native, wire):
    kt = keyword_type(kind, name="kw", **meta)
    value, frame = kt.to_wire(native)
    assert frame is None
    assert same(value, wire)
    text = json.dumps(value, allow_nan=False)    # strictly valid JSON
    assert same(kt.from_wire(json.loads(text)), native)


def test_from_wire_checks_unless_told_not_to():
    temp = keyword_type("double", name="temp", maximum=100)
    with pytest.raises(ConversionError, match="above the maximum"):
        temp.from_wire(150.0)
    assert temp.from_wire(150.0, check=False) == 150.0
    assert MODE.from_wire(7, check=False) == 7
    assert MODE.to_ascii(7) == "7"
    assert FLAGS.from_wire(9, check=False) == 9
    assert FLAGS.to_ascii(9) == "a, 0x8"
    assert FLAGS.from_wire("a, 0x8", check=False) == 9
    assert keyword_type("integer").from_wire(2 ** 40, check=False) == 2 ** 40
    with pytest.raises(ConversionError, match="64-bit"):
        keyword_type("integer").from_wire(2 ** 64, check=False)
    # type rules still apply
    with pytest.raises(ConversionError, match="not a whole number"):
        keyword_type("integer").from_wire(2.5, check=False)


def test_from_wire_refuses_stray_frames():
    with pytest.raises(ConversionError, match="raw frame"):
        keyword_type("integer", name="kw").from_wire(5, b"\x00" * 8)
    with pytest.raises(ConversionError, match="needs a raw frame"):
        keyword_type("double-array", name="kw").from_wire({"dtype": "<f8", "shape": [1]})


@pytest.mark.parametrize("header, frame, fragment", [
    ({"dtype": "<c16", "shape": [1]}, b"\x00" * 16, "dtype '<c16' is not one of the supported"),
    ({"dtype": "<f1", "shape": [1]}, b"\x00", "does not exist"),
    ({"dtype": "<f8", "shape": [2]}, b"\x00" * 8, "the raw frame has 8 bytes, but 2 elements"),
    ({"dtype": "<f8", "shape": [1, 1]}, b"\x00" * 8, "is not one-dimensional"),
    ({"dtype": "<f8"}, b"\x00" * 12, "the raw frame has 12 bytes"),
])
def test_bad_frames(header, frame, fragment):
    with pytest.raises(ConversionError, match="KW: ") as info:
        keyword_type("double-array", name="kw").from_wire(header, frame)
    assert fragment in str(info.value)


@pytest.mark.parametrize("use_numpy", [True, False])
def test_frame_decoding_with_and_without_numpy(monkeypatch, use_numpy):
    """A raw frame decodes to an array with numpy, to a list through struct without."""
    if use_numpy:
        pytest.importorskip("numpy")
    monkeypatch.setattr(ktypes, "_use_numpy", use_numpy)
    ints = keyword_type("integer-array", name="pos", maximum=100)
    doubles = keyword_type("double-array", name="pos")
    frame = struct.pack("<3q", 1, -2, 3)
    got = ints.from_wire({"dtype": "<i8", "shape": [3]}, frame)
    assert ints.equal(got, [1, -2, 3])
    assert type(got) is list if not use_numpy else got.dtype.str == "<i8"
    big_endian = struct.pack(">2d", 1.5, NAN)
    assert doubles.equal(doubles.from_wire({"dtype": ">f8", "shape": [2]}, big_endian), [1.5, NAN])
    halfs = struct.pack("<2e", 0.5, -2.0)
    assert doubles.equal(doubles.from_wire({"dtype": "<f2", "shape": [2]}, bytearray(halfs)), [0.5, -2.0])
    small = struct.pack("<2i", 7, 8)
    assert ints.equal(ints.from_wire({"dtype": "<i4"}, memoryview(small)), [7, 8])
    assert ints.equal(ints.from_wire({"dtype": "<i8", "shape": [0]}, b""), [])
    with pytest.raises(ConversionError, match=r"POS\[1\]: 101 is above the maximum 100"):
        ints.from_wire({"dtype": "<i8", "shape": [2]}, struct.pack("<2q", 1, 101))
    with pytest.raises(ConversionError, match=r"POS\[0\]: 1.5 is not a whole number"):
        ints.from_wire({"dtype": "<f8", "shape": [1]}, struct.pack("<d", 1.5))


# ---------------------------------------------------------------------------
# equal()
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind, a, b, expected", [
    ("double", NAN, NAN, True),
    ("double", 0.0, -0.0, True),
    ("double", 1.0, 1.0000001, False),
    ("double", 1.0, None, False),
    ("double", None, None, True),
    ("integer", 3, 3, True),
    ("integer", 3, 4, False),
    ("string", "a", "a", True),
    ("string", "a", "A", False),
    ("boolean", True, False, False),
    ("double-array", [1.0, NAN], [1.0, NAN], True),
    ("double-array", [1.0, NAN], [1.0, 2.0], False),
    ("double-array", [1.0], [1.0, 1.0], False),
    ("integer-array", [1, 2], [1, 2], True),
    ("integer-array", [1, 2], [2, 1], False),
    ("integer-array", [], [], True),
    ("integer-array", [1], 1, False),
])
def test_equal(kind, a, b, expected):
    kt = keyword_type(kind)
    assert kt.equal(a, b) is expected
    assert kt.equal(b, a) is expected


# ---------------------------------------------------------------------------
# property tests: every valid native survives the wire and ascii round trips
# ---------------------------------------------------------------------------

enum_names = st.text(min_size=1, max_size=12).filter(lambda s: s == s.strip())
mask_names = enum_names.filter(lambda s: "," not in s and "|" not in s)


@st.composite
def typed_natives(draw):
    """A (KeywordType, valid native) pair for any of the eight types."""
    kind = draw(st.sampled_from(TYPE_NAMES))
    if kind == "boolean":
        return keyword_type(kind), draw(st.booleans())
    if kind == "integer":
        return keyword_type(kind), draw(st.integers(INT32_MIN, INT32_MAX))
    if kind == "double":
        return keyword_type(kind), draw(st.floats())
    if kind == "string":
        return keyword_type(kind), draw(st.text())
    if kind == "enumerated":
        names = draw(st.lists(enum_names, min_size=1, max_size=6, unique=True))
        values = draw(st.lists(st.integers(INT32_MIN, INT32_MAX), min_size=len(names),
                               max_size=len(names), unique=True))
        kt = keyword_type(kind, enumerators=dict(zip(values, names)))
        return kt, draw(st.sampled_from(values))
    if kind == "mask":
        names = draw(st.lists(mask_names, min_size=1, max_size=8, unique=True))
        bits = draw(st.lists(st.integers(0, 31), min_size=len(names), max_size=len(names), unique=True))
        kt = keyword_type(kind, enumerators=dict(zip(bits, names)))
        chosen = draw(st.lists(st.sampled_from(bits), unique=True))
        return kt, sum(1 << bit for bit in chosen)
    if kind == "integer-array":
        return keyword_type(kind), draw(st.lists(st.integers(INT32_MIN, INT32_MAX), max_size=8))
    return keyword_type(kind), draw(st.lists(st.floats(), max_size=8))


@settings(max_examples=400, deadline=None)
@given(typed_natives())
def test_round_trips(pair):
    kt, native = pair
    assert same(kt.coerce(native), native)
    value, frame = kt.to_wire(native)
    assert frame is None
    wire = json.loads(json.dumps(value, allow_nan=False))
    assert kt.equal(kt.from_wire(wire), native)
    ascii = kt.to_ascii(native)
    assert isinstance(ascii, str)
    assert kt.equal(kt.coerce(ascii), native)
    assert kt.equal(kt.parse_ascii(ascii), native)
    assert kt.to_ascii(kt.coerce(ascii)) == ascii


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False), st.floats(allow_nan=False), st.floats())
def test_double_range_is_inclusive(a, b, x):
    lo, hi = min(a, b), max(a, b)
    if math.isinf(lo) and lo > 0 or math.isinf(hi) and hi < 0:
        return
    kt = keyword_type("double", name="kw", minimum=lo, maximum=hi)
    lo_ok = kt.minimum is None or kt.minimum <= x
    hi_ok = kt.maximum is None or x <= kt.maximum
    if lo_ok and hi_ok and not math.isnan(x) or (math.isnan(x) and kt.minimum is None and kt.maximum is None):
        assert same(kt.coerce(x), x)
    else:
        with pytest.raises(ConversionError):
            kt.coerce(x)


# ---------------------------------------------------------------------------
# numpy (optional)
# ---------------------------------------------------------------------------

def test_numpy_scalars_convert_like_python_scalars():
    np = pytest.importorskip("numpy")
    assert same(keyword_type("integer").coerce(np.int32(5)), 5)
    assert same(keyword_type("double").coerce(np.float32(0.5)), 0.5)
    assert same(keyword_type("boolean").coerce(np.bool_(True)), True)
    assert same(keyword_type("string").coerce(np.str_("x")), "x")
    assert MODE.coerce(np.int64(1)) == 1
    message = refused(keyword_type("integer", name="kw"), np.float64(2.5), "KW: 2.5 is not a whole")
    assert "np." not in message


def test_numpy_arrays_in_and_out():
    np = pytest.importorskip("numpy")
    ints = keyword_type("integer-array", name="pos", minimum=-10, maximum=10)
    doubles = keyword_type("double-array", name="pos", minimum=0)
    got = ints.coerce(np.array([1.0, -2.0, 3.0]))
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    assert got.tolist() == [1, -2, 3]
    assert ints.to_ascii(got) == "1 -2 3"
    assert ints.coerce(np.array([1, 2], dtype=np.uint8)).dtype == np.int64
    got = doubles.coerce(np.arange(3, dtype=np.int32))
    assert got.dtype == np.float64 and doubles.to_ascii(got) == "0.0 1.0 2.0"
    assert doubles.coerce(np.array([], dtype=np.float64)).size == 0
    # element-wise errors name the index, like lists do
    for arr, fragment in [
        (np.array([1.0, 2.5]), "POS[1]: 2.5 is not a whole number (integers are not truncated)"),
        (np.array([1, 11]), "POS[1]: 11 is above the maximum 10"),
        (np.array([1.0, np.nan]), "POS[1]: nan is not a finite number"),
        (np.array([True, False]), "POS[0]: True is a boolean, not an integer"),
        (np.array([[1, 2]]), "POS: an array of shape (1, 2) is not one-dimensional"),
        (np.array(["1", "x"]), "POS[1]: 'x' is not an integer"),
    ]:
        refused(ints, arr, fragment)
    refused(doubles, np.array([1.0, -1.0]), "POS[1]: -1.0 is below the minimum 0.0")
    refused(doubles, np.array([1.0, np.nan]), "POS[1]: nan is not a number")
    refused(keyword_type("integer-array", name="pos"), np.array([2 ** 31]), "above the maximum 2147483647")
    with pytest.raises(ConversionError, match="64-bit"):
        ints.from_wire(np.array([2.0 ** 63]), check=False)


def test_numpy_copies_writable_inputs_only():
    np = pytest.importorskip("numpy")
    doubles = keyword_type("double-array")
    source = np.array([1.0, 2.0])
    got = doubles.coerce(source)
    source[0] = 99.0
    assert got[0] == 1.0    # the keyword's value is not an alias of the caller's array
    frozen = np.frombuffer(struct.pack("<2d", 1.0, 2.0), dtype=np.float64)
    assert doubles.coerce(frozen) is frozen


def test_numpy_wire_round_trip():
    np = pytest.importorskip("numpy")
    for kind, arr in [("integer-array", np.array([1, -2, 2 ** 31 - 1], dtype=np.int64)),
                      ("double-array", np.array([0.1, np.nan, -np.inf])),
                      ("double-array", np.arange(10.0)[::2]),               # not contiguous
                      ("double-array", np.array([1.5, 2.5], dtype=">f8")),  # big-endian
                      ("integer-array", np.array([], dtype=np.int64))]:
        kt = keyword_type(kind, name="pos")
        native = kt.coerce(arr)
        header, frame = kt.to_wire(native)
        assert header == {"dtype": "<i8" if kind == "integer-array" else "<f8", "shape": [arr.size]}
        assert json.loads(json.dumps(header)) == header
        assert len(frame) == arr.size * 8
        back = kt.from_wire(header, bytes(frame))
        assert isinstance(back, np.ndarray)
        assert kt.equal(back, arr) and kt.equal(back, arr.tolist())
        assert kt.equal(arr.tolist(), back)


def test_numpy_wire_does_not_copy_contiguous_data():
    np = pytest.importorskip("numpy")
    kt = keyword_type("double-array")
    native = kt.coerce(np.arange(4.0))
    _, frame = kt.to_wire(native)
    native[0] = 42.0
    assert struct.unpack("<d", frame[:8])[0] == 42.0    # the frame shares the array's memory


def test_numpy_equal_mixed():
    np = pytest.importorskip("numpy")
    doubles = keyword_type("double-array")
    assert doubles.equal(np.array([1.0, np.nan]), [1.0, float("nan")])
    assert not doubles.equal(np.array([1.0, 2.0]), np.array([1.0]))
    assert not doubles.equal(np.array([1.0, 2.0]), [1.0, 3.0])
    ints = keyword_type("integer-array")
    assert ints.equal(np.array([1, 2]), [1, 2])
    assert not ints.equal(np.array([1, 2]), np.array([1, 3]))
    assert not ints.equal(np.array([1, 2]), ["a", "b"])


# ---------------------------------------------------------------------------
# robustness: any input is either converted or refused with ConversionError
# ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(max_size=8),
    st.decimals(), st.fractions(), st.complex_numbers(),
    st.sampled_from(["0x1f", " 1e3 ", "nan", "-inf", "a, b", "1 2 3", "Open", "1_000"]),
)
anything = st.one_of(scalars, st.lists(scalars, max_size=4), st.tuples(scalars),
                     st.dictionaries(st.text(max_size=2), scalars, max_size=2))
KINDS = [keyword_type(kind, name="kw",
                      enumerators=["a", "b", "Open"] if kind in ("enumerated", "mask") else None)
         for kind in TYPE_NAMES]
KINDS += [keyword_type("integer", name="kw", minimum=-3, maximum=3),
          keyword_type("double-array", name="kw", minimum=0, maximum=1)]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(KINDS), anything)
def test_anything_converts_or_is_refused_cleanly(kt, value):
    try:
        native = kt.coerce(value)
    except ConversionError as exc:
        assert str(exc).startswith("KW")
        return
    assert kt.equal(kt.coerce(kt.to_ascii(native)), native)
    assert kt.equal(kt.from_wire(*kt.to_wire(native)), native)


def test_large_numpy_arrays_convert_without_copies():
    np = pytest.importorskip("numpy")
    kt = keyword_type("double-array", name="big")
    frame = np.arange(1_000_000, dtype=np.float64).tobytes()
    header = {"dtype": "<f8", "shape": [1_000_000]}
    value = kt.from_wire(header, frame)
    assert not value.flags.writeable and kt.coerce(value) is value   # kept as decoded
    _, out = kt.to_wire(value)
    assert out.obj is value or np.shares_memory(np.frombuffer(out, dtype=np.float64), value)
    other = value.copy()
    assert kt.equal(value, other)
    other[-1] = -1.0
    assert not kt.equal(value, other)
    with_nan = np.array([1.0, np.nan])
    assert kt.equal(with_nan, with_nan.copy())
