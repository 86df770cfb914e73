"""Names are not paths; look-up entries are checked; retries back off; the file
limit is raised.  Pure functions only (issue 10, items 3, 4, 8, 9)."""
from __future__ import annotations

import os
from typing import Any

import pytest

from cauldron_zmq.limits import CEILING, wanted_file_limit
from cauldron_zmq.names import (MAX_FILE_NAME, MAX_NAME, InvalidName, check_host, check_name,
                                entry_problem, file_stem, legacy_file_stem, split_entries)
from cauldron_zmq.protocol.backoff import Schedule
from cauldron_zmq.persist import legacy_persist_path, persist_path
from cauldron_zmq.protocol.retry import Retry


# ----------------------------------------------------------------- names

@pytest.mark.parametrize("name", ["demo", "ab.x", "x.y", "kpf guide", "é" * 200, "a" * MAX_NAME,
                                  "..x", "x..", "-", "_"])
def test_valid_names(name: str) -> None:
    assert check_name("service", name) == name


@pytest.mark.parametrize("name", ["", "../escape", "/abs/name", "sub/../../up", "a\\b", ".",
                                  "..", "a\x00b", "a\nb", "a\x7fb", "a\x85b", " lead",
                                  "trail ", "a" * (MAX_NAME + 1), "\ud800", 5, None, b"demo"])
def test_invalid_names(name: Any) -> None:
    with pytest.raises(InvalidName):
        check_name("service", name)


def test_invalid_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="names are not paths"):
        check_name("dispatcher", "a/b")


def test_file_stems_never_leave_the_directory_or_collide(tmp_path: Any) -> None:
    pairs = [("ab.x", "y"), ("ab", "x.y"), ("ab", "x%2Ey"), ("ab%2Ex", "y"), ("demo", "default"),
             ("..x", "default"), ("a b", "c"), ("a+b", "c"), ("é", "e"), ("%", "%25")]
    stems = [file_stem(s, d) for s, d in pairs]
    assert len(set(stems)) == len(stems)
    for stem in stems:
        assert "/" not in stem and "\\" not in stem and not stem.startswith(".")
        path = persist_path(str(tmp_path), *pairs[stems.index(stem)])
        assert os.path.dirname(path) == str(tmp_path)


def test_plain_names_keep_their_old_file_name() -> None:
    assert file_stem("demo", "default") == "demo.default"
    assert file_stem("kpf_guide-2", "d1") == "kpf_guide-2.d1"


def test_every_valid_name_fits_a_file_name() -> None:
    for service, dispatcher in [("é" * MAX_NAME, "ü" * MAX_NAME), ("a" * MAX_NAME, "b"),
                                ("%" * MAX_NAME, "default"), ("猫" * 200, "default")]:
        stem = file_stem(service, dispatcher)
        assert len((stem + ".json.corrupt-20261201T000000-99").encode()) <= MAX_FILE_NAME
        assert file_stem(service, dispatcher + "x") != stem      # the hash keeps them apart
    long = file_stem("é" * 200, "default")
    assert "~" in long and long.startswith("%C3%A9")


def test_legacy_names_are_only_those_that_were_files(tmp_path: Any) -> None:
    assert legacy_file_stem("ab.x", "y") == "ab.x.y"
    assert legacy_file_stem("é" * 200, "default") is None          # was never writable
    assert legacy_persist_path(str(tmp_path), "demo", "default") is None   # same name
    assert legacy_persist_path(str(tmp_path), "ab.x", "y") == str(tmp_path / "ab.x.y.json")


# ----------------------------------------------------------------- hosts and entries

@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "host-1.example.org",
                                  "example.org.", "a_b.local", "fe80::1"])
def test_valid_hosts(host: str) -> None:
    assert check_host(host) == host


@pytest.mark.parametrize("host", ["bad host;", "", "a..b", "-a.b", "a-.b", "x" * 64, "tcp://x",
                                  "a:b", "a/b", "[127.0.0.1", 7, None, "é.org"])
def test_invalid_hosts(host: Any) -> None:
    with pytest.raises(InvalidName):
        check_host(host)


