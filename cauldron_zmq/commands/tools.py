"""``cauldron-zmq show | modify | monitor | list``: KTL's command-line tools.

KTL users type ``show -s service KEYWORD`` and ``modify -s service KW=value``
without thinking; these keep their flags, KTL's single-dash long options
(``-service``, ``-terse``, ``-binary``, ``-timestamp``, ``-nowait``...; see
:mod:`.ktlargs`) and KROOT-style assignments (``KW=value``, ``KW =value``,
``KW= value``, ``KW = value``).

Exit statuses: 0 success, 1 an error (one line on stderr per error; a
traceback only with ``-v``), 2 a usage error.  ^C ends ``monitor`` normally
(status 0); a closed pipe (``list | head -1``) ends any of them quietly.
"""
from __future__ import annotations

import functools
import json
import queue
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import click

from ..errors import CauldronError
from ..names import InvalidName, check_name
from .ktlargs import KtlCommand
from .listing import list_keywords, list_services
from ..types import json_value
from .text import binary_text, in_seconds, stamp_text

__all__ = ["show", "modify", "monitor", "list_", "parse_assignments"]

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_ARGS_CONTEXT = dict(_CONTEXT, ignore_unknown_options=True)   # values like -5

# KTL's single-dash spellings, per command, and the option each one means.
_KTL_COMMON = {"-service": "--service", "-timeout": "--timeout", "-debug": "--debug",
               "-help": "--help"}
SHOW_SPELLINGS = dict(_KTL_COMMON, **{"-terse": "--terse", "-binary": "--binary",
                                      "-timestamp": "--timestamp"})
MODIFY_SPELLINGS = dict(_KTL_COMMON, **{"-binary": "--binary", "-nowait": "--nowait",
                                        "-wait": "--wait", "-silent": "--quiet",
                                        "-quiet": "--quiet", "-notify": "--parallel",
                                        "-parallel": "--parallel"})
MONITOR_SPELLINGS = dict(_KTL_COMMON, **{"-binary": "--binary"})
LIST_SPELLINGS = dict(_KTL_COMMON)


# ----------------------------------------------------------------- plumbing

def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-c/--config, -v and --debug, and errors as one line on stderr (exit 1)."""
    fn = click.option("--debug", is_flag=True,
                      help="Debug logging, as -vv (KTL: -debug).")(fn)
    fn = click.option("-v", "--verbose", count=True,
                      help="-v: info and tracebacks, -vv: debug logging.")(fn)
    fn = click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
                      help="Configuration file (TOML); default $CAULDRON_ZMQ_CONFIG, "
                           "else built-in.")(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from ..cli import setup_logging
        if kwargs.pop("debug", False):
            kwargs["verbose"] = max(2, kwargs.get("verbose", 0))
        verbose = kwargs.get("verbose", 0)
        setup_logging(verbose, quiet=True)
        ctx = click.get_current_context()
        ctx.meta[_VERBOSE] = verbose
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            raise                 # click ends the command quietly
        except (CauldronError, KeyError, ValueError, TypeError, OSError) as exc:
            _fail(ctx.info_name or "cauldron-zmq", exc)
    return run


_VERBOSE = "cauldron_zmq.verbose"


def _fail(command: str, exc: BaseException) -> None:
    _error_line(command, exc)
    sys.exit(1)


def _error_line(command: str, exc: BaseException) -> None:
    """'cauldron-zmq COMMAND: error: ...', after the exception's traceback with -v."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get(_VERBOSE):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    click.echo(f"cauldron-zmq {command}: error: {_one_line(exc)}", err=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return in_seconds(" ".join(text.split())) or type(exc).__name__


def _service(name: str, config_path: Any, timeout: Optional[float],
             populate: bool = False) -> Any:
    from ..ktl import Service
    return Service(name, populate=populate, config=config_path, timeout=timeout)


def _timeout_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True),
                        default=None, metavar="SECONDS",
                        help="Per-request timeout (default: [zmq] timeout; "
                             "KTL: -timeout).")(fn)


def _service_option(required: bool = True) -> Callable[..., Any]:
    return click.option("-s", "--service", required=required, metavar="SERVICE",
                        callback=_check_service,
                        help="The KTL service (KTL: -s, -service).")


def _check_service(ctx: click.Context, _param: Any, value: Optional[str]) -> Optional[str]:
    """``-s NAME`` by :func:`cauldron_zmq.names.check_name`, as the router will judge it.

    A bad name (``a/b``, a control character) is one error line and exit
    status 1 before anything is asked, not a look-up the router refuses.
    """
    if value is not None:
        try:
            check_name("service", value.strip().lower())
        except InvalidName as exc:
            _fail(ctx.info_name or "cauldron-zmq", exc)
    return value


