"""``cauldron-zmq keygen``: make CurveZMQ key pairs for ``[zmq-security]``."""
from __future__ import annotations

import os
import sys
from typing import Tuple

import click

__all__ = ["keygen"]


@click.command("keygen", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("-n", "--name", "names", multiple=True, metavar="NAME",
              help="Name of a key pair (repeatable); default 'server'.  Files are "
                   "NAME.key (public) and NAME.key_secret (secret, mode 0600).")
@click.option("--force", is_flag=True, help="Replace existing key files of the same name.")
def keygen(directory: str, names: Tuple[str, ...], force: bool) -> None:
    """Make CurveZMQ key pairs in DIRECTORY and print where they are.

    One 'server' pair serves the router and every dispatcher
    ([zmq-security] server-secret-key; clients get its NAME.key as
    server-public-key).  Each client -- a person, a host, a program -- gets a
    pair of its own (client-secret-key); copy its NAME.key into the servers'
    authorized-keys directory to let it in.
    """
    from ..security import create_keys, describe_keys

    directory = os.path.abspath(os.path.expanduser(directory))
    made = []
    for name in names or ("server",):
        try:
            made.append((name,) + create_keys(directory, name, force=force))
        except (OSError, ValueError) as exc:
            click.echo(f"cauldron-zmq keygen: error: {exc}", err=True)
            sys.exit(1)
    keys = dict(describe_keys(directory))
    for name, public, secret in made:
        click.echo(f"{name}: public key {public}")
        click.echo(f"{' ' * len(name)}  secret key {secret}  (keep it private)")
        click.echo(f"{' ' * len(name)}  z85 {keys.get(name, '?')}")
    click.echo("Copy a client's NAME.key into the authorized-keys directory of the router "
               "and dispatchers; give clients the server's NAME.key as server-public-key.")
