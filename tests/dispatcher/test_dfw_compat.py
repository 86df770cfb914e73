"""DFW as KTL dispatchers are written: construct-then-sleep, ascii values, KTL XML, KTL config.

The dispatchers here are written the way Keck's are (a module-level
``DFW.Service(name, config, setup)`` followed by ``while True: time.sleep(1)``,
hooks comparing ``value == '1'``, enumerators only in the XML, hooks bound
with ``types.MethodType``) and run as real processes against a real router,
driven by a real ``ktl`` client.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from cauldron_zmq import DFW, ktl
from cauldron_zmq.config import DEFAULT
from cauldron_zmq.dispatcher import Service as NativeService
from cauldron_zmq.errors import CauldronError, ConfigurationError
from cauldron_zmq.testing import ServiceHarness, identify_pid, wait_until

pytestmark = pytest.mark.timeout(90)

BUNDLE = Path(__file__).resolve().parents[1] / "data" / "ktl-wheel.xml"
CFG = DEFAULT.replace(router={"enable": False})

#: KTL's own dispatcher configuration: not TOML, and nothing cauldron_zmq needs.
STDIOSVC_CONF = textwrap.dedent("""\
    # stdiosvc.conf for the demo dispatcher
    service: demo
    dispatcher: demo_dispatch_1
    [broadcast]
    interval 5
