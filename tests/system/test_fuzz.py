"""Bad input: malformed, truncated, oversized and wrong-typed messages; bad files.

The router and a dispatcher (``cauldron-zmq serve``) run as real processes on
free loopback ports, shared by the tests of this module.  Two sources of
garbage:

* **bulk**: :mod:`scripts/fuzz`'s seeded generator -- over 100,000 messages in
  total, sent from raw DEALER sockets with a bounded window of unanswered
  messages, every reply checked (answered once, decodable, a documented error
  code, never ``internal``); afterwards both servers still answer ping,
  lookup, read and write correctly and their VmRSS grew by less than
  ``RSS_BOUND_MB``;
* **structured**: hypothesis builds messages field by field (a smaller
  number: generating is slow) and checks each reply against the request.

Also: ``ZMQ_MAXMSGSIZE`` cuts off a peer that sends one oversize frame while
others are served; regressions for the messages that used to kill a server;
and the command-line programs naming file, section and key of a bad file.
``scripts/fuzz --count 1000000`` is the long version.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest
import zmq
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cauldron_zmq import protocol
from cauldron_zmq.commands.serve import serve
from cauldron_zmq.router import RouterClient, main as router_main
from scripts_support import load_script

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(120)

#: Messages per server in CI (the two together exceed 100,000); FUZZ_COUNT overrides.
CI_COUNT = int(os.environ.get("FUZZ_COUNT", "55000"))
#: The generator's seed; FUZZ_SEED overrides (a failure prints the seed it used).
CI_SEED = int(os.environ.get("FUZZ_SEED", "20240501"))




fuzz = load_script("fuzz")


# ============================================================================ fixtures

@pytest.fixture(scope="module")
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A router and a ``cauldron-zmq serve fuzz`` dispatcher, each its own process."""
    with fuzz.servers(str(tmp_path_factory.mktemp("fuzz"))) as h:
        yield h


@pytest.fixture(scope="module")
def addresses(harness: Any) -> dict:
    return {"router": harness.config.router_address(),
            "dispatcher": fuzz.dispatch_address(harness)}


def logs_of(harness: Any) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(harness.directory.glob("*.log")))


# ============================================================================ bulk

def test_bulk_garbage_to_router_and_dispatcher(harness: Any, context: zmq.Context) -> None:
    lines: List[str] = []
    figures = fuzz.storm(harness, context, CI_COUNT, CI_SEED, report=lines.append)
    print("\n".join(lines))
    print(json.dumps({k: figures[k] for k in ("total_messages", "seconds", "rss_mb_growth")}))
    assert figures["total_messages"] >= 100_000 or "FUZZ_COUNT" in os.environ
    assert figures["problems"] == [], f"seed {CI_SEED}: {figures['problems']}"
    for target in ("router", "dispatcher"):
        summary = figures["targets"][target]
        assert summary["replies"] == summary["sent"] == CI_COUNT
        assert "internal" not in summary["codes"]
        assert figures["rss_mb_growth"][target] < fuzz.RSS_BOUND_MB
    # every kind of refusal was exercised, on both
    for code in ("bad-frames", "bad-version", "bad-encoding", "bad-json", "unknown-command",
                 "too-large", "bad-request"):
        assert figures["targets"]["router"]["codes"].get(code), code
        assert figures["targets"]["dispatcher"]["codes"].get(code), code
    assert figures["targets"]["dispatcher"]["codes"].get("invalid-value")
    # a flood of garbage is not a flood of log lines
    log = logs_of(harness)
    assert log.count("malformed request") < 200, "malformed requests are logged unthrottled"
    assert "Traceback" not in log and "internal error" not in log


# ====================================================================== structured

ID_OK = st.text(min_size=1, max_size=64)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12)
FIELDS = ("value", "dispatcher", "host", "keywords", "pid", "prefer", "avoid")


def _text_or_bytes(texts: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(texts.map(lambda t: t.encode("utf-8")), st.binary(max_size=24))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


PAYLOADS = st.one_of(
    JSON_VALUES.map(_json_bytes),
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=5).map(_json_bytes),
    st.binary(max_size=40),
    st.sampled_from([b"", b"{", b"NaN", b'"\\ud800"', b"[" * 3000, b"\xff"]),
)
COMMANDS = st.one_of(
    st.sampled_from(sorted((protocol.DISPATCHER_COMMANDS | protocol.ROUTER_COMMANDS)
                           - {"shutdown"})),
    st.text(max_size=10))
