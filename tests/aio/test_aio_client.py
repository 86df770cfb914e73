"""The asyncio client (cauldron_zmq.aio) against a real router and dispatcher on
loopback: reads, writes, refusals, monitors, cancellation, many calls at once."""
from __future__ import annotations

import asyncio
import builtins
import threading
from typing import Any, Iterator, List

import pytest

from cauldron_zmq import DFW, aio, errors, ktl
from cauldron_zmq.testing import ServiceHarness

from aio_support import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

SERVICE = "atest"
GATE = threading.Event()            # SLOW's write hook waits for it (or 10 s)


def _odd_refused(value: Any) -> None:
    if int(value) % 2:
        raise ValueError(f"PICKY refuses odd values like {value}")


def _unplugged(value: Any) -> None:
    raise RuntimeError("the heater is unplugged")


def setup(svc: Any) -> None:
    DFW.Double("TEMP", svc, initial=20.0, units="degC", maximum=40.0)
    DFW.Integer("COUNT", svc, initial=3)
    DFW.Enumerated("MODE", svc, enumerators=["Off", "On"], initial="Off")
    DFW.Integer("SLOW", svc, initial=0, write=lambda value: GATE.wait(10))
    DFW.Integer("PICKY", svc, initial=0, check=_odd_refused)
    DFW.Integer("HEATER", svc, initial=0, write=_unplugged)
    DFW.Integer("RO", svc, initial=7, readonly=True)
    DFW.DoubleArray("ARR", svc, initial=[1.0, 2.5])
    DFW.Integer("LAZY", svc, initial=0, read=_lazy_read)


READS = {"n": 0}


def _lazy_read() -> int:
    """LAZY's read hook: waits for GATE (a slow read), then counts."""
    GATE.wait(10)
    READS["n"] += 1
    return READS["n"]


@pytest.fixture(scope="module")
def harness() -> Iterator[ServiceHarness]:
    with ServiceHarness(setup, SERVICE) as h:
        yield h


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    GATE.clear()
    yield GATE
    GATE.set()


def service(harness: ServiceHarness, **kwargs: Any) -> aio.Service:
    return aio.Service(SERVICE, config=harness.config, **kwargs)


# ------------------------------------------------------------------- reads

async def test_connect_describe_and_read(harness: ServiceHarness) -> None:
    async with service(harness) as svc:
        assert svc.keywords() == ["ARR", "COUNT", "HEATER", "LAZY", "MODE", "PICKY", "RO",
                                  "SLOW", "TEMP"]
        temp = svc["temp"]
        assert temp is svc["TEMP"] and "temp" in svc and "NOPE" not in svc
        assert temp.units == "degC" and temp.value == 20.0    # described on entry
        assert await temp.read() == "20.0"
        assert await temp.read(binary=True) == 20.0
        assert await svc["MODE"].read(both=True) == (0, "Off")
        assert list(await svc["ARR"].read(binary=True)) == [1.0, 2.5]
        assert svc.isAlive()
        later = svc["COUNT"].read(wait=False)         # sent now, awaited later
        assert isinstance(later, asyncio.Future)
        assert await later == "3"


async def test_unknown_keyword_is_ktls_error(harness: ServiceHarness) -> None:
    async with service(harness) as svc:
        with pytest.raises(aio.UnknownKeyword) as info:
            svc["TEMPP"]
        assert info.type is ktl.UnknownKeyword and isinstance(info.value, KeyError)
        assert str(info.value) == f"service {SERVICE!r} has no keyword 'TEMPP'; " \
                                  f"did you mean 'TEMP'?"


async def test_unknown_service(harness: ServiceHarness) -> None:
    with pytest.raises(aio.ServiceNotFound, match=f"did you mean '{SERVICE}'"):
        async with aio.Service(SERVICE + "x", config=harness.config):
            pass


# ------------------------------------------------------------------ writes

async def test_writes_return_the_value_as_applied(harness: ServiceHarness) -> None:
    async with service(harness) as svc:
        assert await svc["TEMP"].write(21.5) == "21.5"
        assert await svc["TEMP"].write("22.25", binary=True) == 22.25
        assert await svc["MODE"].write("on") == "On"
        assert await svc["MODE"].write(0, binary=True) == 0
        pending = svc["COUNT"].write(11, wait=False)  # sent now: an awaitable completion
        assert await pending == "11"
        assert await svc["COUNT"].read() == "11"
        async with ktl_side(harness) as other:        # the threaded client agrees
            assert await asyncio.get_running_loop().run_in_executor(
                None, other["COUNT"].read) == "11"


class ktl_side:
    """A threaded ktl.Service opened and shut down off the loop."""

    def __init__(self, harness: ServiceHarness) -> None:
        self.harness = harness

    async def __aenter__(self) -> ktl.Service:
        loop = asyncio.get_running_loop()
        self.svc = await loop.run_in_executor(
            None, lambda: ktl.Service(SERVICE, config=self.harness.config))
        return self.svc

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.svc.shutdown)