""")

#: A dispatcher as KTL's are written.
DISPATCHER = textwrap.dedent('''
    import sys, time, types
    from cauldron_zmq import DFW

    class Lamp(DFW.Keyword.Boolean):
        def write(self, value):
            if value == '1':
                self.service['OBSERVER'].set('lamp lit')
            else:
                self.service['OBSERVER'].set('lamp dark')

    class Frames(DFW.Keyword.Integer):
        def read(self):
            return str(int(self.value) + 1)

    def check_attenuation(self, value):
        if float(value) > 50:
            raise ValueError('attenuation ' + value + ' is too loud')

    def setup(service):
        Lamp('LAMPON', service)
        DFW.Keyword.Enumerated('FILTNAME', service, 'Clear')
        atten = DFW.Keyword.Double('ATTEN', service, '1.5')
        atten.check = types.MethodType(check_attenuation, atten)
        Frames('FRAMENO', service, '0')

    service = DFW.Service('demo', sys.argv[1], setup)
    service['CCDTEMP'].set('-110.25')
    while True:
        time.sleep(0.05)
        if service['FILTNAME'].value == '2' and service['OBSERVER'].value != 'saw Red':
            service['OBSERVER'].set('saw Red')
''')


@pytest.fixture
def ktl_dispatcher(tmp_path: Path) -> Iterator[Any]:
    """The DISPATCHER program in a subprocess; yields (harness, process, log path)."""
    harness = ServiceHarness(service="demo", directory=tmp_path)
    harness.start_router()
    reldir = tmp_path / "rel"
    (reldir / "data" / "demo").mkdir(parents=True)
    shutil.copy(BUNDLE, reldir / "data" / "demo" / "wheel.xml")
    (tmp_path / "stdiosvc.conf").write_text(STDIOSVC_CONF)
    (tmp_path / "dispatcher.py").write_text(DISPATCHER)
    env = dict(os.environ, RELDIR=str(reldir), CAULDRON_ZMQ_CONFIG=str(harness.config_path))
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    log = tmp_path / "dispatcher.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(tmp_path / "dispatcher.py"),
                                 str(tmp_path / "stdiosvc.conf")], env=env, cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        def serving() -> bool:
            assert proc.poll() is None, log.read_text()
            return identify_pid(harness.config, "demo") == proc.pid
        wait_until(serving, 20, 0.05, "the KTL-style dispatcher serving")
        yield harness, proc, log
    finally:
        proc.send_signal(signal.SIGTERM)       # a KTL dispatcher just dies on SIGTERM
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        harness.close()


def test_a_ktl_dispatcher_runs_unchanged(ktl_dispatcher: Any) -> None:
    harness, proc, log = ktl_dispatcher
    svc = harness.client()
    # the KTL config was logged, not refused; the constructor started serving
    assert "stdiosvc.conf is a KTL configuration (not TOML)" in log.read_text()
    assert "$CAULDRON_ZMQ_CONFIG" in log.read_text()
    # every XML keyword is served, those not created in code as plain keywords
    assert sorted(svc.keywords()) == ["ATTEN", "CCDTEMP", "FILTNAME", "FRAMENO", "LAMPON",
                                      "OBSERVER", "RACKTEMPS", "STATUS"]
    assert svc["CCDTEMP"].read() == "-110.2"           # the XML's %.1f
    # an Enumerated with no enumerators in code, names from the XML
    assert svc["FILTNAME"].read() == "Clear"
    svc["FILTNAME"].write("not homed yet")
    assert svc["FILTNAME"].read() == "not homed yet"
    assert svc["FILTNAME"].read(binary=True) == 3
    # the main loop's `service['FILTNAME'].value == '2'` takes its branch
    svc["FILTNAME"].write("Red")
    wait_until(lambda: svc["OBSERVER"].read() == "saw Red", 10, 0.05, "the main loop's branch")
    svc["FILTNAME"].write("Clear")     # so the main loop no longer sets 'saw Red' again
    # the write hook's `if value == '1':` takes its branch; the XML names are the ascii values
    svc["LAMPON"].write("on")
    assert svc["OBSERVER"].read() == "lamp lit" and svc["LAMPON"].read() == "on"
    svc["LAMPON"].write(0)
    assert svc["OBSERVER"].read() == "lamp dark" and svc["LAMPON"].read() == "off"
    svc["LAMPON"].write("On")                  # names in any case
    assert svc["LAMPON"].read() == "on"
    # a check bound with types.MethodType, receiving ascii
    with pytest.raises(CauldronError, match="attenuation 55.0 is too loud"):
        svc["ATTEN"].write(55)
    svc["ATTEN"].write("12.345")
    assert svc["ATTEN"].read() == "12.35"
    # the XML's range and capability
    with pytest.raises(CauldronError, match="above the maximum 60"):
        svc["ATTEN"].write(61)
    with pytest.raises(CauldronError, match="read-only"):
        svc["CCDTEMP"].write(3)
    # a read hook that returns str(int(self.value) + 1)
    assert svc["FRAMENO"].read() == "1" and svc["FRAMENO"].read() == "2"
    assert proc.poll() is None


def test_serve_a_bundle_with_no_code(tmp_path: Path) -> None:
    """``cauldron-zmq serve demo wheel.xml``: the XML's keywords, types and rules."""
    with ServiceHarness(BUNDLE, "demo", subprocess=True, directory=tmp_path) as harness:
        svc = harness.client()
        assert "FILTNAME" in svc.keywords() and len(svc.keywords()) == 8
        svc["FILTNAME"].write("blue")
        assert svc["FILTNAME"].read() == "Blue"
        with pytest.raises(CauldronError, match="read-only"):
            svc["STATUS"].write("overheat, power fail")
        svc["LAMPON"].write("ON")
        assert svc["LAMPON"].read() == "on" and svc["LAMPON"].read(binary=True) is True
        with pytest.raises(CauldronError):
            svc["FILTNAME"].write("Green")
        with pytest.raises(CauldronError, match="below the minimum 0"):
            svc["FRAMENO"].write(-1)
        svc["FRAMENO"].write("12")
        assert svc["FRAMENO"].read() == "12"
        svc["ATTEN"].write(3)
        assert svc["ATTEN"].read() == "3.00"
        with pytest.raises(CauldronError, match="read-only"):
            svc["RACKTEMPS"].write([1, 2, 3])


# =============================================================================
# In-process: the rules, one by one
# =============================================================================

def test_constructing_starts_serving_and_begin_is_harmless(tmp_path: Path) -> None:
    with ServiceHarness(service="x", directory=tmp_path) as harness:
        svc = DFW.Service("started", harness.config,
                          lambda s: DFW.Keyword.Integer("N", s, initial=1))
        try:
            assert svc.running and svc.begin() is svc and svc.running
            with ktl.Service("started", config=harness.config) as client:
                assert client["N"].read() == "1"
        finally:
            svc.shutdown()
        later = DFW.Service("later", harness.config, start=False)
        assert not later.running
        later.shutdown()


