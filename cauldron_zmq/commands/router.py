"""``cauldron-zmq services``: what the router's book holds, as a table or JSON;
``cauldron-zmq router``: the router itself (``Cauldron-router-zmq``, in lower case).

With ``[zmq-router] replicas`` every router is asked at once and each book
is shown; entries the books disagree on (:func:`cauldron_zmq.protocol.replicas.disagreements`)
and conflicts the dispatchers report are marked in a ``NOTE`` column.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional, Set, Tuple

import click

from ..config import load_config
from ..errors import CauldronError, ConfigurationError
from ..protocol.replicas import disagreements
from ..router import RouterClient, ask_routers
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


def format_table(entries: List[Dict[str, Any]],
                 notes: Optional[Dict[Tuple[str, str], str]] = None) -> str:
    """One line per entry under a header, columns padded to their widest cell.

    ``notes`` (several routers) adds a NOTE column: why an entry is marked.
    """
    columns = COLUMNS + (("NOTE",) if notes is not None else ())
    rows = [columns] + [
        (e["service"], e["dispatcher"], e["host"], str(e["dispatch_port"]),
         str(e["broadcast_port"]), e["state"], format_age(float(e["age"])))
        + ((notes.get((e["service"], e["dispatcher"]), ""),) if notes is not None else ())
        for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
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
    if len(config.router_addresses()) > 1:
        _every_book(config, millis, as_json)
        return
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


def _every_book(config: Any, millis: Optional[int], as_json: bool) -> None:
    """Each router's book, asked all at once; disagreements and conflicts marked."""
    millis = millis or config.router.timeout
    clients = [RouterClient(config, address=a, timeout=millis)
               for a in config.router_addresses()]
    try:
        answers = ask_routers(clients, "list", timeout=millis)
    finally:
        for client in clients:
            client.close()
    addresses = [c.address for c in clients]
    books = {a: answers[a]["entries"] if isinstance(answers.get(a), dict) else None
             for a in addresses}
    if all(book is None for book in books.values()):
        _fail(in_seconds("; ".join(f"{a}: {answers[a]}" for a in addresses)))
        return
    differ = disagreements(books)
    if as_json:
        _print_json(config, addresses, answers, differ)
        return
    for index, address in enumerate(addresses):
        if index:
            click.echo("")
        answer = answers[address]
        if not isinstance(answer, dict):
            click.echo(f"router {address}: {in_seconds(str(answer))}")
            continue
        entries = answer.get("entries") or []
        click.echo(f"router {address}: {len(entries)} entries")
        if entries:
            click.echo(format_table(entries, _notes(entries, differ)))
        for entry in entries:
            for text in entry.get("conflicts") or ():
                click.echo(f"  conflict reported by {entry['service']}/{entry['dispatcher']}: "
                           f"{text}")
        if answer.get("blocked"):
            click.echo("blocked ports (never handed out again): "
                       + ", ".join(str(p) for p in answer["blocked"]))
    if differ:
        click.echo("")
        click.echo("the routers disagree on: "
                   + ", ".join(f"{s}/{d}" for s, d in sorted(differ)))


def _notes(entries: List[Dict[str, Any]],
           differ: Set[Tuple[str, str]]) -> Dict[Tuple[str, str], str]:
    notes = {}
    for entry in entries:
        name = (entry["service"], entry["dispatcher"])
        words = (["differs"] if name in differ else []) + \
            (["conflict"] if entry.get("conflicts") else [])
        notes[name] = ",".join(words)
    return notes


def _print_json(config: Any, addresses: List[str], answers: Dict[str, Any],
                differ: Set[Tuple[str, str]]) -> None:
    """The first answering router's book at the top (as with one router), and all of them."""
    routers = []
    for address in addresses:
        answer = answers[address]
        routers.append(dict(answer, router=address) if isinstance(answer, dict)
                       else {"router": address, "error": in_seconds(str(answer))})
    first = next(r for r in routers if "error" not in r)
    out = dict(first, routers=routers, disagree=[f"{s}/{d}" for s, d in sorted(differ)])
    click.echo(json.dumps(out, indent=2))


#: ``cauldron-zmq router``: the same program as ``Cauldron-router-zmq`` (same
#: options, messages and exit statuses), in the command family's lower case.
router = click.Command(
    "router", params=list(_router_main.params), callback=_router_main.callback,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Run the router in the foreground until ^C, SIGTERM or a shutdown request "
         "(the same program as Cauldron-router-zmq).",
    short_help="Run the router (Cauldron-router-zmq).")
