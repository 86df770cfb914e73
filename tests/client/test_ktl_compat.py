"""KTL fidelity of the client, written from shared/reference/ktl-in-practice.md.

Real Keck programs call these names and branch on what they return, so every
case here runs against a real router and real DFW dispatchers on 127.0.0.1:
the expression forms found in the field (literally, services and all), the
False a wait returns on a timeout, the procedural monitor with data,
keywords that compare and compute by value, and refusals that are
ValueErrors.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from cauldron_zmq import DFW, ktl
from cauldron_zmq.errors import DispatcherError, ServiceNotFound, TimeoutError
from cauldron_zmq.expression import ExpressionError
from cauldron_zmq.testing import ServiceHarness, wait_until

STATUS = ["Ready", "Readout", "Start", "Busy"]


def _kbms(svc: Any) -> None:
    DFW.Integer("FOCMOVE", svc, initial=1)
    DFW.Integer("ARTPROG", svc, initial=40, maximum=100)
    DFW.Enumerated("SHUTTER", svc, enumerators=["Closed", "Open"], initial="Closed")
    DFW.Double("POS", svc, initial=-7.5)
    DFW.Double("LIMIT", svc, initial=5.0)
    DFW.String("NOVALUE", svc)                       # the dispatcher has no value for it
    DFW.String("LABEL", svc, initial="open")
    DFW.Enumerated("MOVE", svc, enumerators=["Moving", "INPOS"], initial="INPOS")
    DFW.Enumerated("STATE", svc, enumerators=STATUS, initial="Ready")
    DFW.Integer("PICKY", svc, initial=0, check=_even_only)


def _even_only(value: Any) -> None:
    if int(value) % 2:
        raise TypeError(f"PICKY takes even values, not {value}")


# service -> setup: one dispatcher each, all on the harness's router.
SERVICES: Dict[str, Any] = {
    "kpfexpose": lambda s: DFW.Enumerated("EXPOSE", s, enumerators=STATUS, initial="Readout"),
    "ao": lambda s: (DFW.Enumerated("OBAMSTST", s, enumerators=["MOVING", "INPOS"],
                                    initial="INPOS"),
                     DFW.String("OBAMNAME", s, initial="Mirror")),
    "kpffiu": lambda s: (DFW.Enumerated("ADC1STA", s, enumerators=STATUS, initial="Ready"),
                         DFW.Enumerated("ADC2STA", s, enumerators=STATUS, initial="Ready"),
                         DFW.Double("TTXVAX", s, initial=1.46),
                         DFW.Double("TTYVAX", s, initial=-0.74)),
    "kpffvc": lambda s: DFW.Double("SCIEXPTIME", s, initial=2.0),
    "kcas": lambda s: DFW.String("STATUS", s, initial="OK"),
    "kbds": lambda s: DFW.String("LOUTFILE", s, initial="kb0042.fits"),
    "kfcs": lambda s: DFW.String("LASTFILE", s, initial="kf0007.fits"),
    "kbes": lambda s: DFW.String("GRSTATUS", s, initial="Move complete"),
    "kpfguide": lambda s: (DFW.String("OUTDIR", s, initial="/s/sdata1701/kpfguide"),
                           DFW.Enumerated("TIPTILT_CONTROL", s, enumerators=["Inactive", "Active"],
                                          initial="Active")),
    "kpfcal": lambda s: DFW.Enumerated("OCTAGON", s, enumerators=["Home", "SoCal", "EtalonFiber"],
                                       initial="EtalonFiber"),
}


class Field:
    """The harness (service kbms) plus one more dispatcher per service of SERVICES."""

    def __init__(self, harness: ServiceHarness, dispatchers: Dict[str, Any]) -> None:
        self.harness = harness
        self.dispatchers = dispatchers

    def __getitem__(self, service: str) -> Any:
        return self.dispatchers[service]


@pytest.fixture(scope="module")
def fieldwork() -> Iterator[Field]:
    with ServiceHarness(_kbms, "kbms", pairs=len(SERVICES) + 4) as h:
        dispatchers = {"kbms": h.dispatcher}
        try:
            for name, setup in SERVICES.items():
                dispatchers[name] = DFW.Service(name, config=h.config, setup=setup).begin()
            for name in dispatchers:
                ktl.cache(name, config=h.config)
            yield Field(h, dispatchers)
        finally:
            ktl.cache_clear()
            for name, disp in dispatchers.items():
                if name != "kbms":
                    disp.shutdown()


@pytest.fixture
def field(fieldwork: Field) -> Iterator[Field]:
    """Back to the values the setups give, after each test."""
    yield fieldwork
    kbms = fieldwork["kbms"]
    for name, value in (("FOCMOVE", 1), ("ARTPROG", 40), ("SHUTTER", "Closed"), ("POS", -7.5),
                        ("LIMIT", 5.0), ("LABEL", "open"), ("MOVE", "INPOS")):
        kbms[name].set(value)


def later(delay: float, fn: Any) -> threading.Timer:
    timer = threading.Timer(delay, fn)
    timer.start()
    return timer


# ------------------------------------------------------ expressions, literally

REFERENCE_FORMS: List[Tuple[str, str, str, Any]] = [
    # expression, then a change (service, keyword, value) that makes it false
    ("$kbms.focmove == 1", "kbms", "FOCMOVE", 0),
    ("($kpfexpose.EXPOSE == 'Ready') or ($kpfexpose.EXPOSE == 'Readout')",
     "kpfexpose", "EXPOSE", "Busy"),
    ("($ao.OBAMSTST == INPOS) and ($ao.OBAMNAME == Mirror)", "ao", "OBAMNAME", "Lens"),
    ("($kpffiu.ADC1STA == Ready) and ($kpffiu.ADC2STA == Ready)", "kpffiu", "ADC2STA", "Busy"),
    ("($kpffvc.SCIEXPTIME > 2.0-0.1)", "kpffvc", "SCIEXPTIME", 1.85),
    ("($kpffiu.TTXVAX >= 1.5-0.05) and ($kpffiu.TTYVAX >= -0.7-0.05)",
     "kpffiu", "TTYVAX", -0.76),
    ("(kpfexpose.EXPOSE != Start)", "kpfexpose", "EXPOSE", "Start"),
    ("kcas.status == OK", "kcas", "STATUS", "Error"),
    ('$kbds.loutfile != "       "', "kbds", "LOUTFILE", "       "),
    ('$kfcs.lastfile != ""', "kfcs", "LASTFILE", ""),
    ('$kbes.grstatus=="Move complete"', "kbes", "GRSTATUS", "Moving"),
    ("$kpfguide.OUTDIR == '/s/sdata1701/kpfguide'", "kpfguide", "OUTDIR", "/tmp"),
    ("($kpfcal.OCTAGON == EtalonFiber)", "kpfcal", "OCTAGON", "Home"),
    ("($kpfguide.TIPTILT_CONTROL == Active)", "kpfguide", "TIPTILT_CONTROL", "Inactive"),
    ("($kbms.artprog!=100)", "kbms", "ARTPROG", 100),
]


@pytest.mark.parametrize("text, service, keyword, breaking", REFERENCE_FORMS)
def test_reference_expressions_end_to_end(field: Field, text: str, service: str,
                                          keyword: str, breaking: Any) -> None:
    disp = field[service][keyword]
    original = disp.value
    expr = ktl.Expression(text)
    assert str(expr) == text and text in repr(expr)
    assert expr.evaluate() is True
    assert expr.wait(timeout=2) is True
    assert ktl.waitFor(text, timeout=2) is True
    disp.set(breaking)
    try:
        assert expr.evaluate() is False                   # reusable, read afresh
        assert expr.wait(timeout=0.1) is False
        assert ktl.waitfor(text, timeout=0.1) is False
        later(0.1, lambda: disp.set(original))
        assert expr.wait(timeout=5) is True
    finally:
        disp.set(original)


def test_waitfor_false_is_reachable(field: Field) -> None:
    """Scripts write ``if result is False:`` and ``if result == False:``."""
    result = ktl.waitFor("$kbms.FOCMOVE == 99", timeout=0.1)
    assert result is False and result == False  # noqa: E712 - as the scripts write it


def test_wait_without_timeout_waits_as_long_as_it_takes(field: Field) -> None:
    """timeout=None is KTL's "no limit", not the service's 0.2 s request timeout."""
    svc = ktl.Service("kbms", config=field.harness.config, timeout=0.2)
    try:
        kw = svc["FOCMOVE"]
        later(0.6, lambda: field["kbms"]["FOCMOVE"].set(5))
        assert kw.waitFor("== 5") is True
        later(0.6, lambda: field["kbms"]["FOCMOVE"].set(6))
        assert kw.wait(operator="==", value=6) is True
        kw.monitor()
        later(0.6, lambda: field["kbms"]["FOCMOVE"].set(7))
        assert kw.wait() is True and kw["ascii"] == "7"
    finally:
        svc.shutdown()


def test_raise_on_timeout_is_the_raising_spelling(field: Field) -> None:
    kw = ktl.cache("kbms", "FOCMOVE")
    with pytest.raises(TimeoutError, match="kbms.FOCMOVE='1'"):
        ktl.waitFor("$kbms.FOCMOVE == 99", timeout=0.1, raise_on_timeout=True)
    with pytest.raises(TimeoutError):
        ktl.Expression("$kbms.FOCMOVE == 99").wait(0.1, raise_on_timeout=True)
    with pytest.raises(TimeoutError):
        kw.waitFor("== 99", timeout=0.1, raise_on_timeout=True)
    with pytest.raises(TimeoutError):
        kw.wait(timeout=0.1, raise_on_timeout=True)


def test_failures_that_are_not_timeouts_raise(field: Field, monkeypatch: Any) -> None:
    with pytest.raises(KeyError):
        ktl.waitFor("$kbms.NOSUCH == 1", timeout=0.1)
    monkeypatch.setenv("CAULDRON_ZMQ_CONFIG", str(field.harness.config_path))
    with pytest.raises(ServiceNotFound):
        ktl.Expression("$nosuchservice.A == 1").evaluate()
    with pytest.raises(ServiceNotFound):
        ktl.waitFor("$nosuchservice.A == 1", timeout=0.1)
    with pytest.raises(ExpressionError):
        ktl.waitFor("$kbms.FOCMOVE ==", timeout=0.1)
    with pytest.raises(ExpressionError):
        ktl.Expression("1 == 1")                      # reads no keyword
    with pytest.raises(ExpressionError):
        ktl.cache("kbms", "FOCMOVE").waitFor("FOCMOVE == 1", timeout=0.1)
    with pytest.raises(ValueError):
        ktl.cache("kbms", "FOCMOVE").wait(timeout=0.1, operator="=~", value=1)


def test_a_gone_dispatcher_raises_instead_of_returning_false() -> None:
    """A wait that could not be decided is no timeout: a script must not take that branch."""
    with ServiceHarness(lambda s: DFW.Integer("A", s, initial=1), "gone") as h:
        svc = h.client(timeout=0.3)
        watched, other = svc["A"], h.client(timeout=0.3)["A"]
        watched.monitor()
        h.stop_dispatcher()
        with pytest.raises(ktl.CauldronError):
            other.waitFor("== 2", timeout=0.2)          # its priming read gets no answer
        assert wait_until(lambda: not watched.connected, 5, message="liveness expiry")
        with pytest.raises(TimeoutError, match="silent"):
            watched.wait(timeout=0.1)                   # monitored: nothing to read first
        with pytest.raises(TimeoutError, match="silent"):
            watched.waitFor("== 2", timeout=0.1)


def test_shutdown_wakes_a_wait_without_timeout(fieldwork: Field) -> None:
    svc = ktl.Service("kbms", config=fieldwork.harness.config)
    kw = svc["FOCMOVE"]
    errors: List[BaseException] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        try:
            kw.waitFor("== 12345")
        except ktl.ServiceShutDown as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    started.wait(5)
    svc.shutdown()
    thread.join(5)
    assert not thread.is_alive() and errors


# ------------------------------------------------------- keyword-relative waits

@pytest.mark.parametrize("keyword, relative, before, after", [
    ("LABEL", '=="OK"', "Fault", "OK"),
    ("LABEL", '== "open"', "shut", "Open"),              # strings ignore case
    ("MOVE", "== INPOS", "Moving", "INPOS"),             # a bare enumerator name
    ("STATE", "!=Busy", "Busy", "Ready"),
    ("FOCMOVE", "==0", 4, 0),
    ("FOCMOVE", "==-1", 4, -1),
    ("LABEL", "=='Null'", "Full", "Null"),
    ("FOCMOVE", "== 1", 4, 1),
    ("SHUTTER", "==Closed", "Open", "Closed"),
    ("LIMIT", ">= 5.0", 4.5, 5.5),
])
def test_keyword_relative_wait_forms(field: Field, keyword: str, relative: str,
                                     before: Any, after: Any) -> None:
    kw = ktl.cache("kbms", keyword)
    disp = field["kbms"][keyword]
    disp.set(before)
    assert kw.waitFor(relative, timeout=0.1) is False
    later(0.1, lambda: disp.set(after))
    assert kw.waitFor(relative, timeout=5) is True
    assert kw.waitfor(relative, 1) is True


def test_wait_waits_for_the_next_update_after_the_call(field: Field) -> None:
    kw = ktl.cache("kbms", "POS")
    kw.monitor()
    try:
        assert kw.wait(timeout=0.2) is False              # nothing new since monitor()
        later(0.1, lambda: field["kbms"]["POS"].set(-8.0))
        assert kw.wait(timeout=5) is True
        assert kw["ascii"] == "-8.0"
        task = ktl.cache("kbms", "ARTPROG").write(42, wait=False)
        assert ktl.cache("kbms", "ARTPROG").wait(sequence=task, timeout=5) is True
    finally:
        kw.monitor(start=False)


# ------------------------------------------------------ procedural monitor

def test_procedural_monitor_with_callback_and_data(field: Field) -> None:
    seen: List[Tuple[Any, Any, Any]] = []
    data = object()
    ktl.monitor("kbms", "ARTPROG", lambda keyword, value, d: seen.append((keyword, value, d)),
                data)
    kw = ktl.cache("kbms", "ARTPROG")
    try:
        wait_until(lambda: seen, 3, message="the priming value")
        field["kbms"]["ARTPROG"].set(55)
        field["kbms"]["ARTPROG"].set(56)
        wait_until(lambda: [v for _, v, _ in seen][-2:] == ["55", "56"], 3,
                   message="a callback per update")
        assert all(k is kw and d is data for k, _, d in seen)
        assert all(isinstance(v, str) for _, v, _ in seen)
    finally:
        kw.monitor(start=False)


def test_procedural_monitor_shapes_that_cannot_be_honoured(field: Field) -> None:
    with pytest.raises(TypeError):
        ktl.monitor("kbms", "ARTPROG", "not callable", None)
    with pytest.raises(TypeError):
        ktl.monitor("kbms", "ARTPROG", print, 1, 2)
    with pytest.raises(TypeError):
        ktl.monitor("kbms", "ARTPROG", print, None, bogus=True)
    with pytest.raises(TypeError):
        ktl.monitor("kbms", "ARTPROG", True, True, True, True)
    ktl.monitor("kbms", "ARTPROG", start=False)       # today's form still works


# ------------------------------------------------------- keywords as values

def test_keywords_compare_and_compute_by_value(field: Field) -> None:
    pos, limit = ktl.cache("kbms", "POS"), ktl.cache("kbms", "LIMIT")
    focmove, shutter = ktl.cache("kbms", "FOCMOVE"), ktl.cache("kbms", "SHUTTER")
    pos.read(), limit.read(), focmove.read(), shutter.read()
    assert abs(pos) > limit and pos < limit and not pos > 5
    assert focmove == 1 and focmove != 2 and focmove >= 1 and focmove <= 1
    assert shutter == "Closed" and shutter == 0 and shutter != "Open"
    assert pos - 1.5 == -9.0 and 1.5 - pos == 9.0 and pos * 2 == -15.0
    assert pos / 2 == -3.75 and -pos == 7.5 and limit + pos == -2.5
    assert int(pos) == -7 and float(limit) == 5.0 and round(pos) == -8
    assert str(pos) == "-7.5" and "%s" % pos == "-7.5" and f"{pos}" == "-7.5"
    assert "%.2f" % limit == "5.00" and "%d" % focmove == "1" and f"{limit:.1f}" == "5.0"
    assert str(shutter) == "Closed"
    assert (limit == 5.0) is True and (limit == pos) is False
    with pytest.raises(TypeError):
        pos < "abc"  # noqa: B015 - the comparison is the test


def test_mechanism_code_computes_with_keywords(field: Field) -> None:
    """As a camera script does: ``(exposureTime + triggerTime) * seq``, ``'%d' % imno``."""
    limit, focmove, artprog = (ktl.cache("kbms", n) for n in ("LIMIT", "FOCMOVE", "ARTPROG"))
    for kw in (limit, focmove, artprog):
        kw.monitor()
    try:
        wait_time = (limit + focmove) * artprog
        assert wait_time == (5.0 + 1) * 40 and wait_time > 1
        assert "%s: %.3f s exposure %d of %d (image # %d)" % ("now", limit, 1, 2, artprog) == \
            "now: 5.000 s exposure 1 of 2 (image # 40)"
        assert artprog.binary == 40 and artprog.ascii == "40"
        field["kbms"]["ARTPROG"].set(41)
        wait_until(lambda: artprog == 41, 3, message="the broadcast")
        assert artprog != 40 and str(artprog) == "41"
    finally:
        for kw in (limit, focmove, artprog):
            kw.monitor(start=False)


def test_ordering_with_enumerator_names(field: Field) -> None:
    assert ktl.waitFor("($kpfexpose.EXPOSE >= Ready)", timeout=1) is True
    assert ktl.waitFor("($kpfexpose.EXPOSE > Start)", timeout=0.1) is False


def test_keywords_stay_usable_as_dict_keys_and_in_sets(field: Field) -> None:
    a, b = ktl.cache("kbms", "FOCMOVE"), ktl.cache("kbms", "ARTPROG")
    field["kbms"]["ARTPROG"].set(1)
    b.read(), a.read()
    assert a == b                                      # same value...
    table = {a: "focus", b: "art"}
    assert len({a, b}) == 2 and table[a] == "focus" and table[b] == "art"   # ...still two keys
    assert a in {a} and ktl.cache("kbms", "FOCMOVE") in table
    field["kbms"]["FOCMOVE"].set(3)
    wait_until(lambda: a["ascii"] == "3", 3)
    assert table[a] == "focus"                         # a new value does not move it


def test_populated_and_ascii_before_any_value(field: Field) -> None:
    kw = ktl.cache("kbms", "NOVALUE")
    assert kw["populated"] is False and kw["ascii"] is None and kw["binary"] is None
    assert list(kw.history) == []
    field["kbms"]["NOVALUE"].set("now")
    assert kw.read() == "now"
    assert kw["populated"] is True and kw["ascii"] == "now" and kw["bin"] == "now"
    assert kw._current_value(both=True) == ("now", "now")     # Cauldron's own test uses it
    entry = kw.history[-1]
    assert entry.name == "NOVALUE" and entry.ascii == "now" and len(kw.history) == 1


# ------------------------------------------------------------- refusals

def test_every_refusal_of_a_value_is_a_value_error(field: Field) -> None:
    artprog, shutter, picky = (ktl.cache("kbms", n) for n in ("ARTPROG", "SHUTTER", "PICKY"))
    for refused in (lambda: artprog.write(1000),        # range, found by the dispatcher
                    lambda: artprog.write("1000"),
                    lambda: shutter.write("Ajar"),      # no such enumerator
                    lambda: picky.write(3)):            # a check hook raising TypeError
        with pytest.raises(ValueError) as info:
            refused()
        assert isinstance(info.value, DispatcherError)
        assert info.value.code == "invalid-value"
    with pytest.raises(ValueError) as local:
        artprog.write([1, 2])                          # found by the client
    assert not isinstance(local.value, DispatcherError)
    with pytest.raises(ValueError):
        artprog.write(None)


# ------------------------------------------------------------- the module

def test_dir_and_star_import_show_only_ktl_names() -> None:
    names = dir(ktl)
    assert "waitFor" in names and "Expression" in names and "cache" in names
    assert "threading" not in names and "parse_expression" not in names
    assert "Config" not in names
    # every error a script catches, those of bounded queues and sizes included
    from cauldron_zmq import errors
    for name in ("KeywordBusy", "MessageTooLarge", "TimeoutError", "ConversionError",
                 "DispatcherDown", "DispatcherSilent"):
        assert name in names and getattr(ktl, name) is getattr(errors, name)
    scope: Dict[str, Any] = {}
    exec("from cauldron_zmq.ktl import *", scope)  # noqa: S102 - the star import is the test
    public = {k for k in scope if not k.startswith("__")}
    assert public == set(ktl.__all__)