async def test_refusals_are_the_threaded_clients(harness: ServiceHarness) -> None:
    async with service(harness) as svc:
        with pytest.raises(ValueError) as info:                      # range, remote
            await svc["TEMP"].write(99)
        assert isinstance(info.value, errors.DispatcherError)
        assert info.value.code == "invalid-value" and "maximum 40.0" in str(info.value)
        with pytest.raises(ValueError, match="PICKY refuses odd values"):   # check hook
            await svc["PICKY"].write(3)
        with pytest.raises(errors.DispatcherError) as info:          # write hook raised
            await svc["HEATER"].write(1)
        assert isinstance(info.value, RuntimeError) and info.value.code == "write-failed"
        assert "unplugged" in str(info.value)
        with pytest.raises(errors.DispatcherError) as info:
            await svc["RO"].write(8)
        assert info.value.code == "read-only"
        with pytest.raises(errors.ConversionError):                  # local, nothing sent
            svc["COUNT"].write(None)
        with pytest.raises(errors.MessageTooLarge) as too_large:
            svc["COUNT"].write("x" * (17 * 1024 * 1024))
        assert isinstance(too_large.value, ValueError)
        assert too_large.value.limit == harness.config.zmq.max_message_size
        assert await svc["TEMP"].read() != "99.0"                    # nothing applied
        assert len(svc._engine.pending) == 0


# ---------------------------------------------------------------- monitors

async def test_monitor_sees_every_change_and_the_last(harness: ServiceHarness) -> None:
    async with service(harness) as svc, service(harness) as writer:
        count = svc["COUNT"]
        await writer["COUNT"].write(0)
        seen: List[aio.Update] = []
        updates = count.monitor()
        first = await updates.__anext__()
        assert (first.value, first.ascii) == (0, "0") and first.seq is not None
        assert first.timestamp is not None and count.monitored

        async def consume(updates: aio.Monitor) -> None:
            async for update in updates:
                seen.append(update)
                if update.value == 300:
                    break
        consumer = asyncio.ensure_future(consume(updates))
        burst = [writer["COUNT"].write(n, wait=False) for n in range(1, 301)]
        assert await asyncio.gather(*burst) == [str(n) for n in range(1, 301)]
        await asyncio.wait_for(consumer, 10)
        assert [u.value for u in seen] == list(range(1, 301))      # every change, in order
        assert [u.ascii for u in seen[-2:]] == ["299", "300"]       # ...and the last
        assert all(b.seq > a.seq for a, b in zip(seen, seen[1:]))
        del updates, consumer
        assert not count.monitored                                   # left the loop


async def test_leaving_the_loop_unsubscribes(harness: ServiceHarness) -> None:
    async with service(harness) as svc:
        mode = svc["MODE"]
        async for update in mode.monitor():
            assert update.ascii in ("Off", "On")
            break
        assert not mode.monitored
        async with mode.monitor() as updates:
            assert mode.monitored
            assert (await updates.__anext__()).ascii in ("Off", "On")
        assert not mode.monitored


async def test_monitor_ends_when_the_service_closes(harness: ServiceHarness) -> None:
    svc = await service(harness).open()
    updates = svc["TEMP"].monitor()
    assert (await updates.__anext__()).value == (await svc["TEMP"].read(binary=True))
    await svc.close()
    with pytest.raises(StopAsyncIteration):
        await updates.__anext__()
    with pytest.raises(aio.ServiceShutDown):
        await svc["TEMP"].read()


# ------------------------------------------------------------ cancellation

async def test_cancelled_slow_write_leaves_nothing_behind(
        harness: ServiceHarness, gate: threading.Event) -> None:
    async with service(harness, timeout=5) as svc:
        slow, engine = svc["SLOW"], svc._engine
        before = await slow.read()
        task = asyncio.ensure_future(slow.write(int(before) + 1))
        await eventually(lambda: any(p.acked for p in engine.pending), 5,
                         "the dispatcher acknowledging the slow write")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(engine.pending) == 0                   # no entry left behind
        gate.set()                                        # the hook finishes; its reply
        await eventually(lambda: slow.value == int(before) + 1, 5,   # ...is dropped by id
                         "the cancelled write applied by the dispatcher")
        assert await slow.write(int(before) + 5) == str(int(before) + 5)   # not the late one
        assert await slow.read() == str(int(before) + 5)

        gate.clear()                                      # asyncio.wait_for cancels too
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow.write(int(before) + 7), 0.2)
        assert len(engine.pending) == 0
        gate.set()
        assert await svc["COUNT"].read() is not None


