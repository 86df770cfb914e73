"""``cauldron-zmq show | modify | monitor | list``: KTL's command-line tools.

KTL users type ``show -s service KEYWORD`` and ``modify -s service KW=value``
without thinking; these keep their flags and KROOT-style assignments
(``KW=value``, ``KW =value``, ``KW= value``, ``KW = value``).

Exit statuses: 0 success, 1 an error (one line on stderr; a traceback only
with ``-v``), 2 a usage error.  ^C ends ``monitor`` normally (status 0).
"""
from __future__ import annotations

import datetime
import functools
import json
import queue
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from ..errors import CauldronError

__all__ = ["show", "modify", "monitor", "list_", "parse_assignments"]

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_ARGS_CONTEXT = dict(_CONTEXT, ignore_unknown_options=True)   # values like -5


# ----------------------------------------------------------------- plumbing

def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-c/--config and -v, and errors as one line on stderr (exit 1)."""
    fn = click.option("-v", "--verbose", count=True,
                      help="-v: info and tracebacks, -vv: debug logging.")(fn)
    fn = click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
                      help="Configuration file (TOML); default $CAULDRON_ZMQ_CONFIG, "
                           "else built-in.")(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from ..cli import setup_logging
        setup_logging(kwargs.get("verbose", 0))
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (CauldronError, KeyError, ValueError, TypeError, OSError) as exc:
            if kwargs.get("verbose", 0):
                traceback.print_exc()
            _fail(ctx.info_name or "cauldron-zmq", exc)
    return run


def _fail(command: str, exc: BaseException) -> None:
    click.echo(f"cauldron-zmq {command}: error: {_one_line(exc)}", err=True)
    sys.exit(1)


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _service(name: str, config_path: Optional[str], timeout: Optional[float],
             populate: bool = False) -> Any:
    from ..ktl import Service
    return Service(name, populate=populate, config=config_path, timeout=timeout)


def _timeout_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True),
                        default=None, metavar="SECONDS",
                        help="Per-request timeout (default: [zmq] timeout).")(fn)


def _service_option(required: bool = True) -> Callable[..., Any]:
    return click.option("-s", "--service", required=required, metavar="SERVICE",
                        help="The KTL service.")


def _jsonable(kw: Any, native: Any) -> Any:
    """A native value as JSON: NaN as "nan", arrays as lists."""
    if native is None:
        return None
    try:
        wire, raw = kw.keyword_type.to_wire(native)
    except (ValueError, TypeError):
        return str(native)
    if raw is not None:
        return native.tolist()
    return wire


# --------------------------------------------------------------------- show

@click.command("show", context_settings=_CONTEXT)
@_service_option()
@click.argument("keywords", nargs=-1, required=True, metavar="KEYWORD...")
@click.option("-b", "--binary", is_flag=True, help="Show native (binary) values, not ascii.")
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_common
def show(service: str, keywords: Tuple[str, ...], binary: bool, timeout: Optional[float],
         as_json: bool, config_path: Optional[str], verbose: int) -> None:
    """Read keywords: one 'KEYWORD = value [units]' line each."""
    from ..client import deadline
    from ..config import load_config
    seconds = timeout if timeout is not None else load_config(config_path).zmq.timeout / 1000
    with deadline(seconds), _service(service, config_path, timeout) as svc:   # one for all
        kws = [svc[name] for name in keywords]
        tasks = [kw.read(wait=False, both=True) for kw in kws]
        results = [task.get() for task in tasks]
        if as_json:
            click.echo(json.dumps({kw.name: {
                "ascii": text, "binary": _jsonable(kw, native), "units": kw["units"],
                "type": kw["type"], "timestamp": kw["timestamp"]}
                for kw, (native, text) in zip(kws, results)}, indent=2))
            return
        for kw, (native, text) in zip(kws, results):
            click.echo(_show_line(kw, native if binary else text))


def _show_line(kw: Any, value: Any) -> str:
    units = kw["units"]
    return f"{kw.name} = {value}" + (f" {units}" if units else "")


# ------------------------------------------------------------------- modify

_FLAGS = {"nowait": "nowait", "wait": "wait", "silent": "quiet", "quiet": "quiet",
          "parallel": "parallel", "notify": "parallel", "binary": "binary"}


def parse_assignments(tokens: Sequence[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """KROOT-style ``KW=value`` tokens to ([(KW, value)], [bare flags]).

    Accepts ``KW=value``, ``KW =value``, ``KW= value`` and ``KW = value``
    (as the shell splits them); bare words nowait, silent, notify... are
    flags.  Raises click.UsageError for anything else.
    """
    pairs: List[Tuple[str, str]] = []
    flags: List[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if "=" in tok and not tok.startswith("="):
            name, _, value = tok.partition("=")
            if value == "" and i + 1 < len(tokens):      # KW= value
                value, i = tokens[i + 1], i + 1
            pairs.append((name.strip(), value))
        elif i + 1 < len(tokens) and tokens[i + 1].startswith("="):
            nxt = tokens[i + 1]                           # KW =value | KW = value
            value, i = nxt[1:], i + 1
            if value == "" and i + 1 < len(tokens):
                value, i = tokens[i + 1], i + 1
            pairs.append((tok.strip(), value))
        elif tok.lower() in _FLAGS:
            flags.append(_FLAGS[tok.lower()])
        else:
            raise click.UsageError(f"expected KEYWORD=VALUE, got {tok!r}")
        i += 1
    if not pairs:
        raise click.UsageError("nothing to modify: give at least one KEYWORD=VALUE")
    for name, _ in pairs:
        if not name:
            raise click.UsageError("an assignment has no keyword name")
    return pairs, flags


def _binary_value(text: str) -> Any:
    """-b: the value is native; JSON when it parses (1, 2.5, true, [1, 2]), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@click.command("modify", context_settings=_ARGS_CONTEXT)
