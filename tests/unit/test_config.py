"""Tests for cauldron_zmq.config: loading, validation, replace() and addresses."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cauldron_zmq import config as cfgmod
from cauldron_zmq.config import (
    DEFAULT,
    ENV_VAR,
    Config,
    RouterConfig,
    ZmqConfig,
    bind_host,
    config_from_mapping,
    connect_host,
    endpoint,
    load_config,
)
from cauldron_zmq.errors import ConfigurationError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.rst"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own $CAULDRON_ZMQ_CONFIG must not leak into the tests."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def write(tmp_path: Path, text: str, name: str = "cauldron.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> ConfigurationError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert info.value.source == str(path)
    return info.value


# --------------------------------------------------------------------------
# Where the configuration comes from
# --------------------------------------------------------------------------

def test_defaults_without_file() -> None:
    cfg = load_config()
    assert cfg == Config() == DEFAULT
    assert cfg.source is None
    assert cfg.zmq.dispatch_port == 6511 and cfg.zmq.broadcast_port == 6512
    assert cfg.router.port == 6510 and cfg.router.enable is True
    assert cfg.router.state_file is None and cfg.zmq.persist_dir is None


def test_empty_env_var_means_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "")
    assert load_config() == DEFAULT


def test_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[zmq-router]\nport = 7010\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    cfg = load_config()
    assert cfg.router.port == 7010
    assert cfg.source == str(path)


def test_env_var_missing_file_names_env_var(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(ConfigurationError) as info:
        load_config()
    assert str(missing) in str(info.value)
    assert ENV_VAR in str(info.value)


def test_explicit_path_beats_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = write(tmp_path, "[zmq-router]\nport = 7010\n", "env.toml")
    explicit = write(tmp_path, "[zmq-router]\nport = 7020\n", "explicit.toml")
    monkeypatch.setenv(ENV_VAR, str(from_env))
    assert load_config(explicit).router.port == 7020
    assert load_config(str(explicit)).router.port == 7020


def test_config_object_returned_as_is() -> None:
    cfg = DEFAULT.replace(router={"port": 7000})
    assert load_config(cfg) is cfg


def test_missing_explicit_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigurationError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    assert "not found" in str(info.value)


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_tilde_in_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path, "[zmq]\nhwm = 5\n")
    cfg = load_config("~/cauldron.toml")
    assert cfg.zmq.hwm == 5
    assert cfg.source == str(tmp_path / "cauldron.toml")


def test_partial_override_keeps_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
[zmq]
host = "127.0.0.2"

[zmq-router]
first-port = 7000
last-port = 7099
""")
    cfg = load_config(path)
    assert cfg.zmq == dataclasses.replace(ZmqConfig(), host="127.0.0.2")
    assert cfg.router == dataclasses.replace(RouterConfig(), first_port=7000, last_port=7099)


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "# nothing\n"))
    assert cfg == DEFAULT
    assert cfg.source is not None


def test_every_key_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
[zmq]
host = "*"
protocol = "ipc"
dispatch-port = 1
broadcast-port = 2
timeout = 3
heartbeat = 4
liveness = 4.5
hwm = 6
max-message-size = 1024
persist-dir = "~/state"