TARGETS = st.one_of(st.sampled_from(fuzz.KEYWORD_NAMES + ["", "nobody", "i", "Da"]),
                    st.text(max_size=20))

REQUESTS = st.builds(
    lambda version, rid, command, target, payload, raw: (
        [version, rid, command, target, payload] + ([raw] if raw is not None else [])),
    st.one_of(st.just(protocol.VERSION), st.just(protocol.VERSION),
              st.binary(min_size=1, max_size=8)),
    st.one_of(ID_OK.map(lambda t: t.encode("utf-8")), st.just(b""),
              st.text(min_size=65, max_size=70).map(lambda t: t.encode("utf-8")),
              st.binary(max_size=8)),
    _text_or_bytes(COMMANDS), _text_or_bytes(TARGETS), PAYLOADS,
    st.none() | st.binary(max_size=32))
MESSAGES = st.one_of(REQUESTS, REQUESTS,
                     st.lists(st.binary(max_size=16), min_size=1, max_size=9)
                     ).filter(fuzz._harmless)


def _expected_id(frames: List[bytes]) -> Optional[str]:
    """The id a reply must echo: that of a 5- or 6-frame request with a usable id."""
    if len(frames) not in (5, 6) or frames[0] == b"":
        return None
    try:
        text = frames[1].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if 0 < len(text) <= protocol.MAX_ID_LENGTH else None


@pytest.fixture(scope="module")
def dealers(context: zmq.Context, addresses: dict) -> Iterator[dict]:
    socks = {}
    for target, address in addresses.items():
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        socks[target] = sock
    yield socks
    for sock in socks.values():
        sock.close(0)


@pytest.mark.parametrize("target", ["router", "dispatcher"])
@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(batch=st.lists(MESSAGES, min_size=1, max_size=8))
def test_structured_messages_get_one_sound_reply_each(target: str, batch: List[List[bytes]],
                                                      dealers: dict) -> None:
    sock = dealers[target]
    while sock.poll(0):                  # nothing left over from an earlier example
        sock.recv_multipart()
    for frames in batch:
        sock.send_multipart(frames)
    for frames in batch:                 # one server thread, no hooks: replies in order
        assert sock.poll(5000), f"no reply to {frames!r:.200}"
        reply = protocol.decode_reply(sock.recv_multipart())
        assert isinstance(reply, protocol.Reply), reply
        assert reply.status in (protocol.OK, protocol.ERROR)
        if reply.status == protocol.ERROR:
            assert reply.payload["code"] in protocol.ERROR_CODES
            assert reply.payload["code"] != protocol.E_INTERNAL, reply.payload
            assert isinstance(reply.payload["message"], str) and reply.payload["message"]
        expected = _expected_id(frames)
        if expected is not None:
            assert reply.id == expected


def test_still_correct_after_the_structured_part(harness: Any, context: zmq.Context) -> None:
    assert fuzz.check_still_correct(harness, context, token=4242) == []


# ======================================================================= oversize

