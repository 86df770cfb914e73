"""The waitFor expression parser and comparisons: no network, no eval."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cauldron_zmq.expression import (BoolOp, Comparison, ExpressionError, KeywordRef, Literal,
                                     Not, Value, compare, parse)
from cauldron_zmq.types import keyword_type

ENUM = keyword_type("enumerated", name="MODE", enumerators=["OFF", "STANDBY", "ON"])
DOUBLE = keyword_type("double", name="TEMP")


def kwvalue(kt: Any, native: Any) -> Value:
    return Value(native, kt.to_ascii(native), lambda v: kt.from_wire(v, None, check=False))


VALUES: Dict[Tuple[str, str], Value] = {
    ("svc", "MODE"): kwvalue(ENUM, 2),
    ("svc", "TEMP"): kwvalue(DOUBLE, 21.5),
    ("svc", "NAME"): Value("Hello", "Hello", str),
    ("other", "COUNT"): Value(3, "3", int),
    ("svc", "BUSY"): Value(False, "0", None),
}


def ev(text: str, case: bool = False) -> bool:
    return parse(text).evaluate(lambda s, k: VALUES[(s, k)], case)


def test_tree_shape_and_precedence() -> None:
    tree = parse("$svc.A == 1 or not $svc.B and $svc.C").tree
    assert tree == BoolOp("or", (
        Comparison("==", KeywordRef("svc", "A"), Literal(1)),
        BoolOp("and", (Not(KeywordRef("svc", "B")), KeywordRef("svc", "C")))))


def test_keywords_listed_once_in_order() -> None:
    expr = parse("$svc.a > 1 && ($Other.count == 2 || $svc.A < 0)")
    assert expr.keywords == [("svc", "A"), ("other", "COUNT")]


@pytest.mark.parametrize("text, expected", [
    ("$svc.MODE == 'ON'", True),              # enumerator name, cast by the keyword
    ("$svc.MODE == \"on\"", True),            # ... ignoring case
    ("$svc.MODE == 2", True),
    ("$svc.MODE != 'OFF'", True),
    ("$svc.MODE >= 1", True),
    ("$svc.TEMP > 21", True),
    ("$svc.TEMP <= 21.5", True),
    ("$svc.TEMP < '21.5'", False),            # the literal is cast to a double
    ("$svc.TEMP == 2.15e1", True),
    ("$svc.NAME == 'hello'", True),           # case-insensitive by default
    ("$other.COUNT == 3 and $svc.TEMP > 20", True),
    ("$other.COUNT == 4 or $svc.TEMP > 30", False),
    ("not $svc.BUSY", True),
    ("!$svc.BUSY && ($other.COUNT > 2)", True),
    ("$svc.MODE == 'NOPE'", False),           # no such enumerator: compared as text
    ("$svc.MODE != 'NOPE'", True),
    ("true", True),
    ("1 < 2", True),
    ("0x10 == 16", True),
    ("-3 < $other.COUNT", True),
])
def test_evaluate(text: str, expected: bool) -> None:
    assert ev(text) is expected


def test_case_sensitive() -> None:
    assert ev("$svc.NAME == 'hello'", case=True) is False
    assert ev("$svc.NAME == 'Hello'", case=True) is True


@pytest.mark.parametrize("text, where", [
    ("", 0),
    ("$svc.A ==", 9),
    ("$svc.A == 1 == 2", 12),
    ("($svc.A == 1", 12),
    ("$svc.A == 1)", 11),
    ("import os", 0),
    ("$svc.A == 1; rm", 11),
    ("__import__('os')", 0),
    ("$svc == 1", 0),
    ("'unterminated", 0),
])
def test_syntax_errors_point_at_the_problem(text: str, where: int) -> None:
    with pytest.raises(ExpressionError) as info:
        parse(text)
    assert isinstance(info.value, ValueError)
    assert f"position {where}" in str(info.value)


def test_ordering_incompatible_values_is_an_error() -> None:
    with pytest.raises(ExpressionError):
        compare("<", Value("abc", "abc", None), 3)
    assert compare("==", Value("abc", "abc", None), 3) is False
    assert compare("!=", Value("abc", "abc", None), 3) is True


def test_no_value_yet() -> None:
    assert compare("==", Value(None, None, None), None) is True
    assert compare(">", Value(None, None, None), 1) is False


def test_unknown_operator() -> None:
    with pytest.raises(ExpressionError):
        compare("=~", 1, 1)


def test_not_a_string() -> None:
    with pytest.raises(TypeError):
        parse(3)  # type: ignore[arg-type]


@given(st.text(max_size=40))
def test_parser_never_crashes(text: str) -> None:
    try:
        parse(text)
    except ExpressionError:
        pass


@given(st.integers(-10 ** 6, 10 ** 6), st.integers(-10 ** 6, 10 ** 6))
def test_numeric_comparisons_match_python(a: int, b: int) -> None:
    for op, fn in (("==", a.__eq__), ("<", a.__lt__), (">=", a.__ge__)):
        assert parse(f"$x.A {op} {b}").evaluate(lambda s, k: Value(a, str(a), int)) is fn(b)