def test_config_ktl_toml_and_missing(tmp_path: Path, monkeypatch: Any, caplog: Any) -> None:
    conf = tmp_path / "stdiosvc.conf"
    conf.write_text(STDIOSVC_CONF)
    monkeypatch.delenv("CAULDRON_ZMQ_CONFIG", raising=False)
    with caplog.at_level(logging.WARNING, "cauldron_zmq.DFW"):
        svc = DFW.Service("k", str(conf), start=False)
    assert svc.config == DEFAULT
    [line] = [r.getMessage() for r in caplog.records if "KTL configuration" in r.getMessage()]
    assert str(conf) in line and "the built-in defaults" in line
    toml = tmp_path / "c.toml"
    toml.write_text('[zmq]\ndispatch-port = 7001\n')
    assert DFW.Service("k", toml, start=False).config.zmq.dispatch_port == 7001
    toml.write_text('[zmq]\ndispatch-prot = 7001\n')
    with pytest.raises(ConfigurationError, match="dispatch-prot"):
        DFW.Service("k", toml, start=False)        # TOML keeps its meaning, errors included
    with pytest.raises(ConfigurationError, match="not found"):
        DFW.Service("k", tmp_path / "missing.conf", start=False)


class Recorder(DFW.Keyword.Integer):
    """Records what each hook receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.seen: List[Any] = []
        super().__init__(*args, **kwargs)

    def check(self, value: Any) -> None:
        self.seen.append(("check", value))

    def write(self, value: Any) -> None:
        self.seen.append(("write", value))

    def postread(self, value: Any) -> Any:
        self.seen.append(("postread", value))
        return super().postread(value)


@pytest.mark.parametrize("make, mode, shown", [
    (lambda setup: DFW.Service("m", CFG, setup, start=False), "ascii", "5"),
    (lambda setup: DFW.Service("m", CFG, setup, values="native", start=False), "native", 5),
    (lambda setup: NativeService("m", CFG, setup), "native", 5),
])
def test_value_modes(make: Any, mode: str, shown: Any) -> None:
    svc = make(lambda s: (Recorder("R", s), DFW.Keyword.Enumerated(
        "E", s, enumerators=["Off", "On"])))
    kw = svc["R"]
    assert svc.values == kw.values == mode
    kw.modify("5")
    assert kw.seen == [("check", shown), ("write", shown), ("check", shown)]  # prewrite, set
    assert kw.value == shown and type(kw.value) is type(shown) and kw.binary == 5
    kw.seen.clear()
    kw.update()
    assert kw.seen == [("postread", shown)]
    kw.set(7)
    assert kw.value == ("7" if mode == "ascii" else 7) and kw["value"] == kw.value
    assert kw["binary"] == kw["bin"] == 7 and kw.ascii == "7"
    svc["E"].set("On")
    if mode == "ascii":
        assert svc["E"].value == "1" and svc["E"].value == "on" and int(svc["E"].value) == 1
    else:
        assert svc["E"].value == 1
    with pytest.raises(ValueError, match="values must be one of"):
        NativeService("m", CFG, values="binary")


def test_ktl_class_hierarchy_and_container_rules() -> None:
    svc = DFW.Service("h", CFG, start=False)
    for cls in (DFW.Keyword.Boolean, DFW.Keyword.Integer, DFW.Keyword.Double,
                DFW.Keyword.String, DFW.Keyword.Enumerated, DFW.Keyword.Mask,
                DFW.Keyword.IntegerArray, DFW.Keyword.DoubleArray):
        assert issubclass(cls, DFW.Keyword.Basic), cls
    assert DFW.Keyword.Basic is DFW.Keyword.Keyword and DFW.Basic is DFW.Keyword.Basic
    text = DFW.Keyword.String("TEXT", svc, initial="an error occurred")
    number = DFW.Keyword.Double("NUM", svc)
    svc._apply_initial(list(svc))
    assert "error" in text and "nothing" not in text and "x" not in number
    assert number.cast("2.5") == 2.5 and DFW.Keyword.Integer("I", svc).cast("3") == 3
    with pytest.raises(ValueError):
        number.cast("many")
    with pytest.raises(RuntimeError, match="already exists"):
        DFW.Keyword.Integer("text", svc)
    with pytest.raises(RuntimeError):
        svc["NUM"] = DFW.Keyword.Double("NUM", DFW.Service("other", CFG, start=False))
    svc["TEXT"] = text                                    # the same keyword again is fine
    with pytest.raises(ValueError, match="gives native values; service 'h' gives ascii"):
        svc["T2"] = DFW.Keyword.String("T2", NativeService("n", CFG))
    enum = DFW.Keyword.Enumerated("E", svc, enumerators={5: "five", 1: "one"})
    assert enum.mapping == {"1": "one", "5": "five"} and enum.mapping["FIVE"] == "5"
    assert 5 in enum.mapping and "six" not in enum.mapping


def test_hooks_bound_after_construction_with_methodtype() -> None:
    seen: List[Any] = []

    def write(self: Any, value: Any) -> None:
        seen.append((self.name, value))

    def read(self: Any) -> str:
        return "42"

    svc = DFW.Service("b", CFG, lambda s: DFW.Keyword.Integer("N", s, initial=0), start=False)
    kw = svc["N"]
    assert kw.fast_write() and kw.fast_read()
    kw.write = types.MethodType(write, kw)
    kw.read = types.MethodType(read, kw)
    assert not kw.fast_write() and not kw.fast_read()     # the request path will call them
    kw.modify(3)
    kw.update()
    assert seen == [("N", "3")] and kw.value == "42"


def test_translate_gets_a_string_in_ascii_mode_and_values_copy() -> None:
    import copy
    import pickle
    seen: List[Any] = []

    def translate(value: Any) -> Any:
        seen.append(value)
        return {"HOME": "0"}.get(value.upper(), value)

    svc = DFW.Service("t", CFG, lambda s: DFW.Keyword.Integer("POS", s, translate=translate),
                      start=False)
    svc["POS"].modify("home")
    svc["POS"].modify(7)                            # a client's JSON number
    svc["POS"].set(8)
    assert seen == ["home", "7", "8"] and svc["POS"].value == "8"
    enum = DFW.Keyword.Enumerated("E", svc, enumerators=["Off", "On"], initial="On")
    enum.set("On")
    value = enum.value
    for twin in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
        assert twin == "1" and str(twin) == "1"
    assert value.name == "On" and value != "Off" and value != "0" and value in ("On", "Off")


def test_a_ktl_config_that_parses_as_toml_is_still_ktls(tmp_path: Path, caplog: Any) -> None:
    conf = tmp_path / "stdiosvc.conf"
    conf.write_text("# only comments\n")
    with caplog.at_level(logging.WARNING, "cauldron_zmq.DFW"):
        DFW.Service("k", conf, start=False)
    assert "is a KTL configuration" in caplog.text
    import configparser
    caplog.clear()
    with caplog.at_level(logging.WARNING, "cauldron_zmq.DFW"):
        DFW.Service("k", configparser.ConfigParser(), start=False)
    assert "a ConfigParser is a KTL/Cauldron configuration object" in caplog.text
    caplog.clear()
    conf.write_text("[zmq]\ndispatch-port = 7002\n")          # ours, whatever its name
    assert DFW.Service("k", conf, start=False).config.zmq.dispatch_port == 7002
    assert "KTL configuration" not in caplog.text


def test_the_harness_serves_xml_in_process(tmp_path: Path) -> None:
    with ServiceHarness(BUNDLE, "demo", directory=tmp_path) as harness:
        svc = harness.client()
        svc["LAMPON"].write("on")
        assert harness.dispatcher["LAMPON"].value == "1" and svc["LAMPON"].read() == "on"


def test_boolean_names_in_code_are_the_ascii_clients_read() -> None:
    """docs/types.rst: a boolean's names are its ascii; no names, '1'/'0'; hooks the number."""
    seen: List[Any] = []

    class Shutter(DFW.Keyword.Boolean):
        def write(self, value: Any) -> None:
            seen.append(value)

    def setup(service: Any) -> None:
        Shutter("SHUTTER", service, initial=False, enumerators=["Closed", "Open"])
        DFW.Keyword.Boolean("PLAIN", service, initial=True)

    with ServiceHarness(setup, "names") as harness:
        svc = harness.client()
        assert svc["SHUTTER"].read() == "Closed" and svc["PLAIN"].read() == "1"
        svc["SHUTTER"].write("open")
        assert seen == ["1"] and seen[0] == "Open" and seen[0].name == "Open"
        assert svc["SHUTTER"].read() == "Open" and svc["SHUTTER"].read(binary=True) is True
        assert harness.dispatcher["SHUTTER"].ascii == "Open"
        assert harness.dispatcher["SHUTTER"].type.to_ascii(True) == "1"


