"""The two HTML pages, rendered on the server with every value escaped.

The pages are complete without their script (values, states, the write
inputs), and ``static/web.js`` keeps them live.  Every value is escaped with
:func:`html.escape` here and set with ``textContent`` in the script, so a
string keyword holding markup shows the markup.
"""
from __future__ import annotations

import datetime
from html import escape
from typing import Any, Dict, List, Optional

from .. import __version__

__all__ = ["status_page", "service_page", "error_page", "format_value"]


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, *, attrs: str = "") -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n"
        "<link rel=\"stylesheet\" href=\"/static/web.css\">\n"
        "<script src=\"/static/web.js\" defer></script>\n"
        f"</head>\n<body{attrs}>\n"
        f"<header><a class=\"home\" href=\"/\">cauldron_zmq</a> <h1>{_e(title)}</h1>"
        "<span id=\"connection\" class=\"connection\"></span></header>\n"
        f"<main>\n{body}\n</main>\n"
        f"<footer>cauldron_zmq {_e(__version__)} &middot; "
        "<a href=\"/api/services\">JSON API</a></footer>\n</body>\n</html>\n")


def format_value(value: Any) -> str:
    """The text shown for a value: as is; an absent value as an empty string."""
    return "" if value is None else str(value)


def _age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    from ..commands.router import format_age
    return format_age(float(seconds))


# ------------------------------------------------------------------ status page

def status_page(book: Optional[Dict[str, Any]], error: Optional[str], router: str) -> str:
    """``/``: every service and dispatcher the router knows, with its state."""
    rows: List[str] = []
    for service in (book or {}).get("services", []):
        for d in service["dispatchers"]:
            rows.append(
                f"<tr data-service=\"{_e(service['name'])}\" data-dispatcher=\"{_e(d['name'])}\">"
                f"<td><a href=\"/services/{_e(service['name'])}\">{_e(service['name'])}</a></td>"
                f"<td>{_e(d['name'])}</td>"
                f"<td class=\"state state-{_e(d['state'])}\" data-state>{_e(d['state'])}</td>"
                f"<td>{_e(d['host'])}</td><td>{_e(d['dispatch_port'])}</td>"
                f"<td>{_e(d['broadcast_port'])}</td>"
                f"<td class=\"age\">{_e(_age(d['heartbeat_age']))}</td></tr>")
    router_state = "down" if error else "live"
    empty = "" if rows else "<tr class=\"empty\"><td colspan=\"7\">no dispatcher registered</td></tr>"
    body = (
        "<section class=\"routers\"><h2>Router</h2>"
        "<table><thead><tr><th>address</th><th>state</th><th>message</th></tr></thead>"
        f"<tbody id=\"routers\"><tr><td>{_e(router)}</td>"
        f"<td class=\"state state-{router_state}\" id=\"router-state\">{router_state}</td>"
        f"<td id=\"router-message\">{_e(error or '')}</td></tr></tbody></table></section>\n"
        "<section class=\"services\"><h2>Services</h2>"
        "<table><thead><tr><th>service</th><th>dispatcher</th><th>state</th><th>host</th>"
        "<th>dispatch port</th><th>broadcast port</th><th>heartbeat age</th></tr></thead>"
        f"<tbody id=\"services\">{''.join(rows) or empty}</tbody></table></section>")
    return _page("Status", body, attrs=" data-page=\"status\"")


# ----------------------------------------------------------------- service page

def _range(kw: Dict[str, Any]) -> str:
    if kw.get("enumerators"):
        names = [e if isinstance(e, str) else f"{e[0]}={e[1]}" for e in kw["enumerators"]]
        return ", ".join(names)
    low, high = kw.get("min"), kw.get("max")
    if low is None and high is None:
        return ""
    return f"{'' if low is None else low} .. {'' if high is None else high}"


def _timestamp(stamp: Any) -> str:
    if not isinstance(stamp, (int, float)):
        return ""
    return datetime.datetime.fromtimestamp(float(stamp)).strftime("%H:%M:%S.%f")[:-3]


def _keyword_row(kw: Dict[str, Any], allow_writes: bool) -> str:
    name = kw["name"]
    down = "" if kw.get("connected", True) else " down"
    chart = (f"<svg class=\"chart\" data-chart=\"{_e(name)}\" viewBox=\"0 0 120 24\" "
             "preserveAspectRatio=\"none\" aria-hidden=\"true\"></svg>"
             if kw.get("numeric") else "")
    write = ""
    if allow_writes and not kw.get("readonly"):
        write = (f"<form class=\"write\" data-write=\"{_e(name)}\" autocomplete=\"off\">"
                 f"<input type=\"text\" name=\"{_e(name)}\" data-input=\"{_e(name)}\" "
                 f"aria-label=\"new value of {_e(name)}\" placeholder=\"new value\">"
                 "<button type=\"submit\">set</button>"
                 f"<span class=\"refusal\" role=\"alert\" data-refusal=\"{_e(name)}\"></span>"
                 "</form>")
    flags = "read-only" if kw.get("readonly") else ("write-only" if kw.get("writeonly") else "")
    return (
        f"<tr class=\"keyword{down}\" data-row=\"{_e(name)}\">"
        f"<th scope=\"row\" class=\"name\">{_e(name)}</th>"
        f"<td class=\"value\"><span class=\"value\" data-keyword=\"{_e(name)}\">"
        f"{_e(format_value(kw.get('ascii')))}</span> "
        f"<span class=\"units\">{_e(kw.get('units'))}</span>"
        f"<span class=\"down-badge\" data-down=\"{_e(name)}\">dispatcher down</span>"
        f"{write}</td>"
        f"<td class=\"chart\">{chart}</td>"
        f"<td class=\"time\" data-time=\"{_e(name)}\">{_e(_timestamp(kw.get('timestamp')))}</td>"
        f"<td class=\"type\">{_e(kw.get('type'))}</td>"
        f"<td class=\"range\">{_e(_range(kw))}</td>"
        f"<td class=\"flags\">{_e(flags)}</td>"
        f"<td class=\"description\">{_e(kw.get('description'))}</td></tr>")


def service_page(service: Dict[str, Any]) -> str:
    """``/services/{service}``: every keyword, its metadata and its live value."""
    allow = bool(service.get("allow_writes"))
    rows = "".join(_keyword_row(kw, allow) for kw in service["keywords"])
    body = (
        "<section class=\"keywords\">"
        "<table><thead><tr><th>keyword</th>"
        "<th>value</th>"
        "<th>recent</th><th>time</th><th>type</th><th>range</th><th>flags</th>"
        "<th>description</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>\n"
        "<section class=\"log\"><h2>Events</h2><ol id=\"log\"></ol></section>")
    attrs = (f" data-page=\"service\" data-service=\"{_e(service['name'])}\" "
             f"data-allow-writes=\"{'true' if allow else 'false'}\"")
    return _page(f"Service {service['name']}", body, attrs=attrs)


def error_page(title: str, message: str) -> str:
    return _page(title, f"<p class=\"error\" id=\"error\">{_e(message)}</p>",
                 attrs=" data-page=\"error\"")
