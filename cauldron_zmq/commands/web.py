"""``cauldron-zmq web``: a live status page and an HTTP/JSON gateway.

Needs the ``web`` extra (starlette and uvicorn); without it the command says
how to install it.  See docs/web.rst.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Tuple

import click

__all__ = ["web", "parse_bind"]

DEFAULT_BIND = "127.0.0.1:8080"
INSTALL_HINT = "pip install 'cauldron_zmq[web]'"


def parse_bind(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) to (host, port); ValueError if malformed."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"--bind {text!r}: expected HOST:PORT, e.g. {DEFAULT_BIND}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--bind {text!r}: the port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise ValueError(f"--bind {text!r}: the port must be 1..65535")
    return host, number


def _fail(message: str) -> None:
    click.echo(f"cauldron-zmq web: error: {message}", err=True)
    sys.exit(1)


@click.command("web", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
              help="Configuration file (TOML); default $CAULDRON_ZMQ_CONFIG, else built-in.")
@click.option("--bind", default=DEFAULT_BIND, show_default=True, metavar="HOST:PORT",
              help="Where to serve HTTP (loopback unless told otherwise).")
@click.option("--allow-writes", is_flag=True,
              help="Let the page and PUT requests write keywords (default: read only).")
@click.option("-v", "--verbose", count=True, help="-v: info, -vv: debug logging.")
def web(config_path: Optional[str], bind: str, allow_writes: bool, verbose: int) -> None:
    """Serve a live status page and a JSON/SSE gateway for every service the router knows."""
    from ..cli import setup_logging
    from ..config import load_config
    from ..errors import ConfigurationError
    setup_logging(verbose)
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as exc:
        _fail(f"the web gateway needs {exc.name!r}, which is not installed; {INSTALL_HINT}")
        return
    try:
        host, port = parse_bind(bind)
        config = load_config(config_path)
    except (ValueError, ConfigurationError) as exc:
        _fail(str(exc))
        return
    from ..web.app import create_app
    from ..web.gateway import Gateway
    gateway = Gateway(config, allow_writes=allow_writes)

    note = " (writes allowed)" if allow_writes else ""

    class Server(uvicorn.Server):
        async def startup(self, *args: Any, **kwargs: Any) -> None:
            await super().startup(*args, **kwargs)
            if self.started:
                click.echo(f"cauldron-zmq web: serving http://{bind} for the router at "
                           f"{config.router_address()}{note}", err=True)

        def handle_exit(self, sig: int, frame: Any) -> None:
            gateway.stopping = True           # event streams end, so shutdown is quick
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(
        create_app(gateway), host=host, port=port, log_level="info" if verbose else "warning",
        access_log=verbose >= 2, lifespan="on", timeout_graceful_shutdown=3))
    try:
        server.run()
    except SystemExit as exc:                 # uvicorn's exit status 3: could not start
        if exc.code not in (0, None):
            _fail(f"could not serve on {bind} (see the message above)")
        raise
    if not server.started:
        _fail(f"could not serve on {bind} (see the message above)")