@pytest.mark.parametrize("name", ["a/b", "A\\B", "..", "a b", "", "x\x01y", "K" * 257])
def test_keyword_names_use_the_one_validator(name: str) -> None:
    """names.check_name (issue 10 item 4) at construction, not a refused registration later."""
    svc = DFW.Service("names", CFG, start=False)
    with pytest.raises(ValueError, match="keyword name"):
        DFW.Keyword.Basic(name, svc)
    assert list(svc) == []


def test_keyword_names_ktl_uses_are_served() -> None:
    """DATE-OBS, underscores, digits, dots, any case: registered and read end to end."""
    names = ["DATE-OBS", "ccd_temp2", "FOC1", "X.Y", "tel-ra_2"]

    def setup(service: Any) -> None:
        for i, name in enumerate(names):
            DFW.Keyword.Integer(name, service, initial=i)

    with ServiceHarness(setup, "names") as harness:
        svc = harness.client()
        assert sorted(svc.keywords()) == sorted(n.upper() for n in names)
        assert [svc[n].read() for n in names] == ["0", "1", "2", "3", "4"]


def test_service_log_is_callable_as_ktls(caplog: Any) -> None:
    svc = DFW.Service("logs", CFG, start=False)
    with caplog.at_level(logging.INFO, "cauldron_zmq.dispatcher.logs"):
        svc.log(logging.ERROR, "lost the %s", "controller")
        svc.log("warning", "a word level")
        svc.log.info("and the logger's methods")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "lost the controller"), ("WARNING", "a word level"),
        ("INFO", "and the logger's methods")]
    assert svc.log.name == "cauldron_zmq.dispatcher.logs"