async def test_cancelled_slow_read_and_its_late_reply(
        harness: ServiceHarness, gate: threading.Event) -> None:
    async with service(harness, timeout=5) as svc:
        lazy, engine = svc["LAZY"], svc._engine
        reader = asyncio.ensure_future(lazy.read())
        await eventually(lambda: len(engine.pending) == 1, 5, "the read sent")
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert len(engine.pending) == 0
        before = READS["n"]
        gate.set()                                  # the hook ends: its late reply is dropped
        await eventually(lambda: READS["n"] == before + 1, 5, "the cancelled read's hook")
        assert await lazy.read() == str(before + 2)   # this read's own answer, not the late one
        assert len(engine.pending) == 0


async def test_timeouts_are_cauldron_and_asyncio_timeouts(
        harness: ServiceHarness, gate: threading.Event) -> None:
    async with service(harness) as svc:
        with pytest.raises(errors.TimeoutError) as info:
            await svc["SLOW"].write(1234, timeout=0.2)     # explicit: it does not wait on
        assert isinstance(info.value, builtins.TimeoutError)
        assert isinstance(info.value, asyncio.TimeoutError)
        assert "acknowledged the request but did not complete it" in str(info.value)
        assert len(svc._engine.pending) == 0


# ------------------------------------------------------------ concurrency

async def test_a_thousand_concurrent_reads(harness: ServiceHarness) -> None:
    async with service(harness) as svc:
        await svc["TEMP"].write(23.5)
        reads = [svc["TEMP"].read() for _ in range(1000)]
        assert await asyncio.gather(*reads) == ["23.5"] * 1000
        assert len(svc._engine.pending) == 0


async def test_two_loops_two_services(harness: ServiceHarness) -> None:
    """Any running loop: a second one in another thread works side by side."""
    async def other() -> str:
        async with service(harness) as svc:
            return await svc["RO"].read()
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, lambda: asyncio.run(other())) == "7"


# ------------------------------------------------------------------- waits

async def test_wait_for_expressions(harness: ServiceHarness) -> None:
    async with service(harness) as svc:
        await svc["COUNT"].write(1)
        waiter = asyncio.ensure_future(aio.wait_for(f"${SERVICE}.COUNT == 4", timeout=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await svc["COUNT"].write(4)
        assert await waiter is True
        assert await svc["COUNT"].wait_for("> 3 and < 5", timeout=1) is True
        assert await svc.wait_for(f"${SERVICE}.MODE == Off or ${SERVICE}.MODE == On")
        with pytest.raises(asyncio.TimeoutError) as info:
            await svc["COUNT"].wait_for("== 5", timeout=0.2)
        assert isinstance(info.value, errors.TimeoutError)
        assert "COUNT='4'" in str(info.value)
        with pytest.raises(aio.UnknownKeyword):
            await aio.wait_for(f"${SERVICE}.NOPE == 1")
        assert svc["COUNT"]._watchers == 0 and not svc["COUNT"]._listeners


def _counter(svc: Any) -> None:
    DFW.Integer("N", svc, initial=0)


async def test_lost_broadcasts_are_repaired_and_the_last_value_arrives() -> None:
    """High-water marks of 10 messages and a flood of 3,000 changes while the loop is
    busy: broadcasts are lost (a gseq gap), the keyword is read afresh, and the
    monitor still ends on the final value, in order."""
    with ServiceHarness(_counter, "agap", config={"zmq": {"hwm": 10}}) as h:
        async with aio.Service("agap", config=h.config) as svc:
            seen: List[int] = []
            updates = svc["N"].monitor()
            seen.append((await updates.__anext__()).value)
            for n in range(1, 3001):                  # the loop is blocked meanwhile
                h.dispatcher["N"].set(n)

            async def consume() -> None:
                async for update in updates:
                    seen.append(update.value)
                    if update.value == 3000:
                        return
            await asyncio.wait_for(consume(), 10)
            assert seen[0] == 0 and seen[-1] == 3000
            assert seen == sorted(set(seen))          # in order, each change once
            assert len(seen) < 3001                   # some were lost...
            await eventually(lambda: svc.dispatchers()[0]["in_sync"], 5, "repaired")


async def test_a_slow_write_without_a_deadline_waits_on(harness: ServiceHarness,
                                                        gate: threading.Event) -> None:
    """No timeout from the caller (only [zmq] timeout, 2 s): an acknowledged write
    waits past it while the dispatcher keeps its heartbeats, as in ktl."""
    async with service(harness) as svc:
        before = int(await svc["SLOW"].read())
        loop = asyncio.get_running_loop()
        loop.call_later(1.5 * svc.timeout, gate.set)
        start = loop.time()
        assert await svc["SLOW"].write(before + 1) == str(before + 1)
        assert loop.time() - start >= svc.timeout
