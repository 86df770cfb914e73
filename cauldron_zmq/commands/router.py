"""``cauldron-zmq services``: what the router's book holds, as a table or JSON;
``cauldron-zmq router``: the router itself (``Cauldron-router-zmq``, in lower case)."""
from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional

import click

from ..config import load_config
from ..errors import CauldronError, ConfigurationError
from ..router import RouterClient
from ..router import main as _router_main
from .text import in_seconds

COLUMNS = ("SERVICE", "DISPATCHER", "HOST", "DISPATCH", "BROADCAST", "STATE", "AGE")


def format_age(seconds: float) -> str:
    """Short and sortable by eye: 4.2s, 12m05s, 3h04m, 2d03h."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_table(entries: List[Dict[str, Any]]) -> str:
    """One line per entry under a header, columns padded to their widest cell."""
    rows = [COLUMNS] + [
        (e["service"], e["dispatcher"], e["host"], str(e["dispatch_port"]),
         str(e["broadcast_port"]), e["state"], format_age(float(e["age"])))
        for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def _fail(message: str) -> None:
    click.echo(f"cauldron-zmq services: {message}", err=True)
    sys.exit(1)


@click.command("services", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
              help="Configuration file (TOML); default $CAULDRON_ZMQ_CONFIG, else built-in.")
@click.option("--json", "as_json", is_flag=True, help="Print the book as JSON.")
@click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS",
              help="How long to wait for the router (default: [zmq-router] timeout).")
@click.option("-v", "--verbose", count=True, help="-v: info, -vv: debug logging.")
def services(config_path: Optional[str], as_json: bool, timeout: Optional[float],
             verbose: int) -> None:
    """List the dispatchers the router knows: ports, state and age of the last heartbeat."""
    from ..cli import setup_logging
    setup_logging(verbose, quiet=True)
    try:
        config = load_config(config_path)
    except ConfigurationError as exc:
        _fail(str(exc))
        return
    millis = max(1, int(round(timeout * 1000))) if timeout is not None else None
    try:
        with RouterClient(config, timeout=millis) as client:
            book = client.list()
    except CauldronError as exc:
        _fail(in_seconds(str(getattr(exc, "message", None) or exc)))
        return
    if as_json:
        click.echo(json.dumps(dict(book, router=config.router_address()), indent=2))
        return
    if book.get("entries"):
        click.echo(format_table(book["entries"]))
    else:
        click.echo(f"no dispatchers registered with the router at {config.router_address()}")
    if book.get("blocked"):
        click.echo("blocked ports (a dispatcher could not bind them; tried again after a "
                   "back-off, or 'cauldron-zmq unblock'): "
                   + ", ".join(str(p) for p in book["blocked"]))


#: ``cauldron-zmq router``: the same program as ``Cauldron-router-zmq`` (same
#: options, messages and exit statuses), in the command family's lower case.
router = click.Command(
    "router", params=list(_router_main.params), callback=_router_main.callback,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Run the router in the foreground until ^C, SIGTERM or a shutdown request "
         "(the same program as Cauldron-router-zmq).",
    short_help="Run the router (Cauldron-router-zmq).")
