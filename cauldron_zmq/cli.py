"""The ``cauldron-zmq`` command: a click group whose sub-commands live in
:mod:`cauldron_zmq.commands`, one module per area.

Exit statuses: 0 success, 1 an error (one line on stderr), 2 a usage error.
"""
from __future__ import annotations

import importlib
import logging

import click

from . import __version__

# (module, attribute) of every sub-command.
_COMMANDS = (
    ("cauldron_zmq.commands.router", "services"),
    ("cauldron_zmq.commands.serve", "serve"),
    ("cauldron_zmq.commands.tools", "show"),
    ("cauldron_zmq.commands.tools", "modify"),
    ("cauldron_zmq.commands.tools", "monitor"),
    ("cauldron_zmq.commands.tools", "list_"),
    ("cauldron_zmq.commands.keygen", "keygen"),
    ("cauldron_zmq.commands.web", "web"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="cauldron-zmq")
def main() -> None:
    """KTL-style keyword services over ZeroMQ: look up, read, write, monitor, serve."""


def _register() -> None:
    for module_name, attr in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        main.add_command(getattr(module, attr))


def setup_logging(verbose: int) -> None:
    """-v: info, -vv: debug; without it only warnings reach stderr."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


_register()