@pytest.mark.parametrize("target", ["router", "dispatcher"])
def test_an_oversize_sender_is_cut_off_and_others_served(target: str, harness: Any,
                                                         addresses: dict,
                                                         context: zmq.Context) -> None:
    """ZMQ_MAXMSGSIZE is set from [zmq] max-message-size on both ROUTER sockets:
    one frame above it and ZeroMQ drops the connection; the server never sees it."""
    assert harness.config.zmq.max_message_size == fuzz.MAX_MESSAGE
    cut, served = fuzz.oversize_is_cut_off(context, addresses[target], fuzz.MAX_MESSAGE)
    assert cut, "the oversize sender was not disconnected (is ZMQ_MAXMSGSIZE set?)"
    assert served, "another peer was not served after it"
    # below the limit per frame but above it in total: an error reply, not a cut
    frames = protocol.encode_request(protocol.request("ping", id="big-1"))
    frames[3] = b"K" * (fuzz.MAX_MESSAGE // 2 + 1)
    frames.append(b"\0" * (fuzz.MAX_MESSAGE // 2 + 1))
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(addresses[target])
        sock.send_multipart(frames)
        assert sock.poll(5000)
        reply = protocol.decode_reply(sock.recv_multipart())
        assert reply.id == "big-1" and reply.payload["code"] == "too-large"
    finally:
        sock.close(0)
    assert fuzz.check_still_correct(harness, context, token=77) == []


# ==================================================================== regressions

def _ask(context: zmq.Context, address: str, frames: List[bytes],
         timeout: float = 5.0) -> protocol.Reply:
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        sock.send_multipart(frames)
        assert sock.poll(int(timeout * 1000)), f"no reply to {frames!r:.120}"
        reply = protocol.decode_reply(sock.recv_multipart())
        assert isinstance(reply, protocol.Reply), reply
        return reply
    finally:
        sock.close(0)


@pytest.mark.parametrize("payload", [
    b'{"dispatcher":"\\ud83d","host":"h"}',      # used to kill the router (refusal text)
    b'{"dispatcher":"ok","host":"\\udfff"}',     # used to poison the book: list failed ever after
    b'{"dispatcher":"d","host":"h","keywords":["\\ud800"]}',
])
def test_lone_surrogates_never_reach_the_book(payload: bytes, harness: Any, addresses: dict,
                                              context: zmq.Context) -> None:
    for command in ("register", "heartbeat", "unregister"):
        reply = _ask(context, addresses["router"],
                     [protocol.VERSION, b"s1", command.encode(), b"evil", payload])
        assert reply.id == "s1" and reply.payload["code"] == "bad-json"
    with RouterClient(harness.config, timeout=5000, context=context) as rc:
        assert rc.ping()["pid"] == harness.router.pid
        assert "evil" not in {e["service"] for e in rc.list()["entries"]}


def test_a_lone_surrogate_write_does_not_stop_the_dispatcher(harness: Any, addresses: dict,
                                                             context: zmq.Context) -> None:
    """It used to be stored, then kill the I/O thread while encoding the broadcast."""
    for keyword in (b"S", b"IA", b"nope"):
        reply = _ask(context, addresses["dispatcher"],
                     [protocol.VERSION, b"w1", b"write", keyword, b'{"value":"\\ud800x"}'])
        assert reply.id == "w1" and reply.payload["code"] == "bad-json"
    assert fuzz.check_still_correct(harness, context, token=5) == []


def test_too_deep_json_is_bad_json_with_the_id_echoed(addresses: dict,
                                                      context: zmq.Context) -> None:
    """It was 'internal' with an empty id, so the sender could not match the error.
    (How deep the decoder goes depends on the Python version: 3,000 levels are
    refused by 3.11, decoded by 3.13 and then refused by the command.)"""
    for target, command in (("router", b"lookup"), ("dispatcher", b"write")):
        for depth in (3000, 30_000):        # (below max-message-size: 64 kB)
            for payload in (b"[" * depth, b'{"value":' + b"[" * depth + b"]" * depth + b"}"):
                reply = _ask(context, addresses[target],
                             [protocol.VERSION, b"deep", command, b"I", payload])
                assert reply.id == "deep" and reply.status == protocol.ERROR
                assert reply.payload["code"] in ("bad-json", "not-found", "invalid-value")
                if depth == 30_000:
                    assert reply.payload["code"] == "bad-json"


def test_protocol_loads_refusals() -> None:
    assert protocol.loads(b'"\\ud83d\\ude00"') == "\U0001F600"       # a proper pair is fine
    assert protocol.loads(b'"\\\\ud800"') == "\\ud800"                 # an escaped backslash too
    for bad in (b'"\\ud800"', b'{"\\udc00":1}', b'[["\\uDBFF"]]', b"[" * 100_000):
        with pytest.raises(ValueError):
            protocol.loads(bad)
    assert protocol.dumps({"k": "\ud800"}) == b'{"k":"\\ud800"}'     # encoding never raises


def test_throttle() -> None:
    t = protocol.Throttle(burst=2, period=10.0)
    assert [t.allow(0.0), t.allow(1.0), t.allow(2.0), t.allow(3.0)] == [
        (True, 0), (True, 0), (False, 0), (False, 0)]
    assert t.allow(10.0) == (True, 2)          # a new window says what it did not log
    assert t.allow(11.0) == (True, 0)


# ================================================================ bad files, CLI

def _one_line_exit_1(argv: List[str], cwd: Path) -> str:
    done = subprocess.run(argv, capture_output=True, timeout=60, cwd=cwd,
                          env={k: v for k, v in os.environ.items() if k != "CAULDRON_ZMQ_CONFIG"})
    err = done.stderr.decode()
    assert done.returncode == 1, (done.returncode, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


BAD_CONFIGS = [
    ("[zmq-router]\nfirst-port = \"abc\"\n", "[zmq-router]", "first-port"),
    ("[zmq]\nmax-mesage-size = 5\n", "[zmq]", "max-mesage-size"),
    ("[zmq]\nmax-message-size = 10\n", "[zmq]", "max-message-size"),
    ("[zmq]\nheartbeat = 2.0\nliveness = 1.0\n", "[zmq]", "liveness"),
    ("[zmq-router]\nexpiry = \"soon\"\n", "[zmq-router]", "expiry"),
]


def test_router_program_names_file_section_and_key(tmp_path: Path) -> None:
    """The installed console script, as operators run it: one line, exit 1."""
    body, section, key = BAD_CONFIGS[0]
    path = tmp_path / "bad.toml"
    path.write_text(body)
    err = _one_line_exit_1([str(BIN / "Cauldron-router-zmq"), "-c", str(path)], tmp_path)
    assert err.startswith("Cauldron-router-zmq: ")
    assert str(path) in err and section in err and key in err


def test_serve_program_names_file_section_and_key(tmp_path: Path) -> None:
    kwfile = tmp_path / "ok.toml"
    kwfile.write_text('[keyword.T]\ntype = "double"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_CONFIGS[1][0])
    err = _one_line_exit_1([str(BIN / "cauldron-zmq"), "serve", "svc", str(kwfile), "-c",
                            str(bad)], tmp_path)
    assert str(bad) in err and "[zmq]" in err and "max-mesage-size" in err
    assert "did you mean 'max-message-size'" in err
    badkw = tmp_path / "badkw.toml"
    badkw.write_text('[keyword.TEMP]\ntype = "double"\nmin = "low"\n')
    err = _one_line_exit_1([str(BIN / "cauldron-zmq"), "serve", "svc", str(badkw)], tmp_path)
    assert str(badkw) in err and "[keyword.TEMP]" in err and "min" in err


@pytest.mark.parametrize("body,section,key", BAD_CONFIGS)
def test_every_config_rejection_names_file_section_and_key(tmp_path: Path, body: str,
                                                           section: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    kwfile = tmp_path / "ok.toml"
    kwfile.write_text('[keyword.T]\ntype = "double"\n')
    for command, argv in ((router_main, ["-c", str(path)]),
                          (serve, ["svc", str(kwfile), "-c", str(path)])):
        result = CliRunner().invoke(command, argv)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert str(path) in lines[0] and section in lines[0] and key in lines[0], lines[0]


BAD_KEYWORD_FILES = [
    ('[keyword.X]\ntype = "integr"\n', "[keyword.X]", "type"),
    ('[keyword.X]\ntype = "integer"\ninitial = "abc"\n', "[keyword.X]", "initial"),
    ('[keyword.X]\ntype = "enumerated"\n', "[keyword.X]", "enumerators"),
    ('[keyword.X]\ntype = "integer"\nmin = 5\nmax = 1\n', "[keyword.X]", "max"),
    ('[keyword.X]\ntype = "integer"\nperiod = -1\n', "[keyword.X]", "period"),
    ('[keyword.X]\ntype = "integer"\nunits = 5\n', "[keyword.X]", "units"),
    ('[keyword.X]\ntype = "integer"\nread-only = true\nwrite-only = true\n', "[keyword.X]",
     "write-only"),
    ('[keyword.X]\ntype = "mask"\nenumerators = ["A", "A"]\n', "[keyword.X]", "enumerators"),
    ('[keyword.X]\ntype = "integer"\npersist = "yes"\n', "[keyword.X]", "persist"),
    ('[keyword.X]\ntype = "integer"\nmaximum = 3\n', "[keyword.X]", "maximum"),
    ('[keyword.X]\ntype = "integer-array"\ninitial = [1, "a"]\n', "[keyword.X]", "initial"),
    ('[keyword.X]\ntype = "integer"\n[keyword.x]\ntype = "integer"\n', "[keyword.x]", ""),
]


@pytest.mark.parametrize("body,table,key", BAD_KEYWORD_FILES)
def test_every_keyword_file_rejection_names_file_table_and_key(tmp_path: Path, body: str,
                                                               table: str, key: str) -> None:
    path = tmp_path / "kw.toml"
    path.write_text(body)
    result = CliRunner().invoke(serve, ["svc", str(path)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert str(path) in lines[0] and table in lines[0] and key in lines[0], lines[0]
