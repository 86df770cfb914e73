#!/usr/bin/env python3
"""The demo: a router, the example instrument and a client session.

Starts ``Cauldron-router-zmq`` (unless one already answers at the configured
address), starts ``examples/instrument.py`` as a dispatcher process, runs the
client session of ``examples/client.py`` in this process, and then stops the
dispatcher and the router with SIGTERM, as an operator would.  Exits 0 when
every step worked and every process exited cleanly.

    python examples/demo.py [-c CONFIG] [--service NAME]
"""
from __future__ import annotations

import argparse
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from cauldron_zmq.config import load_config
from cauldron_zmq.errors import CauldronError
from cauldron_zmq.router import RouterClient

HERE = Path(__file__).resolve().parent


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def router_answers(config) -> bool:
    with RouterClient(config) as client:
        try:
            client.ping()
            return True
        except CauldronError:
            return False


def start(argv: List[str], name: str) -> subprocess.Popen:
    print(f"   starting {name}: {' '.join(argv[1:])}", flush=True)
    return subprocess.Popen(argv)


def stop(proc: Optional[subprocess.Popen], name: str, timeout: float = 10.0) -> int:
    """SIGTERM, then wait; a process that ignores it is killed and reported."""
    if proc is None:
        return 0
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"   {name} did not stop on SIGTERM and was killed", flush=True)
            return 1
    print(f"   {name} exited with status {proc.returncode}", flush=True)
    return proc.returncode


def wait_for_router(config, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the router exited with status {proc.returncode}")
        if router_answers(config):
            return
    raise SystemExit(f"demo: no router answered at {config.router_address()} within {timeout} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="configuration file (TOML); default: built-in")
    parser.add_argument("--service", default="demo")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    cfg_args = ["-c", os.path.abspath(args.config)] if args.config else []

    router = instrument = None
    status = 0
    try:
        banner(f"Router at {config.router_address()}")
        if router_answers(config):
            print("   a router already answers there; using it", flush=True)
        else:
            router = start([sys.executable, "-m", "cauldron_zmq.router", *cfg_args],
                           "Cauldron-router-zmq")
            wait_for_router(config, router)

        banner(f"Dispatcher for service {args.service!r}: the example instrument")
        instrument = start([sys.executable, str(HERE / "instrument.py"), "--service", args.service,
                            "--speed", "0.4", *cfg_args], "examples/instrument.py")

        banner("Client session (examples/client.py)")
        client = runpy.run_path(str(HERE / "client.py"))
        client["session"](args.service, args.config)
    except (CauldronError, OSError) as exc:
        print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        banner("Shutting down")
        status = stop(instrument, "dispatcher") or status
        status = stop(router, "router") or status
    print("\nDemo finished." if status == 0 else "\nDemo failed.", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
