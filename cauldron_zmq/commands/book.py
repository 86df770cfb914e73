"""``cauldron-zmq forget`` and ``cauldron-zmq unblock``: an operator's clean-up of
the router's book.

``forget SERVICE[/DISPATCHER]`` removes stale or stuck entries (their port
pairs are free again); ``unblock [PORT]`` releases ports the router skips
because a dispatcher could not bind them.  Both are admin commands: with
``[zmq-security]`` only a key listed in ``admins``, without it only a client
on the router's own host (as for the router's ``shutdown``).
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Tuple

import click

from ..config import load_config
from ..errors import CauldronError, ConfigurationError
from ..names import InvalidName, check_name
from ..router import RouterClient

_CONFIG = click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
                       help="Configuration file (TOML); default $CAULDRON_ZMQ_CONFIG, "
                            "else built-in.")
_TIMEOUT = click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True),
                        default=None, metavar="SECONDS",
                        help="How long to wait for the router (default: [zmq-router] timeout).")


def _fail(command: str, message: str) -> None:
    """One line on stderr, as every tool's error (docs/cli.rst), and exit status 1."""
    click.echo(f"cauldron-zmq {command}: error: {' '.join(message.split())}", err=True)
    sys.exit(1)


def split_target(text: str) -> Tuple[str, Optional[str]]:
    """``SERVICE`` or ``SERVICE/DISPATCHER``, each a valid name (ValueError if not)."""
    service, _, dispatcher = text.partition("/")
    check_name("service", service.strip().lower())
    if _:
        check_name("dispatcher", dispatcher)
        return service.strip().lower(), dispatcher
    return service.strip().lower(), None


def _ask(command: str, config_path: Optional[str], timeout: Optional[float],
         call: Any) -> Dict[str, Any]:
    try:
        config = load_config(config_path)
    except ConfigurationError as exc:
        _fail(command, str(exc))
    millis = max(1, int(round(timeout * 1000))) if timeout is not None else None
    try:
        with RouterClient(config, timeout=millis) as client:
            return call(client)
    except CauldronError as exc:
        _fail(command, str(getattr(exc, "message", None) or exc))
    raise AssertionError("unreachable")


@click.command("forget")
@click.argument("target", metavar="SERVICE[/DISPATCHER]")
@_CONFIG
@_TIMEOUT
def forget(target: str, config_path: Optional[str], timeout: Optional[float]) -> None:
    """Remove a service's entries (or one dispatcher's) from the router's book.

    For entries left by dispatchers that are gone for good; a live dispatcher
    that is forgotten registers again at its next heartbeat.
    """
    try:
        service, dispatcher = split_target(target)
    except (InvalidName, ValueError) as exc:
        _fail("forget", str(exc))
        return
    result = _ask("forget", config_path, timeout,
                  lambda client: client.forget(service, dispatcher))
    for entry in result.get("forgotten") or ():
        click.echo(f"forgot {entry['service']}/{entry['dispatcher']} "
                   f"(ports {entry['dispatch_port']}/{entry['broadcast_port']}, "
                   f"{entry['state']})")


@click.command("unblock")
@click.argument("port", type=click.IntRange(1, 65535), required=False)
@_CONFIG
@_TIMEOUT
def unblock(port: Optional[int], config_path: Optional[str], timeout: Optional[float]) -> None:
    """Release a blocked port of the router's book (every blocked port without PORT)."""
    result = _ask("unblock", config_path, timeout, lambda client: client.unblock(port))
    ports = result.get("unblocked") or []
    if ports:
        click.echo("unblocked " + ", ".join(str(p) for p in ports))
    else:
        click.echo("no port was blocked")