def _jsonable(kw: Any, native: Any) -> Any:
    """A native value as JSON: NaN as "nan", arrays as lists."""
    return json_value(kw.keyword_type, native)


def _keywords(svc: Any, names: Sequence[str]) -> Tuple[List[Any], List[BaseException]]:
    """The Keyword of each name that exists, and an error for each that does not."""
    found: List[Any] = []
    errors: List[BaseException] = []
    for name in names:
        try:
            found.append(svc[name])
        except CauldronError as exc:       # unknown (with a suggestion), or no answer
            errors.append(exc)
    return found, errors


def _report(command: str, errors: Sequence[BaseException]) -> None:
    """One line per error on stderr, then exit 1 (nothing when there are none)."""
    for exc in errors:
        _error_line(command, exc)
    if errors:
        sys.exit(1)


# --------------------------------------------------------------------- show

@click.command("show", cls=KtlCommand, ktl_spellings=SHOW_SPELLINGS, context_settings=_CONTEXT)
@_service_option()
@click.argument("keywords", nargs=-1, required=True, metavar="KEYWORD...")
@click.option("-b", "--binary", is_flag=True,
              help="KTL's binary forms (numbers, 0/1, arrays separated by spaces), "
                   "not ascii (KTL: -binary).")
@click.option("--terse", is_flag=True, help="Values only, one per line (KTL: -terse).")
@click.option("--timestamp", "timestamps", is_flag=True,
              help="Begin each line with the dispatcher's time of the value "
                   "(KTL: -timestamp).")
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_common
def show(service: str, keywords: Tuple[str, ...], binary: bool, terse: bool, timestamps: bool,
         timeout: Optional[float], as_json: bool, config_path: Optional[str],
         verbose: int) -> None:
    """Read keywords: one 'KEYWORD = value [units]' line each.

    Every keyword that can be read is shown; each one that cannot is reported
    on stderr (exit 1).  'show -s SERVICE keywords' lists the service's keywords.
    """
    from ..client import deadline
    from ..config import load_config
    seconds = timeout if timeout is not None else load_config(config_path).zmq.timeout / 1000
    with deadline(seconds), _service(service, config_path, timeout) as svc:   # one for all
        if _wants_keyword_list(svc, keywords):
            _echo_keyword_names(svc)
            return
        results, errors = _read_all(svc, keywords)
    if as_json:
        click.echo(json.dumps({kw.name: {
            "ascii": text, "binary": _jsonable(kw, native), "units": kw["units"],
            "type": kw["type"], "timestamp": kw["timestamp"]}
            for kw, native, text in results}, indent=2))
    else:
        for kw, native, text in results:
            click.echo(show_line(kw, binary_text(native) if binary else text,
                                 terse=terse, stamp=kw["timestamp"] if timestamps else None))
    _report("show", errors)


def _wants_keyword_list(svc: Any, names: Sequence[str]) -> bool:
    """KTL's 'show -s SERVICE keywords', unless the service has a keyword KEYWORDS."""
    return len(names) == 1 and names[0].lower() == "keywords" and names[0] not in svc


def _echo_keyword_names(svc: Any) -> None:
    names = svc.keywords()
    if not names:
        click.echo(f"service {svc.name!r} has no keywords")
    for name in names:
        click.echo(name)


def _read_all(svc: Any, names: Sequence[str]) -> Tuple[List[Tuple[Any, Any, Any]],
                                                         List[BaseException]]:
    """Read every keyword at once; (kw, native, ascii) for each good one, errors apart."""
    kws, errors = _keywords(svc, names)
    tasks = [(kw, kw.read(wait=False, both=True)) for kw in kws]
    results = []
    for kw, task in tasks:
        try:
            native, text = task.get()
        except CauldronError as exc:
            errors.append(exc)
            continue
        results.append((kw, native, text))
    return results, errors


def show_line(kw: Any, value: Any, terse: bool = False, stamp: Optional[float] = None) -> str:
    """'KW = value units', or the value alone (terse); the time first when given."""
    units = kw["units"]
    text = f"{value}" if terse else f"{kw.name} = {value}" + (f" {units}" if units else "")
    return text if stamp is None else f"{stamp_text(stamp)} {text}"


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


@click.command("modify", cls=KtlCommand, ktl_spellings=MODIFY_SPELLINGS,
               join_assignments=True, context_settings=_ARGS_CONTEXT)
@_service_option()
@click.argument("assignments", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="KEYWORD=VALUE...")
@click.option("-n", "--nowait", is_flag=True,
              help="Do not wait for the writes to complete (KTL: -nowait).")
@click.option("--wait", is_flag=True, help="Wait for each write to complete: the default "
                                           "(KTL: -wait).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success (KTL: -silent).")
@click.option("-p", "--parallel", is_flag=True,
              help="Send every write, then wait for all (KTL: -notify).")
