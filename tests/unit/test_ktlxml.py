"""KTL XML keyword bundles: the parser (cauldron_zmq.ktlxml) and what a service takes from it."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cauldron_zmq import DFW, ktlxml
from cauldron_zmq.config import DEFAULT
from cauldron_zmq.dispatcher import Service
from cauldron_zmq.errors import ConfigurationError

HERE = Path(__file__).resolve().parents[1]
BUNDLE = HERE / "data" / "ktl-wheel.xml"      # the reference example of a KTL bundle

CFG = DEFAULT.replace(router={"enable": False})


def bundle(tmp_path: Path, keywords: str, service: str = "demo", name: str = "b.xml") -> Path:
    path = tmp_path / name
    path.write_text(f'<?xml version="1.0" ?>\n<bundle name="b" service="{service}">\n'
                    f"<dispatcher><name>{service}_1</name></dispatcher>\n"
                    f"{textwrap.dedent(keywords)}\n</bundle>\n")
    return path


# ------------------------------------------------------------------- parsing

def test_the_reference_bundle_parses_completely() -> None:
    b = ktlxml.read_bundle(BUNDLE)
    assert (b.name, b.service, b.dispatcher) == ("wheel", "demo", "demo_dispatch_1")
    kw = {d.name: d for d in b.keywords}
    assert list(kw) == ["FILTNAME", "LAMPON", "ATTEN", "CCDTEMP", "RACKTEMPS", "STATUS",
                        "OBSERVER", "FRAMENO"]
    filt = kw["FILTNAME"]
    assert filt.type == "enumerated" and filt.brief == "Filter in the beam"
    assert filt.verbose == "Name of the filter the wheel has in the beam."
    assert filt.enumerators == ((0, "Clear"), (1, "Blue"), (2, "Red"), (3, "not homed yet"))
    assert not filt.readonly and not filt.writeonly
    assert kw["LAMPON"].enumerators == ((0, "off"), (1, "on"))
    atten = kw["ATTEN"]
    assert (atten.units, atten.format, atten.minimum, atten.maximum) == ("dB", "%.2f", 0.0, 60.0)
    assert kw["CCDTEMP"].readonly and kw["CCDTEMP"].serverside_value("period") == "5"
    assert kw["CCDTEMP"].serverside_value("PERIOD") == "5"
    assert kw["RACKTEMPS"].type == "double-array"
    assert kw["RACKTEMPS"].labels == ("top of rack", "middle of rack", "glycol in")
    assert kw["STATUS"].type == "mask"
    assert kw["STATUS"].enumerators == ((0, "overheat"), (1, "door open"), (4, "power fail"))
    assert kw["OBSERVER"].type == "string"
    assert (kw["FRAMENO"].minimum, kw["FRAMENO"].maximum) == (0, None)


@pytest.mark.parametrize("xml_type, kind", [
    ("boolean", "boolean"), ("integer", "integer"), ("double", "double"), ("float", "double"),
    ("string", "string"), ("enumm", "mask"), ("integer array", "integer-array"),
    ("double array", "double-array"), ("float array", "double-array"), ("KTL_DOUBLE", "double"),
])
def test_every_ktl_type_name(tmp_path: Path, xml_type: str, kind: str) -> None:
    values = ("<values><entry><key>0</key><value>a</value></entry>"
              "<entry><key>1</key><value>b</value></entry></values>"
              if kind in ("boolean", "mask") else "")
    path = bundle(tmp_path, f"<keyword><name>K</name><type>{xml_type}</type>{values}</keyword>")
    [decl] = ktlxml.read_bundle(path).keywords
    assert decl.type == kind


def test_capabilities(tmp_path: Path) -> None:
    path = bundle(tmp_path, """
        <keyword><name>RO</name><type>integer</type>
          <capability type="write">False</capability></keyword>
        <keyword><name>WO</name><type>integer</type>
          <capability type="read">false</capability><capability type="write">True</capability>
        </keyword>""")
    ro, wo = ktlxml.read_bundle(path).keywords
    assert (ro.readonly, ro.writeonly, wo.readonly, wo.writeonly) == (True, False, False, True)


@pytest.mark.parametrize("body, element, words", [
    ("<name>K</name><type>integr</type>", "<type>", "unknown type 'integr'"),
    ("<name>K</name>", "<type>", "missing"),
    ("<name>K</name><type>double</type><range><minimum>5</minimum><maximum>1</maximum></range>",
     "<range>", "above maximum"),
    ("<name>K</name><type>double</type><range><minimum>low</minimum></range>",
     "<range/minimum>", "'low' is not a number"),
    ("<name>K</name><type>string</type><range><minimum>1</minimum></range>",
     "<range>", "has no range"),
    ("<name>K</name><type>enumerated</type>", "<values>", "missing"),
    ("<name>K</name><type>enumerated</type><values><entry><key>x</key><value>A</value>"
     "</entry></values>", "<values/entry/key>", "'x' is not an integer"),
    ("<name>K</name><type>enumerated</type><values><entry><key>0</key><value>A</value></entry>"
     "<entry><key>0</key><value>B</value></entry></values>", "<values>", "given twice"),
    ("<name>K</name><type>boolean</type><values><entry><key>0</key><value>A</value></entry>"
     "<entry><key>2</key><value>B</value></entry></values>", "<values>", "0 and 1"),
    ("<name>K</name><type>double</type><format>%d%</format>", "<format>", "printf"),
    ("<name>K</name><type>integer</type><capability type=\"write\">maybe</capability>",
     "<capability type=\"write\">", "True or False"),
    ("<name>K</name><type>double array</type><elements><entry><index>1</index>"
     "<label>x</label></entry></elements>", "<elements>", "not 0..0"),
])
def test_errors_name_file_keyword_and_element(tmp_path: Path, body: str, element: str,
                                              words: str) -> None:
    path = bundle(tmp_path, f"<keyword>{body}</keyword>")
    with pytest.raises(ConfigurationError) as info:
        ktlxml.read_bundle(path)
    text = str(info.value)
    assert text.startswith(f"{path}: keyword K: {element}: "), text
    assert words in text
    assert info.value.source == str(path) and info.value.section == "K"


def test_malformed_xml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.xml"
    path.write_text("<bundle><keyword><name>K</name></bundle>\n")
    with pytest.raises(ConfigurationError, match=rf"^{path}: malformed XML: .*line 1"):
        ktlxml.read_bundle(path)


@pytest.mark.parametrize("prolog", [
    '<!DOCTYPE bundle [<!ENTITY a "aaaaaaaaaa">]>',
    '<!ENTITY lol "lol">',
    '<!doctype bundle SYSTEM "file:///etc/passwd">',
])
def test_entity_and_doctype_declarations_are_refused(tmp_path: Path, prolog: str) -> None:
    path = tmp_path / "evil.xml"
    path.write_text(f'<?xml version="1.0"?>\n{prolog}\n<bundle><keyword><name>K</name>'
                    "<type>string</type></keyword></bundle>")
    with pytest.raises(ConfigurationError, match="declarations are refused"):
        ktlxml.read_bundle(path)


def test_a_keyword_twice_is_an_error(tmp_path: Path) -> None:
    one = bundle(tmp_path, "<keyword><name>K</name><type>string</type></keyword>", name="1.xml")
    two = bundle(tmp_path, "<keyword><name>k</name><type>integer</type></keyword>", name="2.xml")
    with pytest.raises(ConfigurationError, match=rf"{two}: keyword K: <name>: also declared "
                                                 rf"in {one}"):
        ktlxml.load_declarations([tmp_path], "demo")


def test_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "x.xml"
    path.write_text("<keywords/>")
    with pytest.raises(ConfigurationError, match="expected a <bundle>"):
        ktlxml.read_bundle(path)
    with pytest.raises(ConfigurationError, match="not found"):
        ktlxml.read_bundle(tmp_path / "missing.xml")


# ----------------------------------------------------------------- discovery

def test_a_directory_of_bundles_keeps_those_of_the_service(tmp_path: Path) -> None:
    bundle(tmp_path, "<keyword><name>MINE</name><type>string</type></keyword>", name="a.xml")
    bundle(tmp_path, "<keyword><name>THEIRS</name><type>string</type></keyword>",
           service="other", name="b.xml")
    assert list(ktlxml.load_declarations([tmp_path], "demo")) == ["MINE"]
    assert list(ktlxml.load_declarations([tmp_path / "b.xml"], "demo")) == ["THEIRS"]


def test_a_directory_of_service_folders(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    shutil.copy(BUNDLE, tmp_path / "demo" / "wheel.xml")
    bundle(tmp_path, "<keyword><name>TOP</name><type>string</type></keyword>", name="top.xml")
    assert "FILTNAME" in ktlxml.load_declarations([tmp_path], "demo")
    assert "TOP" not in ktlxml.load_declarations([tmp_path], "demo")


def test_service_finds_its_xml_in_reldir(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "data" / "demo").mkdir(parents=True)
    shutil.copy(BUNDLE, tmp_path / "data" / "demo" / "wheel.xml")
    monkeypatch.setenv("RELDIR", str(tmp_path))
    svc = DFW.Service("demo", CFG, start=False)
    assert "FILTNAME" in svc.declarations and svc["FILTNAME"].type.type == "enumerated"
    (tmp_path / "data" / "demo").rename(tmp_path / "data" / "DEMO")
    assert "FILTNAME" in DFW.Service("Demo", CFG, start=False).declarations
    monkeypatch.setenv("RELDIR", str(tmp_path / "nowhere"))
    assert DFW.Service("demo", CFG, start=False).declarations == {}


def test_xml_dir_key_wins_over_reldir(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "data" / "demo").mkdir(parents=True)
    shutil.copy(BUNDLE, tmp_path / "data" / "demo" / "wheel.xml")
    monkeypatch.setenv("RELDIR", str(tmp_path))
    xmldir = tmp_path / "xml"
    xmldir.mkdir()
    bundle(xmldir, "<keyword><name>ONLY</name><type>integer</type></keyword>")
    svc = DFW.Service("demo", CFG.replace(zmq={"xml-dir": str(xmldir)}), start=False)
    assert svc.keywords() == ["ONLY"]
    explicit = DFW.Service("demo", CFG.replace(zmq={"xml-dir": str(xmldir)}), xml=BUNDLE,
                           start=False)
    assert "ONLY" not in explicit and "FILTNAME" in explicit


def test_a_missing_xml_argument_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no such KTL XML file or directory"):
        DFW.Service("demo", CFG, xml=tmp_path / "nope.xml", start=False)


# ------------------------------------------------- keywords take the XML

def test_keywords_created_in_setup_take_the_declaration() -> None:
    def setup(service: Any) -> None:
        DFW.Keyword.Enumerated("FILTNAME", service, "Clear")      # no enumerators in code
        DFW.Keyword.Boolean("LAMPON", service)
        DFW.Keyword.Double("ATTEN", service, 12.345)
        DFW.Keyword.Basic("FRAMENO", service, "3")                # generic: the XML's type
        DFW.Keyword.DoubleArray("RACKTEMPS", service)

    svc = DFW.Service("demo", CFG, setup, xml=BUNDLE, start=False)
    svc._apply_initial(list(svc))
    filt = svc["FILTNAME"]
    assert filt.ascii == "Clear" and filt.value == "0" and filt.value == "clear"
    assert dict(filt.mapping) == {"0": "Clear", "1": "Blue", "2": "Red", "3": "not homed yet"}
    assert filt.mapping[2] == "Red" and filt.mapping["RED"] == "2"
    assert filt.description == "Filter in the beam" and "beam" in filt.help
    filt.set("NOT HOMED YET")            # names with spaces, any case
    assert filt.ascii == "not homed yet" and filt.value == "3"
    lamp = svc["LAMPON"]
    lamp.set("On")
    assert lamp.ascii == "on" and lamp.value == "1" and lamp.value == "ON" and lamp.binary is True
    atten = svc["ATTEN"]
    assert atten.ascii == "12.35" and atten.value == "12.345" and atten.units == "dB"
    with pytest.raises(ValueError, match="above the maximum 60"):
        atten.set(61)
    assert svc["FRAMENO"].type.type == "integer" and svc["FRAMENO"].value == "3"
    with pytest.raises(ValueError, match="below the minimum 0"):
        svc["FRAMENO"].set(-1)
    racks = svc["RACKTEMPS"]
    assert racks.labels == ("top of rack", "middle of rack", "glycol in") and racks.length == 3
    with pytest.raises(ValueError, match="2 elements, expected 3"):
        racks.set([1.0, 2.0])
    racks.set("1 2 3")
    assert racks.ascii == "1.00 2.00 3.00" and racks.binary == [1.0, 2.0, 3.0]
    # declared, not created in code: served as plain keywords of their type
    assert svc["CCDTEMP"].readonly and svc["CCDTEMP"].serverside("period") == "5"
    assert svc["CCDTEMP"].serverside("missing") is None
    assert svc["STATUS"].type.type == "mask" and svc["OBSERVER"].type.type == "string"
    svc["STATUS"].set("door open, power fail")
    assert svc["STATUS"].value == "18" and svc["STATUS"].ascii == "door open, power fail"


def test_code_wins_over_the_xml_and_a_typed_class_keeps_its_type(caplog: Any) -> None:
    def setup(service: Any) -> None:
        DFW.Keyword.Double("ATTEN", service, units="mB", maximum=10)
        DFW.Keyword.Integer("OBSERVER", service)

    svc = Service("demo", CFG, setup, xml=BUNDLE)
    assert svc["ATTEN"].units == "mB" and svc["ATTEN"].type.maximum == 10
    assert svc["OBSERVER"].type.type == "integer"
    assert "declares a string keyword; the code's Integer keeps its type integer" in caplog.text


def test_serve_reads_xml_by_content_or_name(tmp_path: Path) -> None:
    from cauldron_zmq.commands.serve import split_files
    odd = tmp_path / "wheel.bundle"
    shutil.copy(BUNDLE, odd)
    toml = tmp_path / "k.toml"
    toml.write_text('[keyword.X]\ntype = "integer"\n')
    assert split_files([str(odd), str(toml), str(tmp_path), "x.XML"]) == (
        [str(toml)], [str(odd), str(tmp_path), "x.XML"])


def test_initial_values_and_dispatchers_of_bundles(tmp_path: Path) -> None:
    one = bundle(tmp_path, """
        <keyword><name>A</name><type>integer</type>
          <serverside><initialize><value>7</value><note>x</note></initialize>
          </serverside></keyword>""",
                 name="one.xml")
    two = tmp_path / "two.xml"
    two.write_text(one.read_text().replace("demo_1", "demo_2").replace(">A<", ">B<"))
    svc = Service("demo", CFG, xml=tmp_path)
    assert svc.keywords() == ["A", "B"] and svc["A"].initial == "7"
    svc._apply_initial(list(svc))
    assert svc["A"].value == 7 and svc["B"].value == 7
    first = Service("demo", CFG, dispatcher="demo_1", xml=tmp_path)
    assert first.keywords() == ["A"] and "B" in first.declarations
    second = Service("demo", CFG, dispatcher="demo_2", xml=tmp_path,
                     setup=lambda s: DFW.Keyword.Basic("A", s))     # typed by the XML anyway
    assert second.keywords() == ["A", "B"] and second["A"].type.type == "integer"


def test_xinclude_of_local_files(tmp_path: Path) -> None:
    """Bundles often include shared keywords (DISPnSTA...) from a common file."""
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "disp.xml").write_text(
        "<keyword><name>DISP1STA</name><type>enumerated</type><values>"
        "<entry><key>0</key><value>ready</value></entry>"
        "<entry><key>1</key><value>shutting down</value></entry></values></keyword>")
    (tmp_path / "common" / "more.xml").write_text(
        '<bundle><keyword><name>DISP1MSG</name><type>string</type></keyword></bundle>')
    main = tmp_path / "main.xml"
    main.write_text('<bundle name="m" service="demo" xmlns:xi="http://www.w3.org/2001/XInclude">'
                    '<xi:include href="common/disp.xml"/><xi:include href="common/more.xml"/>'
                    "<keyword><name>OWN</name><type>integer</type></keyword></bundle>")
    names = [d.name for d in ktlxml.read_bundle(main).keywords]
    assert names == ["DISP1STA", "DISP1MSG", "OWN"]
    (tmp_path / "common" / "disp.xml").write_text('<!DOCTYPE x [<!ENTITY a "b">]><keyword/>')
    with pytest.raises(ConfigurationError, match="declarations are refused"):
        ktlxml.read_bundle(main)
    main.write_text('<bundle xmlns:xi="http://www.w3.org/2001/XInclude">'
                    '<xi:include href="http://example.org/x.xml"/></bundle>')
    with pytest.raises(ConfigurationError, match="only local files"):
        ktlxml.read_bundle(main)
    main.write_text('<bundle xmlns:xi="http://www.w3.org/2001/XInclude">'
                    '<xi:include href="missing.xml"/></bundle>')
    with pytest.raises(ConfigurationError, match=r"<xi:include>: cannot read .*missing.xml"):
        ktlxml.read_bundle(main)


def test_serverside_timeout_and_progress_reach_describe(tmp_path: Path) -> None:
    bundle(tmp_path, """
        <keyword><name>FOCUS</name><type>double</type>
          <serverside><timeout>90</timeout><progress>FOCUSPROG</progress></serverside>
        </keyword>
        <keyword><name>FOCUSPROG</name><type>integer</type></keyword>""")
    svc = Service("demo", CFG, xml=tmp_path)
    assert svc["FOCUS"].timeout == 90.0 and svc["FOCUS"].progress == "FOCUSPROG"
    assert svc["FOCUS"].describe()["timeout"] == 90.0
    coded = Service("demo", CFG, xml=tmp_path, setup=lambda s: DFW.Double("FOCUS", s, timeout=5))
    assert coded["FOCUS"].timeout == 5.0                  # the code wins over the XML
    (tmp_path / "bad").mkdir()
    bad = bundle(tmp_path / "bad", """
        <keyword><name>BAD</name><type>double</type>
          <serverside><timeout>soon</timeout></serverside></keyword>""")
    with pytest.raises(ValueError, match="BAD: timeout must be a positive number"):
        Service("demo", CFG, xml=bad)
