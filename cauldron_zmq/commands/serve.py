"""``cauldron-zmq serve``: run a keyword service declared by files, with no code.

The files are TOML keyword files or KTL XML keyword bundles (``*.xml``, or a
directory of them: the service's own folder, or bundles filtered by their
``service`` attribute).  A simulator for testing clients and GUIs without
hardware: every keyword is served with its initial value, writes are accepted
within the declared type and range, and persisted keywords survive a
restart.  Runs in the foreground; SIGTERM or ^C shut it down cleanly
(unregistered, exit 0).
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, Sequence, Tuple

import click

from ..errors import CauldronError
from .text import plural

__all__ = ["serve"]


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("service")
@click.argument("files", nargs=-1, required=True, metavar="KEYWORDS.toml|BUNDLE.xml|DIR...")
@click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
              help="Configuration file (TOML); default $CAULDRON_ZMQ_CONFIG, else built-in.")
@click.option("--dispatcher", default=None, metavar="NAME",
              help="Dispatcher name, when several dispatchers serve one service "
                   "(default: 'default').")
@click.option("-v", "--verbose", count=True, help="-v: info, -vv: debug logging.")
def serve(service: str, files: Sequence[str], config_path: Optional[str],
          dispatcher: Optional[str], verbose: int) -> None:
    """Serve SERVICE with the keywords declared in the files until ^C or SIGTERM.

    Each file is a TOML keyword file, a KTL XML bundle (*.xml) or a directory
    of bundles.
    """
    from ..cli import setup_logging
    from ..dispatcher import Service

    setup_logging(verbose)
    toml, xml = split_files(files)
    try:
        svc = Service(service, config=config_path, dispatcher=dispatcher,
                      keywords=toml or None, xml=xml or None)
        svc.serve_forever(ready=_announce)
    except (CauldronError, OSError, ValueError) as exc:
        click.echo(f"cauldron-zmq serve: error: {_one_line(exc)}", err=True)
        sys.exit(1)


def split_files(files: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(TOML keyword files, KTL XML files and directories): by name, else by first byte."""
    from ..ktlxml import is_bundle_path
    toml: List[str] = []
    xml: List[str] = []
    for name in files:
        (xml if is_bundle_path(name) else toml).append(name)
    return toml, xml


def _announce(svc: Any) -> None:
    """One line on stderr saying where the service listens (shown even without -v)."""
    address = svc.address or {}
    click.echo(f"serving {svc.name} (dispatcher {svc.dispatcher}, {plural(len(svc), 'keyword')}): "
               f"requests {address.get('dispatch')}, broadcasts {address.get('broadcast')}; "
               f"^C or SIGTERM to stop", err=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
