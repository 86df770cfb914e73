"""The waitFor expression parser and comparisons: no network, no eval."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cauldron_zmq.expression import (Arithmetic, BoolOp, Comparison, ExpressionError,
                                     KeywordRef, Literal, Not, Value, Word, compare, parse,
                                     parse_relative)
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
    ("false", False),
    ("not false", True),
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
    ("import os", 7),                    # two bare words side by side
    ("$svc.A == 1; rm", 11),
    ("__import__('os')", 10),
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


# ------------------------------------------------- the language as written

def kt_value(kind: str, native: Any, **meta: Any) -> Value:
    kt = keyword_type(kind, **meta)
    return Value(native, kt.to_ascii(native), lambda v: kt.from_wire(v, None, check=False))


STATUS = dict(enumerators=["Ready", "Readout", "Start", "Busy"])
FIELD: Dict[Tuple[str, str], Value] = {
    ("kbms", "FOCMOVE"): kt_value("integer", 1),
    ("kpfexpose", "EXPOSE"): kt_value("enumerated", 1, **STATUS),            # Readout
    ("ao", "OBAMSTST"): kt_value("enumerated", 1, enumerators=["MOVING", "INPOS"]),
    ("ao", "OBAMNAME"): kt_value("string", "Mirror"),
    ("kpffiu", "ADC1STA"): kt_value("enumerated", 0, **STATUS),
    ("kpffiu", "ADC2STA"): kt_value("enumerated", 0, **STATUS),
    ("kpffvc", "SCIEXPTIME"): kt_value("double", 2.0),
    ("kpffiu", "TTXVAX"): kt_value("double", 1.46),
    ("kpffiu", "TTYVAX"): kt_value("double", -0.74),
    ("kcas", "STATUS"): kt_value("string", "OK"),
    ("kbds", "LOUTFILE"): kt_value("string", "kb0042.fits"),
    ("kfcs", "LASTFILE"): kt_value("string", ""),
    ("kbes", "GRSTATUS"): kt_value("string", "Move complete"),
    ("kpfguide", "OUTDIR"): kt_value("string", "/s/sdata1701/kpfguide"),
    ("kpfcal", "OCTAGON"): kt_value("enumerated", 2, enumerators=["Home", "SoCal", "EtalonFiber"]),
    ("kpfguide", "TIPTILT_CONTROL"): kt_value("enumerated", 1, enumerators=["Inactive", "Active"]),
    ("kbms", "ARTPROG"): kt_value("integer", 40),
}


def field(text: str, case: bool = False, **changes: Value) -> bool:
    values = dict(FIELD)
    for name, value in changes.items():
        svc, kw = name.split("__")
        values[(svc, kw.upper())] = value
    return parse(text).evaluate(lambda s, k: values[(s, k)], case)


@pytest.mark.parametrize("text, expected", [
    ("$kbms.focmove == 1", True),
    ("($kpfexpose.EXPOSE == 'Ready') or ($kpfexpose.EXPOSE == 'Readout')", True),
    ("($ao.OBAMSTST == INPOS) and ($ao.OBAMNAME == Mirror)", True),
    ("($kpffiu.ADC1STA == Ready) and ($kpffiu.ADC2STA == Ready)", True),
    ("($kpffvc.SCIEXPTIME > 2.0-0.1)", True),
    ("($kpffiu.TTXVAX >= 1.5-0.05) and ($kpffiu.TTYVAX >= -0.7-0.05)", True),
    ("(kpfexpose.EXPOSE != Start)", True),
    ("kcas.status == OK", True),
    ('$kbds.loutfile != "       "', True),
    ('$kfcs.lastfile != ""', False),
    ('$kbes.grstatus=="Move complete"', True),
    ("$kpfguide.OUTDIR == '/s/sdata1701/kpfguide'", True),
    ("($kpfcal.OCTAGON == EtalonFiber)", True),
    ("($kpfguide.TIPTILT_CONTROL == Active)", True),
    ("($kbms.artprog!=100)", True),
])
def test_every_form_real_code_writes(text: str, expected: bool) -> None:
    assert field(text) is expected


def test_field_forms_turn_false_when_the_value_changes() -> None:
    assert field("$kbms.focmove == 1", kbms__focmove=kt_value("integer", 0)) is False
    assert field("($kpffvc.SCIEXPTIME > 2.0-0.1)",
                 kpffvc__sciexptime=kt_value("double", 1.85)) is False
    assert field("($kpffiu.TTXVAX >= 1.5-0.05) and ($kpffiu.TTYVAX >= -0.7-0.05)",
                 kpffiu__ttyvax=kt_value("double", -0.76)) is False
    assert field('$kbds.loutfile != "       "', kbds__loutfile=kt_value("string", "       ")) \
        is False
    assert field('$kfcs.lastfile != ""', kfcs__lastfile=kt_value("string", "x.fits")) is True
    assert field("($kbms.artprog!=100)", kbms__artprog=kt_value("integer", 100)) is False
    assert field("(kpfexpose.EXPOSE != Start)", kpfexpose__expose=kt_value(
        "enumerated", 2, **STATUS)) is False


def test_enumerated_equals_its_name_and_its_number() -> None:
    assert field("$kpfexpose.EXPOSE == Readout and $kpfexpose.EXPOSE == 1")
    assert field("$kpfexpose.EXPOSE == 'readout'")          # names ignore case
    assert field("$kpfexpose.EXPOSE == '1'")
    assert field("$kpfexpose.EXPOSE >= Readout and $kpfexpose.EXPOSE < Start")


def test_strings_ignore_case_unless_asked() -> None:
    assert field("kcas.status == ok")
    assert field("kcas.status == ok", case=True) is False
    assert field("kcas.status == OK", case=True)
    assert field('$kbes.grstatus == "MOVE COMPLETE"')


def test_bare_word_that_names_no_enumerator_is_a_string() -> None:
    assert field("$ao.OBAMSTST == Parked") is False
    assert field("$ao.OBAMSTST != Parked") is True
    assert field("$ao.OBAMNAME != Parked") is True


def test_arithmetic() -> None:
    tree = parse("$svc.A > 2.0-0.1").tree
    assert tree == Comparison(">", KeywordRef("svc", "A"),
                              Arithmetic("-", Literal(2.0), Literal(0.1)))
    assert ev("$svc.TEMP * 2 == 43") and ev("$svc.TEMP / 2 > 10.7")
    assert ev("($svc.TEMP + 0.5) * 2 == 44") and ev("-$svc.TEMP < -21")
    assert ev("1 + 2 * 3 == 7") and ev("(1 + 2) * 3 == 9") and ev("-(1 - 3) == 2")
    assert ev("$svc.TEMP - $other.COUNT == 18.5")
    assert ev("--1 == 1") and ev("+1 == 1")
    with pytest.raises(ExpressionError, match="division by zero"):
        ev("$svc.TEMP / 0 > 1")
    with pytest.raises(ExpressionError, match="not a number"):
        ev("$svc.NAME + 1 > 1")


def test_bare_words_with_a_decimal_part() -> None:
    assert parse("($kpfcal.ND1POS == OD0.1)").tree == Comparison(
        "==", KeywordRef("kpfcal", "ND1POS"), Word("OD0.1"))
    nd = kt_value("enumerated", 1, enumerators=["OD0.0", "OD0.1", "OD1.0"])
    assert parse("$kpfcal.ND1POS == OD0.1").evaluate(lambda s, k: nd) is True


def test_service_without_dollar_and_names_with_dashes() -> None:
    assert parse("kcas.status == OK").keywords == [("kcas", "STATUS")]
    assert parse("$dcs.DATE-OBS == '2024-01-01'").keywords == [("dcs", "DATE-OBS")]
    assert parse("$svc.A-1 > 0").tree == Comparison(
        ">", Arithmetic("-", KeywordRef("svc", "A"), Literal(1)), Literal(0))


@pytest.mark.parametrize("text, native, kind, expected", [
    ('=="OK"', "OK", "string", True),
    ('== "open"', "Open", "string", True),
    ("== INPOS", 1, "enumerated", True),
    ("!=Busy", 0, "enumerated", True),
    ("!=Busy", 3, "enumerated", False),
    ("==0", 0, "integer", True),
    ("==-1", -1, "integer", True),
    ("=='Null'", "Null", "string", True),
    ("== 1", 1, "boolean", True),
    ("==Closed", "Closed", "string", True),
    (">= 5.0", 5.0, "double", True),
    (">= 5.0", 4.9, "double", False),
    ("== 1 or == 2", 2, "integer", True),
])
def test_keyword_relative_forms(text: str, native: Any, kind: str, expected: bool) -> None:
    meta = {"enumerators": ["Ready", "INPOS", "Moving", "Busy"]} if kind == "enumerated" else {}
    if kind == "boolean":
        native = bool(native)
    value = kt_value(kind, native, **meta)
    expr = parse_relative(text, "svc", "kw")
    assert expr.keywords == [("svc", "KW")]
    assert expr.evaluate(lambda s, k: value) is expected


def test_relative_expression_must_start_with_a_comparison() -> None:
    with pytest.raises(ExpressionError, match="starts with a comparison"):
        parse_relative("open", "svc", "KW")
    with pytest.raises(ExpressionError):
        parse_relative("", "svc", "KW")
    assert parse_relative("!= Busy", "svc", "kw").tree == Comparison(
        "!=", KeywordRef("svc", "KW"), Word("Busy"))


def test_numbers_compare_numerically_with_string_keywords() -> None:
    assert compare("==", Value("100", "100", str), 100)
    assert compare("!=", Value("100", "100", str), 99)
    assert compare("==", Value(None, None, str), 1) is False


@pytest.mark.parametrize("text", [
    "(" * 5000 + "$svc.A == 1" + ")" * 5000,
    "not " * 5000 + "$svc.A",
    "-" * 5000 + "1 == 1",
])
def test_deep_nesting_is_an_error_not_a_crash(text: str) -> None:
    with pytest.raises(ExpressionError, match="nested more than"):
        parse(text)


def test_reasonable_nesting_parses() -> None:
    assert ev("((($other.COUNT == 3)))") and ev("not not ($other.COUNT == 3)") and ev("--3 == 3")


@given(st.text(alphabet="$.abAB01 =!<>()'\"-+*/&|", max_size=30))
def test_relative_parser_never_crashes(text: str) -> None:
    try:
        expr = parse_relative(text, "svc", "KW")
    except ExpressionError:
        return
    assert ("svc", "KW") in expr.keywords
