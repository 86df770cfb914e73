"""The ``Cauldron-router-zmq`` console script (also ``python -m cauldron_zmq.router``).

Runs a :class:`~cauldron_zmq.router.launch.Router` in the foreground until
^C, SIGTERM or a ``shutdown`` request; the verbosity scale is in :mod:`.logs`.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Any, NoReturn, Optional

import click

from .. import __version__
from ..config import load_config
from ..errors import ConfigurationError
from .launch import Router
from .logs import NOTICE, PROG, VERBOSITY_LEVELS, log
from .serving import RouterBindError

__all__ = ["main", "setup_logging", "PROG"]


def setup_logging(verbose: int) -> None:
    """Router messages at the chosen verbosity; other libraries' warnings only."""
    level = VERBOSITY_LEVELS[max(0, min(verbose, len(VERBOSITY_LEVELS) - 1))]
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s " + PROG + "[%(process)d] %(levelname)s: %(message)s")
    log.setLevel(level)


def _fail(message: str) -> NoReturn:
    click.echo(f"{PROG}: {message}", err=True)
    sys.exit(1)


@click.command(name=PROG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
              help="Configuration file (TOML); default $CAULDRON_ZMQ_CONFIG, else built-in.")
@click.option("-v", "--verbose", count=True,
              help="-v registrations and expiries, -vv look-ups, -vvv every message "
                   "(default: [zmq-router] verbose).")
@click.version_option(__version__, "--version", prog_name=PROG)
def main(config_path: Optional[str], verbose: int) -> None:
    """Run a cauldron_zmq router in the foreground until ^C, SIGTERM or a shutdown request."""
    try:
        config = load_config(config_path)
    except ConfigurationError as exc:
        _fail(str(exc))
    setup_logging(verbose or config.router.verbose)
    router = Router(config)

    def on_signal(signum: int, _frame: Any) -> None:
        log.log(NOTICE, "%s received; saving the book and stopping", signal.Signals(signum).name)
        router.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        router.serve()
    except (RouterBindError, ConfigurationError) as exc:   # a key file of [zmq-security]
        _fail(str(exc))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

