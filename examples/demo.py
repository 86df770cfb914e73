#!/usr/bin/env python3
"""The demo: a router, the example instrument and a client session.

Starts ``Cauldron-router-zmq`` (unless one already answers at the configured
address), starts ``examples/instrument.py`` as a dispatcher process, runs the
client session of ``examples/client.py`` in this process, and then stops the
dispatcher and the router with SIGTERM, as an operator would.  Exits 0 when
every step worked and every process exited cleanly.

Persisted keyword values go to a temporary folder, removed at the end (unless
the configuration names a ``persist-dir``): a demo leaves nothing behind in
``~/.local/state``, whether it worked or not.

    python examples/demo.py [-c CONFIG] [--service NAME]
"""
from __future__ import annotations

import argparse
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

from cauldron_zmq.config import Config, load_config
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
    """Start a child process, saying what it is and the command that runs it."""
    shown = " ".join(["python"] + [os.path.relpath(a) if os.path.isabs(a) and
                                   a.startswith(os.getcwd()) else a for a in argv[1:]])
    print(f"   starting {name}: {shown}", flush=True)
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


def demo_config(path: Optional[str], scratch: str) -> Tuple[Config, str]:
    """The configuration, with persisted values kept in ``scratch`` unless it names a
    ``persist-dir``; and the path of a file holding it, for the child processes."""
    config = load_config(path)
    if config.zmq.persist_dir is not None and path:
        return config, os.path.abspath(path)
    if config.zmq.persist_dir is None:
        config = config.replace(zmq={"persist-dir": os.path.join(scratch, "persist")})
    written = os.path.join(scratch, "demo.toml")
    with open(written, "w", encoding="utf-8") as stream:
        stream.write(config.to_toml())
    return config, written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="configuration file (TOML); default: built-in")
    parser.add_argument("--service", default="demo")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cauldron-zmq-demo-") as scratch:
        config, path = demo_config(args.config, scratch)
        return run_demo(args.service, config, path)


def run_demo(service: str, config: Config, path: str) -> int:
    """Router, dispatcher, client session and shutdown; 0 when all of it worked."""
    cfg_args = ["-c", path]

    router = instrument = None
    status = 0
    try:
        banner(f"Router at {config.router_address()}")
        if router_answers(config):
            print("   a router already answers there; using it", flush=True)
        else:
            router = start([sys.executable, "-m", "cauldron_zmq.router", *cfg_args],
                           "the router (Cauldron-router-zmq)")
            wait_for_router(config, router)

        banner(f"Dispatcher for service {service!r}: the example instrument")
        instrument = start([sys.executable, str(HERE / "instrument.py"), "--service", service,
                            "--speed", "0.4", *cfg_args], "the dispatcher (examples/instrument.py)")

        banner("Client session (examples/client.py)")
        client = runpy.run_path(str(HERE / "client.py"))
        client["session"](service, config)
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
