"""TOML keyword files: valid files become keywords; every mistake names file, table, key."""
from __future__ import annotations

import textwrap
from typing import Any

import pytest

from cauldron_zmq import DFW
from cauldron_zmq.dispatcher import Service
from cauldron_zmq.errors import ConfigurationError
from cauldron_zmq.keywordfile import parse_keywords, read_keyword_file

GOOD = textwrap.dedent("""
    [keyword.TEMP]
    type = "double"
    units = "degC"
    min = -50
    max = 50.5
    initial = 20
    description = "Detector temperature"
    period = 2.5
    persist = true

    [keyword.mode]
    type = "enumerated"
    enumerators = ["OFF", "STANDBY", "ON"]
    initial = "standby"

    [keyword.FLAGS]
    type = "mask"
    enumerators = ["A", "B"]

    [keyword.SERIAL]
    type = "string"
    initial = "X-1"
    read-only = true

    [keyword.GO]
    type = "boolean"
    write-only = true

    [keyword.POS]
    type = "double-array"
    initial = [1.0, 2.0]

    [keyword.COUNTS]
    type = "integer-array"

    [keyword.N]
    type = "integer"
""")


def write(tmp_path: Any, text: str) -> str:
    path = tmp_path / "keywords.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_valid_file(tmp_path: Any) -> None:
    specs = {s.name: s for s in read_keyword_file(write(tmp_path, GOOD))}
    assert sorted(specs) == ["COUNTS", "FLAGS", "GO", "MODE", "N", "POS", "SERIAL", "TEMP"]
    temp = specs["TEMP"]
    assert (temp.type, temp.units, temp.minimum, temp.maximum, temp.initial, temp.period,
            temp.persist) == ("double", "degC", -50, 50.5, 20, 2.5, True)
    assert specs["SERIAL"].readonly and specs["GO"].writeonly


def test_keywords_created_in_a_service(tmp_path: Any) -> None:
    svc = Service("fromfile", keywords=write(tmp_path, GOOD),
                  setup=lambda s: DFW.Integer("EXTRA", s))
    assert isinstance(svc["TEMP"], DFW.Double) and svc["TEMP"].units == "degC"
    assert isinstance(svc["MODE"], DFW.Enumerated) and isinstance(svc["POS"], DFW.DoubleArray)
    assert svc["SERIAL"].readonly and svc["TEMP"].persist
    assert svc["TEMP"].describe()["period"] == 2.5
    assert "EXTRA" in svc


BAD = [
    ("[keyword.A]\ntype = 'integer'\nmaximun = 3\n", "keyword.A", "maximun", "did you mean 'maximum'|'max'"),
    ("[keyword.A]\ntype = 'integr'\n", "keyword.A", "type", "did you mean 'integer'"),
    ("[keyword.A]\nunits = 'm'\n", "keyword.A", "type", "missing"),
    ("[keyword.A]\ntype = 'enumerated'\n", "keyword.A", "enumerators", "missing"),
    ("[keyword.A]\ntype = 'enumerated'\nenumerators = ['X', 'X']\n", "keyword.A", "enumerators", "twice"),
    ("[keyword.A]\ntype = 'enumerated'\nenumerators = 'X,Y'\n", "keyword.A", "enumerators", "list"),
    ("[keyword.A]\ntype = 'enumerated'\nenumerators = ['X', '']\n", "keyword.A", "enumerators", "names"),
    ("[keyword.A]\ntype = 'string'\nenumerators = ['X']\n", "keyword.A", "enumerators", "not string"),
    ("[keyword.A]\ntype = 'integer'\ninitial = 2.5\n", "keyword.A", "initial", "whole"),
    ("[keyword.A]\ntype = 'integer'\nmax = 3\ninitial = 4\n", "keyword.A", "initial", "maximum"),
    ("[keyword.A]\ntype = 'enumerated'\nenumerators = ['X']\ninitial = 'Y'\n", "keyword.A", "initial", "enumerators"),
    ("[keyword.A]\ntype = 'string'\nmin = 3\n", "keyword.A", "min", "numeric"),
    ("[keyword.A]\ntype = 'double'\nmin = 'low'\n", "keyword.A", "min", "number"),
    ("[keyword.A]\ntype = 'double'\nmin = 3\nmax = 1\n", "keyword.A", "max", "above"),
    ("[keyword.A]\ntype = 'double'\nperiod = 0\n", "keyword.A", "period", "positive"),
    ("[keyword.A]\ntype = 'double'\npersist = 'yes'\n", "keyword.A", "persist", "true or false"),
    ("[keyword.A]\ntype = 'double'\nread-only = true\nwrite-only = true\n", "keyword.A", "write-only", "both"),
    ("[keyword.A]\ntype = 'double'\nunits = 3\n", "keyword.A", "units", "string"),
    ("[keywords.A]\ntype = 'double'\n", None, "keywords", "did you mean 'keyword'"),
    ("", None, None, "defines no keywords"),
    ("[keyword.a]\ntype = 'double'\n[keyword.A]\ntype = 'double'\n", "keyword.A", None, "twice"),
    ("[keyword.A]\ntype = \n", None, None, "TOML syntax error"),
]


@pytest.mark.parametrize("text, table, key, message", BAD)
def test_errors_name_file_table_and_key(tmp_path: Any, text: str, table: Any, key: Any,
                                        message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as info:
        read_keyword_file(path)
    exc = info.value
    assert exc.source == path and str(exc).startswith(path)
    assert exc.section == table and exc.key == key
    assert any(m in str(exc) for m in message.split("|")), str(exc)


def test_missing_file(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        read_keyword_file(tmp_path / "nope.toml")


def test_parse_mapping_directly() -> None:
    [spec] = parse_keywords({"keyword": {"x": {"type": "boolean", "initial": True}}})
    assert spec.name == "X" and spec.initial is True


def test_keyword_that_is_not_a_table_names_the_key(tmp_path):
    from cauldron_zmq.errors import ConfigurationError
    from cauldron_zmq.keywordfile import read_keyword_file
    path = tmp_path / "kw.toml"
    path.write_text("keyword = 5\n")
    with pytest.raises(ConfigurationError) as info:
        read_keyword_file(path)
    assert str(path) in str(info.value) and "keyword: expected tables [keyword.NAME]" in str(info.value)
    assert info.value.key == "keyword"
