#!/usr/bin/env python3
"""An asyncio client session: reads, a refused write, a monitor and a wait, on one loop.

Against the example instrument (``examples/instrument.py``, or
``cauldron-zmq serve demo examples/instrument.toml``)::

    python examples/aio_monitor.py [-c CONFIG] [--service demo]

A monitor runs as a task of its own while the session writes: it sees the
current value first, then every change in order, and the loop ends it by
leaving its ``async for``.
"""
from __future__ import annotations

import argparse
import asyncio
from typing import List

from cauldron_zmq import aio


def say(text: str) -> None:
    print(text, flush=True)


async def watch(kw: aio.Keyword, last: str, seen: List[str]) -> None:
    """Print every change of ``kw`` until it shows ``last``."""
    async for update in kw.monitor():
        seen.append(update.ascii or "")
        say(f"  monitor: {kw.name} = {update.ascii} (change {update.seq})")
        if update.ascii == last:
            break                                   # leaving the loop unsubscribes


async def session(service: str, config: str = None) -> None:
    async with aio.Service(service, config=config) as svc:
        say(f"Keywords of {svc.name}: {', '.join(svc.keywords())}")
        values = await asyncio.gather(*[svc[name].read() for name in ("FILTER", "SETPOINT")])
        say(f"  FILTER = {values[0]}, SETPOINT = {values[1]} {svc['SETPOINT'].units}")

        say("Writing SETPOINT = 99 (above its range):")
        try:
            await svc["SETPOINT"].write(99)
        except ValueError as exc:                   # a refused value is a ValueError
            say(f"  refused: {exc}")

        say("Watching OBSERVER while three observers sign in:")
        observer, seen = svc["OBSERVER"], []
        names = ["ada", "grace", "vera"]
        watcher = asyncio.ensure_future(watch(observer, names[-1], seen))
        while not seen:                             # the monitor's first value: the current one
            await asyncio.sleep(0.01)
        for name in names:
            say(f"  write OBSERVER = {await observer.write(name)}")
        await asyncio.wait_for(watcher, 10)
        say(f"  the monitor saw: {', '.join(seen[1:])}")

        say("Moving the filter to R and waiting for it:")
        moved = svc["FILTER"].write("R", wait=False)    # sent now, awaited below
        await aio.wait_for(f"${svc.name}.FILTER == R", timeout=10)
        say(f"  FILTER = {await moved}")
        await svc["OBSERVER"].write("nobody")
    say("Done.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="configuration file (TOML)")
    parser.add_argument("--service", default="demo")
    args = parser.parse_args(argv)
    asyncio.run(session(args.service, args.config))


if __name__ == "__main__":
    main()
