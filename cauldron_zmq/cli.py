"""The ``cauldron-zmq`` command: a click group whose sub-commands live in
:mod:`cauldron_zmq.commands`, one module per area.

``-c FILE`` and ``-v`` may come before the sub-command as well as after it
(``cauldron-zmq -v show ...``): the group hands them to the sub-command.

Exit statuses: 0 success, 1 an error (one line on stderr), 2 a usage error.
"""
from __future__ import annotations

import importlib
import logging
import re
from typing import List, Optional, Sequence, Tuple

import click

from . import __version__

# (module, attribute) of every sub-command.
_COMMANDS = (
    ("cauldron_zmq.commands.router", "services"),
    ("cauldron_zmq.commands.router", "router"),
    ("cauldron_zmq.commands.serve", "serve"),
    ("cauldron_zmq.commands.tools", "show"),
    ("cauldron_zmq.commands.tools", "modify"),
    ("cauldron_zmq.commands.tools", "monitor"),
    ("cauldron_zmq.commands.tools", "list_"),
    ("cauldron_zmq.commands.keygen", "keygen"),
    ("cauldron_zmq.commands.book", "forget"),
    ("cauldron_zmq.commands.book", "unblock"),
    ("cauldron_zmq.commands.web", "web"),
)

_VERBOSE = re.compile(r"-v+|--verbose")
_CONFIG_JOINED = re.compile(r"-c.+|--config=.*")
_HELP_OR_VERSION = {"-h", "--help", "--version"}


def hoist_common_options(args: Sequence[str]) -> Tuple[List[str], List[str], Optional[int]]:
    """Split the group's arguments: (other leading options, -c/-v tokens, index of the
    sub-command name or None).  ``-c FILE``, ``-cFILE``, ``--config[=]FILE``, ``-v``,
    ``-vv`` and ``--verbose`` before the sub-command are the ones handed on."""
    kept: List[str] = []
    moved: List[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--" or not token.startswith("-") or token == "-":
            break
        if _VERBOSE.fullmatch(token) or _CONFIG_JOINED.fullmatch(token):
            moved.append(token)
        elif token in ("-c", "--config"):
            moved.extend(args[i:i + 2])
            i += 1
        else:
            kept.append(token)
        i += 1
    index = i if i < len(args) and args[i] != "--" else None
    return kept, moved, index


def _option_of(token: str) -> str:
    return "-v" if _VERBOSE.fullmatch(token) else "-c"


class Group(click.Group):
    """A group that passes ``-c``/``-v`` given before the sub-command on to it."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        kept, moved, index = hoist_common_options(args)
        if moved and index is None:
            if set(kept) & _HELP_OR_VERSION:
                return super().parse_args(ctx, kept)      # help or version: nothing to pass on
            raise click.UsageError(f"{moved[0]} goes with a sub-command "
                                   "(cauldron-zmq -v show ...)", ctx)
        if moved and index is not None:
            name = args[index]
            command = self.get_command(ctx, name)
            if command is not None:
                accepted = {opt for p in command.params for opt in getattr(p, "opts", ())}
                for token in moved:
                    if token.startswith("-") and _option_of(token) not in accepted:
                        raise click.UsageError(f"'{name}' takes no {_option_of(token)} option",
                                               ctx)
                args = kept + [name] + moved + list(args[index + 1:])
        return super().parse_args(ctx, args)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="cauldron-zmq")
def main() -> None:
    """KTL-style keyword services over ZeroMQ: look up, read, write, monitor, serve.

    -c CONFIG and -v may be given before the sub-command or after it.
    """


def _register() -> None:
    for module_name, attr in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        main.add_command(getattr(module, attr))


def setup_logging(verbose: int, quiet: bool = False) -> None:
    """-v: info, -vv: debug.  Without -v only warnings reach stderr, and with
    ``quiet`` (the client tools: their errors are one line) only errors."""
    if verbose <= 0:
        level = logging.ERROR if quiet else logging.WARNING
    else:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


_register()
