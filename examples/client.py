#!/usr/bin/env python3
"""A client session against the example instrument, as an observer's script.

Reads, a write the dispatcher refuses (with its reason), a slow filter move
watched through a monitor, and a wait for a condition::

    python examples/client.py [-c CONFIG] [--service demo]
"""
from __future__ import annotations

import argparse
import time

from cauldron_zmq import ktl


def say(text: str) -> None:
    print(text, flush=True)


def session(service_name: str, config=None) -> None:
    svc = ktl.Service(service_name, config=config, wait=10)
    try:
        run(svc)
    finally:
        svc.shutdown()


def run(svc: "ktl.Service") -> None:
    say(f"Keywords of {svc.name}: {', '.join(svc.keywords())}")
    for name in ("FILTER", "TEMP", "SETPOINT", "OBSERVER"):
        kw = svc[name]
        say(f"  {name} = {kw.read()} {kw['units']}".rstrip())

    say("Writing SETPOINT = 99 (above its range):")
    try:
        svc["SETPOINT"].write(99)
    except ktl.DispatcherError as exc:
        say(f"  refused: {exc}")

    say("Moving the filter wheel to R and watching MOVING:")
    moving = svc["MOVING"]
    moving.callback(lambda kw: say(f"  {time.strftime('%H:%M:%S')} MOVING = {kw['ascii']}"))
    moving.monitor()
    svc["FILTER"].write("R")          # starts the move
    try:
        svc["FILTER"].write("I")
    except ktl.DispatcherError as exc:
        say(f"  a second move while moving is refused: {exc}")
    if not moving.wait(timeout=30, operator="==", value=False):    # False: timed out, as KTL
        say("  the filter wheel did not stop within 30 s")
    say(f"  FILTER = {svc['FILTER'].read()}")

    say("Heating: SETPOINT = 25, then waiting for TEMP > 24")
    svc["SETPOINT"].write(25)
    svc["TEMP"].monitor()
    if not ktl.waitFor(f"${svc.name}.TEMP > 24", timeout=30):
        say("  TEMP did not pass 24 degC within 30 s")
    say(f"  TEMP = {svc['TEMP'].read()} degC")
    svc["SETPOINT"].write(20)
    say("Done.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="configuration file (TOML)")
    parser.add_argument("--service", default="demo")
    args = parser.parse_args(argv)
    session(args.service, args.config)


if __name__ == "__main__":
    main()