@click.option("-b", "--binary", is_flag=True,
              help="Values are native (binary) forms (KTL: -binary).")
@_timeout_option
@_common
def modify(service: str, assignments: Tuple[str, ...], nowait: bool, wait: bool, quiet: bool,
           parallel: bool, binary: bool, timeout: Optional[float],
           config_path: Optional[str], verbose: int) -> None:
    """Write keywords and wait until the dispatcher applied each write.

    A write that changed nothing (the keyword already had that value) says so.
    """
    pairs, flags = parse_assignments(assignments)
    nowait = nowait or "nowait" in flags
    quiet = quiet or "quiet" in flags
    parallel = parallel or "parallel" in flags
    binary = binary or "binary" in flags
    if nowait and (wait or "wait" in flags):
        raise click.UsageError("give either wait or nowait, not both")
    mode = "nowait" if nowait else "parallel" if parallel else "wait"
    with _service(service, config_path, timeout) as svc:
        kws, unknown = _keywords(svc, [name for name, _ in pairs])
        _report("modify", unknown)                      # nothing is written then
        say = (lambda text: None) if quiet else click.echo
        writes = [(kw, value) for kw, (_, value) in zip(kws, pairs)]
        if mode == "wait":
            from .progress import write_showing_progress
            for kw, value in writes:
                say(f"setting {kw.name} = {value} ({mode})")
                before = _before(kw)
                write_showing_progress(svc, kw, _binary_value(value) if binary else value,
                                       binary)
                if _unchanged(kw, before):
                    say(_unchanged_line(kw))
            return
        tasks = []
        for kw, value in writes:
            say(f"setting {kw.name} = {value} ({mode})")
            tasks.append((kw, _before(kw), _write(kw, value, binary, wait=False)))
        _finish(tasks, nowait, say)


def _write(kw: Any, value: str, binary: bool, wait: bool) -> Any:
    """One write, as typed (ascii), or native with -b."""
    return kw.write(_binary_value(value) if binary else value, wait=wait, binary=binary)


Before = Tuple[Optional[str], Optional[float]]


def _before(kw: Any) -> Before:
    """The value and its dispatcher timestamp as last described (before the write)."""
    return kw["ascii"], kw["timestamp"]


def _unchanged(kw: Any, before: Before) -> bool:
    """Whether the write left the keyword as it was.

    The dispatcher stamps every change of a value and answers a write with the
    value it holds; an answer carrying the same value *and* the same time as
    before the write is a write that changed nothing (the dispatcher found the
    value already there, or a prewrite hook raised NoWriteNecessary).
    """
    return before[1] is not None and (kw["ascii"], kw["timestamp"]) == before


def _unchanged_line(kw: Any) -> str:
    return f"{kw.name} was already {kw['ascii']}; nothing changed"


def _finish(tasks: List[Tuple[Any, Before, Any]], nowait: bool,
            say: Callable[[str], Any]) -> None:
    """Wait for all (parallel) or for receipt only (nowait); the first error wins."""
    first_error: Optional[BaseException] = None
    for kw, before, task in tasks:
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
        say(_unchanged_line(kw) if _unchanged(kw, before) else f"{kw.name} complete")
    if first_error is not None:
        raise first_error


# ------------------------------------------------------------------ monitor

@click.command("monitor", cls=KtlCommand, ktl_spellings=MONITOR_SPELLINGS,
               context_settings=_CONTEXT)
@_service_option()
@click.argument("keywords", nargs=-1, required=True, metavar="KEYWORD...")
@click.option("--count", type=click.IntRange(min=1), default=None, metavar="N",
              help="Exit after N changes (the initial values do not count).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Exit after this many seconds.")
@click.option("-b", "--binary", is_flag=True,
              help="KTL's binary forms, not ascii (KTL: -binary).")
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
        kws, unknown = _keywords(svc, keywords)
        _report("monitor", unknown)
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
    line = show_line(kw, binary_text(native) if binary else text,
                     stamp=stamp if stamp is not None else time.time())
    click.echo(line if connected else f"{line} (disconnected)")
    return True


# --------------------------------------------------------------------- list

@click.command("list", cls=KtlCommand, ktl_spellings=LIST_SPELLINGS, context_settings=_CONTEXT)
@_service_option(required=False)
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_common
def list_(service: Optional[str], timeout: Optional[float], as_json: bool,
          config_path: Optional[str], verbose: int) -> None:
    """Services known to the router, or (-s) a service's keywords.

    For each keyword: type, units, range, access, value and description.  The
    keywords of a dispatcher that is down are listed too, with its state.
    """
    lines: Union[List[str], str]
    if service is None:
        lines = list_services(config_path, timeout, as_json)
    else:
        lines = list_keywords(service, config_path, timeout, as_json, _service)
    for line in ([lines] if isinstance(lines, str) else lines):
        click.echo(line)
