"""Tooling for testing the gateway for real: its process, HTTP, SSE and a headless Chromium.

Used by the test suite (tests/web/) and by scripts/screenshot-web,
so the screenshot in docs/ is made exactly as the browser tests see the page.
Everything is loopback only, on free ports, and waits poll with deadlines.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..testing import _child_env, _terminate, free_port

__all__ = ["DEMO_KEYWORDS", "GatewayProcess", "EventStream", "request", "browser_paths",
           "headless_chromium"]

#: A keyword file with one keyword of each kind the page shows differently.
DEMO_KEYWORDS = """\
[keyword.TEMP]
type = "double"
units = "degC"
min = -50.0
max = 50.0
initial = 20.5
description = "Detector temperature"

[keyword.COUNT]
type = "integer"
initial = 0
description = "Exposures taken tonight"

[keyword.MODE]
type = "enumerated"
enumerators = ["OFF", "STANDBY", "ON"]
initial = "STANDBY"
description = "Instrument mode"

[keyword.LABEL]
type = "string"
initial = "<b>x</b>"
description = "Free text (shown as text, never as HTML)"

[keyword.SERIAL]
type = "string"
initial = "CZ-0042"
read-only = true
description = "Serial number of the controller"
"""


def request(base: str, method: str, path: str, body: Any = None,
            timeout: float = 10.0) -> Tuple[int, Any]:
    """One HTTP request to the gateway at ``base`` (``http://host:port``): (status, JSON or text)."""
    host, port = _host_port(base)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode("utf-8"))
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if (resp.getheader("Content-Type") or "").startswith("application/json"):
            return resp.status, json.loads(raw.decode("utf-8"))
        return resp.status, raw.decode("utf-8", "replace")
    finally:
        conn.close()


def _host_port(base: str) -> Tuple[str, int]:
    rest = base.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


class EventStream:
    """A Server-Sent Events subscription, read on demand with deadlines."""

    def __init__(self, base: str, path: str, timeout: float = 10.0) -> None:
        host, port = _host_port(base)
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self._conn.request("GET", path, headers={"Accept": "text/event-stream"})
        self.response = self._conn.getresponse()
        self.status = self.response.status

    def next(self, timeout: float = 10.0) -> Dict[str, Any]:
        """The next event: its JSON data, with "event" set to the SSE event name."""
        sock = self._conn.sock
        if sock is not None:
            sock.settimeout(timeout)
        name, data = "message", []
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the event stream ended")
            text = line.decode("utf-8").rstrip("\r\n")
            if text == "":
                if data:
                    event = json.loads("\n".join(data))
                    event["event"] = name
                    return event
                name = "message"
                continue
            field, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)

    def until(self, predicate: Any, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Events up to and including the first one ``predicate`` accepts."""
        deadline = time.monotonic() + timeout
        seen: List[Dict[str, Any]] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout} s; saw {seen}")
            seen.append(self.next(remaining))
            if predicate(seen[-1]):
                return seen

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class GatewayProcess:
    """``cauldron-zmq web`` as a child process on a free loopback port."""

    def __init__(self, config_path: Any, *, allow_writes: bool = False,
                 directory: Optional[Any] = None, timeout: float = 15.0,
                 args: Tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "cauldron_zmq", "web", "-c", str(config_path),
               "--bind", f"127.0.0.1:{self.port}"]
        if allow_writes:
            cmd.append("--allow-writes")
        cmd.extend(args)
        directory = Path(directory if directory is not None else Path(config_path).parent)
        self.log_path = directory / f"web-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=_child_env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=directory)
        try:
            self._wait(timeout)
        except BaseException:
            self.close()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cauldron-zmq web exited with status {self.proc.returncode}:"
                                   f"\n{self.log()}")
            try:
                status, _ = request(self.base, "GET", "/static/web.css", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"cauldron-zmq web not answering within {timeout} s:"
                                     f"\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            _terminate(self.proc)

    def __enter__(self) -> "GatewayProcess":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# ------------------------------------------------------------------ the browser

def browser_paths() -> Tuple[Optional[str], Optional[str], str]:
    """(chromium, chromedriver, why not) as installed here (Debian's packages)."""
    browser = (os.environ.get("CHROMIUM") or shutil.which("chromium")
               or shutil.which("chromium-browser") or shutil.which("google-chrome"))
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None]
        return browser, driver, (f"{' and '.join(missing)} not installed "
                                 "(apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ModuleNotFoundError:
        return browser, driver, "selenium is not installed (pip install selenium)"
    return browser, driver, ""


def headless_chromium(width: int = 1200, height: int = 700) -> Any:
    """A selenium WebDriver for a headless Chromium; quit() it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    browser, driver, why = browser_paths()
    if why:
        raise RuntimeError(why)
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--disable-background-networking",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=DriverService(executable_path=str(driver)), options=options)


def wait_for_text(driver: Any, selector: str, text: str, timeout: float = 5.0) -> Any:
    """The element at ``selector`` once its text is ``text`` (WebDriverWait)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def matches(d: Any) -> Any:
        for el in d.find_elements(By.CSS_SELECTOR, selector):
            if el.text == text:
                return el
        return False
    from selenium.common.exceptions import StaleElementReferenceException
    return WebDriverWait(driver, timeout, poll_frequency=0.02,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        matches, f"{selector} showing {text!r}")




# ------------------------------------------------------------------ screenshot

def screenshot(path: Any, width: int = 1280, height: int = 640) -> Path:
    """Run the demo service, give it some history, and save the service page as a PNG.

    What scripts/screenshot-web runs, with the browser tests' own tooling.
    """
    import math as _math
    import tempfile

    from ..testing import ServiceHarness, wait_until
    target = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="cauldron-zmq-shot-") as tmp:
        keywords = Path(tmp) / "demo.toml"
        keywords.write_text(DEMO_KEYWORDS)
        with ServiceHarness(keywords, service="demo", subprocess=True) as h, \
                GatewayProcess(h.config_path, allow_writes=True) as gw:
            svc = h.client()
            request(gw.base, "GET", "/api/services/demo")      # the gateway starts watching
            for i in range(40):
                svc["TEMP"].write(round(20 + 6 * _math.sin(i / 4.0) + 0.1 * i, 2))
                svc["COUNT"].write(i // 3)
            svc["MODE"].write("ON")
            wait_until(lambda: request(gw.base, "GET", "/api/services/demo/keywords/COUNT")[1]
                       ["value"] == 13, 10, 0.05, "the gateway caught up")
            driver = headless_chromium(width, height)
            try:
                driver.get(gw.base + "/services/demo")
                wait_for_text(driver, "#connection", "live", timeout=10)
                from selenium.webdriver.common.by import By
                from selenium.webdriver.common.keys import Keys
                from selenium.webdriver.support.ui import WebDriverWait
                WebDriverWait(driver, 10).until(lambda d: d.execute_script(
                    "var l = document.querySelector('svg[data-chart=\"TEMP\"] polyline');"
                    "return l && l.getAttribute('points').split(' ').length >= 20;"))
                driver.find_element(By.CSS_SELECTOR, 'input[name="TEMP"]').send_keys(
                    "99" + Keys.ENTER)
                WebDriverWait(driver, 10).until(lambda d: d.find_element(
                    By.CSS_SELECTOR, '[data-refusal="TEMP"]').text)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not driver.save_screenshot(str(target)):
                    raise RuntimeError(f"could not save {target}")
            finally:
                driver.quit()
    return target


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = screenshot(args[0] if args else "docs/web-service.png")
    print(out)
    return 0
