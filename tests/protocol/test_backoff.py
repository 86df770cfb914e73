"""The retry schedules: pure functions of time, checked exactly."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cauldron_zmq.protocol.backoff import LOOKUP, Schedule


def first(s: Schedule, n: int) -> list:
    return [s.time_of(i) for i in range(n)]


def attempts_by(s: Schedule, elapsed: float) -> int:
    """How many attempts a caller following ``s.due`` has made by ``elapsed``."""
    n = 0
    while s.due(elapsed, n):
        n += 1
    return n


def test_documented_schedule() -> None:
    s = Schedule(initial=0.05, factor=2, cap=1.0)
    assert first(s, 10) == [0.0, 0.05, 0.15, 0.35, 0.75, 1.55, 2.55, 3.55, 4.55, 5.55]


def test_delays() -> None:
    s = Schedule(0.05, 2, 1.0)
    assert [s.delay(n) for n in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert s.delay(10 ** 6) == 1.0            # no overflow far into the schedule


def test_not_resending_only_at_zero_and_late() -> None:
    """The bug a peer's client had: attempts at 0 s and 7.65 s only."""
    s = Schedule(0.05, 2, 1.0)
    assert attempts_by(s, 7.65) == 12          # 0, .05, .15, .35, .75, 1.55, 2.55 ... 7.55
    assert attempts_by(s, 1.0) == 5


def test_time_of_far_attempts_is_linear_after_cap() -> None:
    s = Schedule(0.05, 2, 1.0)
    assert s.time_of(1000) == pytest.approx(s.time_of(10) + 990 * 1.0)


def test_due_and_time_of() -> None:
    s = Schedule(0.1, 3, 2.0)
    assert s.time_of(0) == 0.0
    assert s.time_of(1) == 0.1
    assert s.time_of(2) == pytest.approx(0.4)
    assert s.time_of(3) == pytest.approx(1.3)
    assert s.time_of(4) == pytest.approx(3.3)     # 0.9*3 = 2.7 capped at 2.0
    assert s.due(0.0, 0)
    assert not s.due(0.05, 1)
    assert s.due(0.1, 1)


def test_factor_one_is_constant() -> None:
    assert first(Schedule(0.2, 1, 1.0), 4) == [0.0, 0.2, 0.4, 0.6]
    assert first(Schedule(1.0, 1, 1.0), 3) == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("args", [(0, 2, 1), (-1, 2, 1), (0.1, 0.5, 1), (0.5, 2, 0.1)])
def test_invalid_schedules(args: tuple) -> None:
    with pytest.raises(ValueError):
        Schedule(*args)


def test_negative_attempts_refused() -> None:
    with pytest.raises(ValueError):
        LOOKUP.delay(-1)
    with pytest.raises(ValueError):
        LOOKUP.time_of(-1)


def test_defaults() -> None:
    assert LOOKUP == Schedule(0.05, 2.0, 1.0)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])   # a loaded CI machine
@given(initial=st.floats(0.001, 1.0), factor=st.floats(1.0, 4.0), extra=st.floats(0, 5),
       n=st.integers(0, 60))
def test_properties(initial: float, factor: float, extra: float, n: int) -> None:
    s = Schedule(initial, factor, initial + extra)
    gaps = [s.time_of(i + 1) - s.time_of(i) for i in range(n)]
    assert all(g == pytest.approx(s.delay(i), abs=1e-8) for i, g in enumerate(gaps))
    assert all(0 < g <= s.cap + 1e-8 for g in gaps)
    assert all(b >= a - 1e-8 for a, b in zip(gaps, gaps[1:]))      # never shrinking
    assert s.due(s.time_of(n), n) and not s.due(s.time_of(n) - 1e-6, n)


def test_factor_barely_above_one_is_fast() -> None:
    """The cap is found with a logarithm, not 10**8 multiplications."""
    s = Schedule(0.001, 1.0000001, 10.0)
    assert s.delay(10) == pytest.approx(0.001, rel=1e-5)
    assert s.delay(10 ** 9) == 10.0
    assert s.time_of(1000) == pytest.approx(1.0, rel=1e-3)     # attempt 1000 just after 1 s