def test_an_enumerated_keyword_filled_through_its_mapping(tmp_path: Path) -> None:
    """As the original Cauldron's own example does: no enumerators, then ``mapping[n] = name``."""
    def setup(service: Any) -> None:
        kwd = DFW.Keyword.types["enumerated"]("WFSCENTROID", service, initial="0")
        kwd.mapping[0] = "COG"
        kwd.mapping[1] = "QUAD"
        kwd.mapping[2] = "BINQUAD"

    with ServiceHarness(setup, "saotest", directory=tmp_path) as harness:
        kw = harness.dispatcher["WFSCENTROID"]
        assert kw.type.type == "enumerated" and kw.ascii == "COG" and kw.value == "0"
        client = harness.client()
        assert client["WFSCENTROID"].read() == "COG"
        client["WFSCENTROID"].write("binquad")
        assert client["WFSCENTROID"].read() == "BINQUAD" and kw.value == "2"
    svc = DFW.Service("m", CFG, start=False)
    kw = DFW.Keyword.Enumerated("E", svc)
    with pytest.raises(ValueError):
        kw.mapping[0] = " padded "                     # refused, and nothing changed
    assert dict(kw.mapping) == {} and kw.type.type == "integer"
    kw.mapping.update({0: "Off", 1: "On"})
    del kw.mapping[1]
    assert kw.type.enumerators == ((0, "Off"),)


def test_keyword_subclasses_as_field_code_writes_them() -> None:
    """Constructor kwargs set before super().__init__, update() overridden to set() strings,
    a Mask with its bits named nowhere (KTL's XML would), period() restarted from code."""
    class Status(DFW.Keyword.Mask):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["initial"] = "1"
            kwargs["period"] = 0.5
            super().__init__(*args, **kwargs)

        def update(self) -> None:
            self.set(str(5))                   # "Keyword set method requires a string"

    class Position(DFW.Keyword.Double):
        def __init__(self, name: str, service: Any, stage: Any, period: float = 30) -> None:
            self.stage = stage
            DFW.Keyword.Double.__init__(self, name, service, period=period)

        def update(self) -> None:
            self.set("{}".format(self.stage()))

    svc = DFW.Service("f", CFG, lambda s: (Status("STAT", s), Position("POS", s, lambda: -1)),
                      start=False)
    svc._apply_initial(list(svc))
    assert svc["STAT"].value == "1"
    svc["STAT"].update()
    svc["POS"].update()
    assert svc["STAT"].value == "5" and svc["POS"].value == "-1.0" and svc["POS"].binary == -1.0
    svc["POS"].period(0.5)
    svc["POS"].period(None)