GOOD = {"dispatcher": "default", "host": "127.0.0.1", "protocol": "tcp", "dispatch_port": 7000,
        "broadcast_port": 7001, "keywords": ["A"]}


@pytest.mark.parametrize("change", [
    {"dispatch_port": "abc"}, {"dispatch_port": -1}, {"broadcast_port": 0},
    {"broadcast_port": 70000}, {"dispatch_port": True}, {"dispatch_port": 7000.0},
    {"host": "bad host;"}, {"host": 5}, {"protocol": "udp"}, {"protocol": None},
    {"dispatcher": 3}, {"dispatcher": "a/b"}, {"keywords": "A"}, {"keywords": [1]},
])
def test_bad_entries_are_named(change: dict) -> None:
    assert entry_problem(dict(GOOD, **change))


def test_good_entries_pass_and_bad_ones_are_split_off() -> None:
    assert entry_problem(GOOD) is None
    assert entry_problem(dict(GOOD, protocol="ipc", host="/tmp/x")) is None
    good, bad = split_entries([GOOD, dict(GOOD, dispatcher="zz", host="bad host;"), "x", None])
    assert good == [GOOD] and len(bad) == 3 and "'zz'" in bad[0]
    assert split_entries({"a": 1}) == ([], ["'dispatchers' must be a list, got dict"])


# ----------------------------------------------------------------- retry (pure)

def test_retry_backs_off_and_logs_once_per_interval() -> None:
    retry = Retry("saving x", Schedule(0.1, 2, 30), log_every=60)
    assert retry.due(0) and retry.next_attempt() is None and not retry.failing
    lines = []
    t = 0.0
    attempts = 0
    while t < 600:                       # ten minutes of a full disk, attempting when due
        if retry.due(t):
            attempts += 1
            line = retry.failed(t, "No space left on device")
            if line:
                lines.append((t, line))
        t = round(t + 0.05, 6)
    assert attempts < 40                 # not one per 50 ms (12,000)
    assert 10 <= len(lines) <= 12        # the first, then one per minute
    assert "failed: No space" in lines[0][1]
    assert "more failed attempt(s)" in lines[1][1]
    assert all(b - a >= 60 for (a, _), (b, _) in zip(lines[1:], lines[2:]))
    ok = retry.succeeded(600)
    assert ok and "works again" in ok and not retry.failing and retry.due(600)
    assert retry.succeeded(601) is None


def test_retry_schedule_is_the_documented_one() -> None:
    retry = Retry("x", Schedule(0.1, 2, 30))
    times = []
    t = 100.0
    for _ in range(12):
        retry.failed(t, "e")
        t = retry.next_attempt()
        times.append(round(t - 100, 6))
    assert times[:5] == [0.1, 0.3, 0.7, 1.5, 3.1]
    assert [round(b - a, 6) for a, b in zip(times, times[1:])][-2:] == [30, 30]


def test_retry_counts_are_exact() -> None:
    retry = Retry("x", Schedule(1, 1, 1), log_every=10)
    out = [retry.failed(float(t), "e") for t in range(0, 21)]
    logged = [(t, line) for t, line in enumerate(out) if line]
    assert [t for t, _ in logged] == [0, 10, 20]
    assert "10 more failed attempt(s)" in logged[1][1]


# ----------------------------------------------------------------- file limit (pure)

@pytest.mark.parametrize("soft, hard, want", [(64, 4096, 4096), (1024, 1024, 1024),
                                              (64, -1, CEILING), (-1, -1, -1),
                                              (2048, 10 ** 9, CEILING), (CEILING * 2, -1,
                                                                         CEILING * 2)])
def test_wanted_file_limit(soft: int, hard: int, want: int) -> None:
    assert wanted_file_limit(soft, hard, infinity=-1) == want


@pytest.mark.parametrize("name", ["../escape", "/abs/name", "sub/../../up", "a\\b"])
def test_a_client_refuses_a_service_name_that_is_a_path(name: str) -> None:
    import threading
    from cauldron_zmq import ktl
    before = threading.active_count()
    with pytest.raises(ValueError, match="names are not paths"):
        ktl.Service(name, timeout=0.2, wait=0.2)
    assert threading.active_count() == before          # refused before any thread or socket