[zmq-router]
enable = false
host = "/tmp/router.sock"
protocol = "IPC"
port = 100
first-port = 200
last-port = 201
timeout = 7
verbose = 3
process = "process"
allow-spawn = false
state-file = "/tmp/book.json"
heartbeat = 0.5
expiry = 1
""")
    cfg = load_config(path)
    assert cfg.zmq == ZmqConfig("*", "ipc", 1, 2, 3, 4.0, 4.5, 6, 1024,
                                os.path.expanduser("~/state"))
    assert cfg.router == RouterConfig(False, "/tmp/router.sock", "ipc", 100, 200, 201, 7, 3,
                                      "process", False, "/tmp/book.json", 0.5, 1.0)
    assert isinstance(cfg.zmq.heartbeat, float) and isinstance(cfg.router.expiry, float)


def test_source_does_not_take_part_in_equality(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[zmq]\n"))
    assert cfg == DEFAULT and hash(cfg) == hash(DEFAULT)


# --------------------------------------------------------------------------
# Validation errors
# --------------------------------------------------------------------------

# (section, key, TOML value, text of the bad value in the message, fragment of "expected")
BAD_VALUES = [
    ("zmq-router", "first-port", "'abc'", "'abc'", "integer port 1..65535"),
    ("zmq-router", "port", "0", "0", "integer port 1..65535"),
    ("zmq-router", "last-port", "65536", "65536", "integer port 1..65535"),
    ("zmq", "dispatch-port", "6511.0", "6511.0", "integer port"),
    ("zmq", "broadcast-port", "true", "True", "integer port"),
    ("zmq", "protocol", "'udp'", "'udp'", "'tcp', 'ipc'"),
    ("zmq-router", "protocol", "'pgm'", "'pgm'", "'tcp', 'ipc'"),
    ("zmq-router", "process", "'fork'", "'fork'", "'thread', 'process'"),
    ("zmq-router", "verbose", "4", "4", "0..3"),
    ("zmq-router", "verbose", "-1", "-1", "0..3"),
    ("zmq-router", "timeout", "0", "0", "positive integer number of milliseconds"),
    ("zmq", "timeout", "-5", "-5", "positive integer number of milliseconds"),
    ("zmq", "timeout", "1.5", "1.5", "integer"),
    ("zmq", "heartbeat", "0", "0", "positive number of seconds"),
    ("zmq-router", "heartbeat", "-1.0", "-1.0", "positive number of seconds"),
    ("zmq-router", "heartbeat", "inf", "inf", "positive number of seconds"),
    ("zmq", "heartbeat", "'1'", "'1'", "number of seconds"),
    ("zmq", "hwm", "0", "0", ">= 1"),
    ("zmq", "max-message-size", "1023", "1023", ">= 1024"),
    ("zmq-router", "enable", "1", "1", "boolean"),
    ("zmq-router", "allow-spawn", "'maybe'", "'maybe'", "boolean"),
    ("zmq", "host", "5", "5", "host"),
    ("zmq-router", "host", "''", "''", "host"),
    ("zmq", "persist-dir", "1", "1", "path"),
    ("zmq-router", "state-file", "false", "False", "path"),
]


@pytest.mark.parametrize("section, key, value, shown, expected", BAD_VALUES)
def test_bad_value(tmp_path: Path, section: str, key: str, value: str, shown: str,
                   expected: str) -> None:
    err = load_error(tmp_path, f"[{section}]\n{key} = {value}\n")
    message = str(err)
    assert f"[{section}] {key}: expected " in message
    assert expected in message
    assert message.endswith(f"got {shown}")
    assert (err.section, err.key) == (section, key)


def test_message_format_matches_documented_example(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[zmq-router]\nfirst-port = 'abc'\n")
    assert str(err) == (f"{tmp_path / 'cauldron.toml'}: [zmq-router] first-port: "
                        "expected an integer port 1..65535, got 'abc'")


@pytest.mark.parametrize("section, text, key, fragments", [
    ("zmq-router", "first-port = 6800\nlast-port = 6799", "first-port",
     ["last-port (6799)", "got 6800"]),
    ("zmq-router", "first-port = 6800", "first-port", ["last-port (6700)", "got 6800"]),
    ("zmq-router", "first-port = 6800\nlast-port = 6800", "last-port",
     ["first-port (6800)", "pair", "got 6800"]),
    ("zmq-router", "port = 6600", "port", ["6600..6700", "got 6600"]),
    ("zmq-router", "port = 6700", "port", ["6600..6700", "got 6700"]),
    ("zmq-router", "first-port = 7000\nlast-port = 7001\nport = 7001", "port",
     ["7000..7001", "got 7001"]),
    ("zmq-router", "expiry = 2.0", "expiry", ["heartbeat (2.0)", "got 2.0"]),
    ("zmq-router", "heartbeat = 20", "expiry", ["heartbeat (20.0)", "got 10.0"]),
    ("zmq", "liveness = 1", "liveness", ["heartbeat (1.0)", "got 1.0"]),
    ("zmq", "heartbeat = 3.5", "liveness", ["heartbeat (3.5)", "got 3.0"]),
])
def test_rules_between_keys(tmp_path: Path, section: str, text: str, key: str,
                            fragments: Any) -> None:
    err = load_error(tmp_path, f"[{section}]\n{text}\n")
    assert f"[{section}] {key}: expected " in str(err)
    for fragment in fragments:
        assert fragment in str(err)
    assert (err.section, err.key) == (section, key)


def test_smallest_port_range_is_one_pair(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[zmq-router]\nfirst-port = 7000\nlast-port = 7001\n"))
    assert (cfg.router.first_port, cfg.router.last_port) == (7000, 7001)


def test_unknown_key_suggests_close_name(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[zmq-router]\nfirst_port = 7000\n")
    assert "[zmq-router] first_port: unknown key" in str(err)
    assert "did you mean 'first-port'?" in str(err)
    assert (err.section, err.key) == ("zmq-router", "first_port")


def test_unknown_key_without_close_name_lists_keys(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[zmq]\nbananas = 1\n")
    assert "[zmq] bananas: unknown key" in str(err)
    assert "'max-message-size'" in str(err)
    assert (err.section, err.key) == ("zmq", "bananas")


def test_unknown_section_suggests_close_name(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[router]\nport = 7000\n")
    assert "[router]: unknown section" in str(err)
    assert "did you mean 'zmq-router'?" in str(err)
    assert err.section == "router"


def test_subtable_is_rejected(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[zmq.router]\nport = 7000\n")
    assert "[zmq] router: unknown key" in str(err)
    assert "[zmq-router]" in str(err)


def test_top_level_key_is_rejected(tmp_path: Path) -> None:
    err = load_error(tmp_path, "port = 7000\n[zmq]\n")
    assert "port: key outside any section" in str(err)
    assert "7000" in str(err)
    assert err.key == "port"


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    err = load_error(tmp_path, "zmq = 5\n")
    assert "[zmq]: expected a table" in str(err)
    assert err.section == "zmq"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[zmq]\nhost = \"a\"\nport = = 3\n")
    assert "TOML syntax error" in str(err)
    assert re.search(r"line 3\b", str(err))


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[zmq]\nhost = \"caf\xe9\"\n")
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_errors_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_config(write(tmp_path, "[zmq]\nhwm = 0\n"))


# --------------------------------------------------------------------------
# Booleans written as words, paths, case
# --------------------------------------------------------------------------

@pytest.mark.parametrize("word, value", [
    ("yes", True), ("no", False), ("true", True), ("false", False),
    ("on", True), ("off", False), ("Yes", True), ("OFF", False),
])
def test_boolean_words(tmp_path: Path, word: str, value: bool) -> None:
    cfg = load_config(write(tmp_path, f'[zmq-router]\nenable = "{word}"\nallow-spawn = "{word}"\n'))
    assert cfg.router.enable is value and cfg.router.allow_spawn is value


def test_paths_expand_tilde_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    cfg = config_from_mapping({"zmq": {"persist-dir": "~/kw"},
                               "zmq-router": {"state-file": ""}})
    assert cfg.zmq.persist_dir == "/home/someone/kw"
    assert cfg.router.state_file is None


def test_choices_are_case_insensitive() -> None:
    cfg = config_from_mapping({"zmq": {"protocol": "TCP"}, "zmq-router": {"process": "Process"}})
    assert (cfg.zmq.protocol, cfg.router.process) == ("tcp", "process")


# --------------------------------------------------------------------------
# config_from_mapping, immutability, replace()
# --------------------------------------------------------------------------

def test_config_from_mapping_validates_like_a_file() -> None:
    assert config_from_mapping({}) == DEFAULT
    assert config_from_mapping({"zmq-router": {"port": 7000}}).source is None
    with pytest.raises(ConfigurationError) as info:
        config_from_mapping({"zmq-router": {"first-port": "abc"}}, source="inline")
    assert str(info.value).startswith("inline: [zmq-router] first-port: ")
    with pytest.raises(ConfigurationError):
        config_from_mapping(["zmq"])  # type: ignore[arg-type]


def test_immutable() -> None:
    cfg = DEFAULT
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.router.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.zmq = ZmqConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.source = "x"  # type: ignore[misc]


def test_replace_both_spellings() -> None:
    cfg = DEFAULT.replace(router={"port": 7000, "state-file": "/x", "allow_spawn": "no"},
                          zmq={"host": "127.0.0.2", "max-message-size": 2048})
    assert cfg.router.port == 7000 and cfg.router.state_file == "/x"
    assert cfg.router.allow_spawn is False
    assert cfg.zmq.host == "127.0.0.2" and cfg.zmq.max_message_size == 2048
    assert cfg.router.first_port == 6600  # untouched
    assert DEFAULT.router.port == 6510  # original unchanged
    assert cfg != DEFAULT


def test_replace_keeps_source(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[zmq]\nhwm = 7\n"))
    changed = cfg.replace(router={"verbose": 2})
    assert changed.source == cfg.source
    assert changed.zmq.hwm == 7 and changed.router.verbose == 2


def test_replace_section_aliases_and_objects() -> None:
    router = dataclasses.replace(RouterConfig(), port=7500)
    assert DEFAULT.replace(router=router).router.port == 7500
    assert DEFAULT.replace(zmq_router={"port": 7501}).router.port == 7501
    assert DEFAULT.replace(**{"zmq-router": {"port": 7502}}).router.port == 7502
    assert DEFAULT.replace() == DEFAULT


def test_replace_revalidates() -> None:
    with pytest.raises(ConfigurationError) as info:
        DEFAULT.replace(router={"port": 6650})
    assert "[zmq-router] port:" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        DEFAULT.replace(router={"bogus": 1})
    assert "[zmq-router] bogus: unknown key" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        DEFAULT.replace(routr={"port": 1})
    assert "unknown section" in str(info.value) and "router" in str(info.value)
    with pytest.raises(ConfigurationError):
        DEFAULT.replace(zmq=5)
    # direct construction is not validated, but replace() validates everything
    unchecked = Config(zmq=ZmqConfig(hwm=0))
    with pytest.raises(ConfigurationError) as info:
        unchecked.replace(router={"port": 7000})
    assert "[zmq] hwm:" in str(info.value)


def test_to_toml_round_trip(tmp_path: Path) -> None:
    cfg = DEFAULT.replace(router={"state-file": "/tmp/book.json", "enable": False},
                          zmq={"heartbeat": 0.25, "host": "10.0.0.1"})
    loaded = load_config(write(tmp_path, cfg.to_toml()))
    assert loaded == cfg
    assert "state-file" not in DEFAULT.to_toml()  # None cannot be written in TOML


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1).filter(lambda s: s.strip() and not s.startswith("~")))
def test_to_toml_escapes_any_string(path: str) -> None:
    cfg = DEFAULT.replace(router={"state-file": path})
    parsed = cfgmod.tomllib.loads(cfg.to_toml())
    assert config_from_mapping(parsed) == cfg


# --------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------

@pytest.mark.parametrize("host, connect, bind", [
    ("localhost", "127.0.0.1", "127.0.0.1"),
    ("LocalHost", "127.0.0.1", "127.0.0.1"),
    ("*", "127.0.0.1", "*"),
    ("0.0.0.0", "127.0.0.1", "0.0.0.0"),
    ("127.0.0.2", "127.0.0.2", "127.0.0.2"),
    ("example.org", "example.org", "example.org"),
])
def test_connect_and_bind_host(host: str, connect: str, bind: str) -> None:
    assert connect_host(host) == connect
    assert bind_host(host) == bind


def test_endpoint() -> None:
    assert endpoint("tcp", "localhost", 6511, bind=True) == "tcp://127.0.0.1:6511"
    assert endpoint("tcp", "*", 6511, bind=True) == "tcp://*:6511"
    assert endpoint("tcp", "*", 6511, bind=False) == "tcp://127.0.0.1:6511"
    assert endpoint("tcp", "::1", 6511, bind=False) == "tcp://[::1]:6511"
    assert endpoint("ipc", "/tmp/svc", 6511, bind=True) == "ipc:///tmp/svc-6511"
    assert endpoint("ipc", "localhost", 6511, bind=False) == "ipc://localhost-6511"
    with pytest.raises(ConfigurationError):
        endpoint("udp", "localhost", 1, bind=True)


def test_router_address() -> None:
    assert DEFAULT.router_address() == "tcp://127.0.0.1:6510"
    assert DEFAULT.replace(router={"host": "*", "port": 7000}).router_address() \
        == "tcp://127.0.0.1:7000"
    ipc = DEFAULT.replace(router={"protocol": "ipc", "host": "/tmp/cauldron-router"})
    assert ipc.router_address() == "ipc:///tmp/cauldron-router"


# --------------------------------------------------------------------------
# The documentation stays complete and correct
# --------------------------------------------------------------------------

def test_docs_name_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name, (cls, _attr) in cfgmod.SECTIONS.items():
        assert f"``[{name}]``" in text
        for f in dataclasses.fields(cls):
            assert "``" + f.name.replace("_", "-") + "``" in text, f.name


def test_docs_example_is_the_defaults() -> None:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"\.\. code-block:: toml\n\s*:caption: Every key at its default\n\n"
                      r"((?:    .*\n|\n)+)", text)
    assert match, "example block not found"
    body = "\n".join(line[4:] for line in match.group(1).splitlines())
    assert config_from_mapping(cfgmod.tomllib.loads(body)) == DEFAULT
    for name, (cls, _attr) in cfgmod.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert re.search(rf"^#? ?{f.name.replace('_', '-')} = ", body, re.M), f.name