@_service_option()
@click.argument("assignments", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="KEYWORD=VALUE...")
@click.option("-n", "--nowait", is_flag=True, help="Do not wait for the writes to complete.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.option("-p", "--parallel", is_flag=True, help="Send every write, then wait for all.")
@click.option("-b", "--binary", is_flag=True, help="Values are native (binary) forms.")
@_timeout_option
@_common
def modify(service: str, assignments: Tuple[str, ...], nowait: bool, quiet: bool,
           parallel: bool, binary: bool, timeout: Optional[float],
           config_path: Optional[str], verbose: int) -> None:
    """Write keywords and wait until the dispatcher applied each write."""
    pairs, flags = parse_assignments(assignments)
    nowait = nowait or "nowait" in flags
    quiet = quiet or "quiet" in flags
    parallel = parallel or "parallel" in flags
    binary = binary or "binary" in flags
    mode = "nowait" if nowait else "parallel" if parallel else "wait"
    with _service(service, config_path, timeout) as svc:
        kws = [(svc[name], value) for name, value in pairs]      # unknown names fail first
        say = (lambda text: None) if quiet else click.echo
        if mode == "wait":
            from .progress import write_showing_progress
            for kw, value in kws:
                say(f"setting {kw.name} = {value} ({mode})")
                write_showing_progress(svc, kw, _binary_value(value) if binary else value,
                                       binary)
            return
        tasks = []
        for kw, value in kws:
            say(f"setting {kw.name} = {value} ({mode})")
            tasks.append((kw, kw.write(_binary_value(value) if binary else value,
                                       wait=False, binary=binary)))
        _finish(tasks, nowait, say)


def _finish(tasks: List[Tuple[Any, Any]], nowait: bool, say: Callable[[str], Any]) -> None:
    """Wait for all (parallel) or for receipt only (nowait); the first error wins."""
    first_error: Optional[BaseException] = None
    for kw, task in tasks:
        if nowait:
            if not task.wait_acknowledged():
                task.get()                # raises the TimeoutError
            if task.done() and task.status == "error" and first_error is None:
                first_error = task.error
            continue
        try:
            task.get()
        except CauldronError as exc:
            first_error = first_error or exc
            continue
        say(f"{kw.name} complete")
    if first_error is not None:
        raise first_error


# ------------------------------------------------------------------ monitor

@click.command("monitor", context_settings=_CONTEXT)
@_service_option()
@click.argument("keywords", nargs=-1, required=True, metavar="KEYWORD...")
@click.option("--count", type=click.IntRange(min=1), default=None, metavar="N",
              help="Exit after N changes (the initial values do not count).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Exit after this many seconds.")
@click.option("-b", "--binary", is_flag=True, help="Show native (binary) values.")
@_timeout_option
@_common
def monitor(service: str, keywords: Tuple[str, ...], count: Optional[int],
            duration: Optional[float], binary: bool, timeout: Optional[float],
            config_path: Optional[str], verbose: int) -> None:
    """Print a timestamped line per change (KTL's cshow) until ^C, --count or --duration."""
    updates: "queue.Queue[Tuple[Any, Any, Optional[str], Optional[float], bool]]" = queue.Queue()

    def on_update(kw: Any) -> None:
        updates.put((kw, kw.value, kw.ascii, kw.timestamp, kw.connected))

    with _service(service, config_path, timeout) as svc:
        kws = [svc[name] for name in keywords]
        for kw in kws:
            kw.callback(on_update)
            kw.monitor(prime=False)
        last: Dict[str, Any] = {}
        for kw, (native, text) in zip(kws, [t.get() for t in
                                             [kw.read(wait=False, both=True) for kw in kws]]):
            _print_update(kw, native, text, kw.timestamp, True, binary, last)
        try:
            _monitor_loop(updates, count, duration, binary, last)
        except KeyboardInterrupt:
            pass


def _monitor_loop(updates: "queue.Queue[Any]", count: Optional[int],
                  duration: Optional[float], binary: bool, last: Dict[str, Any]) -> None:
    deadline = time.monotonic() + duration if duration is not None else None
    printed = 0
    while count is None or printed < count:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            return
        try:
            kw, native, text, stamp, connected = updates.get(
                timeout=min(wait, 0.5) if wait is not None else 0.5)
        except queue.Empty:
            continue
        if _print_update(kw, native, text, stamp, connected, binary, last):
            printed += 1


def _print_update(kw: Any, native: Any, text: Optional[str], stamp: Optional[float],
                  connected: bool, binary: bool, last: Dict[str, Any]) -> bool:
    """One line, unless it repeats the value (and state) already shown."""
    key = (stamp, text, connected)
    if last.get(kw.name) == key:
        return False
    last[kw.name] = key
    when = datetime.datetime.fromtimestamp(stamp if stamp is not None else time.time())
    line = f"{when.isoformat(sep=' ', timespec='milliseconds')} " + \
        _show_line(kw, native if binary else text)
    click.echo(line if connected else f"{line} (disconnected)")
    return True


# --------------------------------------------------------------------- list

@click.command("list", context_settings=_CONTEXT)
@_service_option(required=False)
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_common
def list_(service: Optional[str], timeout: Optional[float], as_json: bool,
          config_path: Optional[str], verbose: int) -> None:
    """Services known to the router, or (-s) a service's keywords with type, units, value."""
    if service is None:
        _list_services(config_path, timeout, as_json)
    else:
        _list_keywords(service, config_path, timeout, as_json)


def _list_services(config_path: Optional[str], timeout: Optional[float], as_json: bool) -> None:
    from ..config import load_config
    from ..router import RouterClient
    config = load_config(config_path)
    millis = max(1, int(timeout * 1000)) if timeout is not None else None
    with RouterClient(config, timeout=millis) as client:
        book = client.list()
    services: Dict[str, List[str]] = {}
    for entry in book.get("entries") or ():
        services.setdefault(entry["service"], []).append(
            f"{entry['dispatcher']} ({entry.get('state', '?')})")
    if as_json:
        click.echo(json.dumps({name: sorted(d) for name, d in sorted(services.items())},
                              indent=2))
        return
    for name in sorted(services):
        click.echo(f"{name}  {', '.join(sorted(services[name]))}")


def _list_keywords(service: str, config_path: Optional[str], timeout: Optional[float],
                   as_json: bool) -> None:
    with _service(service, config_path, timeout, populate=True) as svc:
        kws = [svc[name] for name in svc.keywords()]
        if as_json:
            click.echo(json.dumps({kw.name: {"type": kw["type"], "units": kw["units"],
                                             "ascii": kw["ascii"]} for kw in kws}, indent=2))
            return
        rows = [("KEYWORD", "TYPE", "UNITS", "VALUE")] + [
            (kw.name, kw["type"], kw["units"] or "", "" if kw["ascii"] is None else kw["ascii"])
            for kw in kws]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
