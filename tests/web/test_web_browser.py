"""The pages in a real headless Chromium, against a real router, dispatcher and gateway.

Skipped, saying why, only where Chromium, chromedriver or selenium is not
installed (.ci/run installs Debian's chromium and chromium-driver).
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

pytest.importorskip("starlette", reason="the web extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")

from cauldron_zmq.testing import ServiceHarness, wait_until  # noqa: E402
from cauldron_zmq.web.testing import (DEMO_KEYWORDS, GatewayProcess, browser_paths,  # noqa: E402
                                      headless_chromium, wait_for_text)

_, _, WHY_NOT = browser_paths()
if WHY_NOT:
    print(f"test_web_browser: skipped: {WHY_NOT}")
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "a browser is installed")

if not WHY_NOT:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait


@pytest.fixture(scope="module")
def harness(tmp_path_factory: Any) -> Iterator[ServiceHarness]:
    directory = tmp_path_factory.mktemp("web-browser")
    keywords = directory / "demo.toml"
    keywords.write_text(DEMO_KEYWORDS)
    with ServiceHarness(keywords, service="demo", subprocess=True) as h:
        yield h


@pytest.fixture(scope="module")
def gateway(harness: ServiceHarness) -> Iterator[GatewayProcess]:
    with GatewayProcess(harness.config_path, allow_writes=True) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(harness: ServiceHarness) -> Any:
    return harness.client()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = headless_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def _open_service(browser: Any, gateway: GatewayProcess) -> None:
    browser.get(gateway.base + "/services/demo")
    wait_for_text(browser, "#connection", "live", timeout=10)   # the event stream is open
    browser.execute_script("window.__not_reloaded = true;")


def test_status_page_lists_the_service(browser: Any, gateway: GatewayProcess) -> None:
    browser.get(gateway.base + "/")
    row = WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-service="demo"]'))
    assert "default" in row.text and "live" in row.text
    link = row.find_element(By.TAG_NAME, "a")
    assert link.get_attribute("href").endswith("/services/demo")


def test_a_dispatcher_change_appears_in_place(browser: Any, gateway: GatewayProcess,
                                              client: Any) -> None:
    _open_service(browser, gateway)
    for value in (101, 102):
        client["COUNT"].write(value)
        start = time.monotonic()
        wait_for_text(browser, '[data-keyword="COUNT"]', str(value), timeout=5)
        elapsed = time.monotonic() - start
        assert elapsed < 2.0, f"the page took {elapsed:.2f} s to show it"   # issue: within 1 s
    assert browser.execute_script("return window.__not_reloaded === true;")


def test_a_value_typed_in_the_page_reaches_the_dispatcher(browser: Any, gateway: GatewayProcess,
                                                          client: Any) -> None:
    _open_service(browser, gateway)
    field = browser.find_element(By.CSS_SELECTOR, 'input[name="TEMP"]')
    field.send_keys("-12.5" + Keys.ENTER)
    wait_until(lambda: client["TEMP"].read() == "-12.5", 5, 0.02, "the dispatcher has -12.5")
    wait_for_text(browser, '[data-keyword="TEMP"]', "-12.5")
    assert browser.execute_script("return window.__not_reloaded === true;")


def test_a_refusal_is_shown_next_to_the_input(browser: Any, gateway: GatewayProcess,
                                              client: Any) -> None:
    _open_service(browser, gateway)
    before = client["TEMP"].read()
    browser.find_element(By.CSS_SELECTOR, 'input[name="TEMP"]').send_keys("999" + Keys.ENTER)
    refusal = WebDriverWait(browser, 5).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '[data-refusal="TEMP"]').text or False)
    assert "maximum" in refusal and "invalid-value" in refusal
    assert client["TEMP"].read() == before
    assert not browser.find_elements(By.CSS_SELECTOR, 'input[name="SERIAL"]')   # read-only


def test_markup_in_a_string_is_shown_as_text(browser: Any, gateway: GatewayProcess,
                                             client: Any) -> None:
    _open_service(browser, gateway)
    element = browser.find_element(By.CSS_SELECTOR, '[data-keyword="LABEL"]')
    assert element.text == "<b>x</b>"
    assert not element.find_elements(By.TAG_NAME, "b")
    client["LABEL"].write("<i>live</i> & <script>window.__owned = 1</script>")
    wait_for_text(browser, '[data-keyword="LABEL"]',
                  "<i>live</i> & <script>window.__owned = 1</script>")
    assert not element.find_elements(By.XPATH, "./*")
    assert browser.execute_script("return window.__owned === undefined;")


def test_numeric_keywords_have_a_chart(browser: Any, gateway: GatewayProcess,
                                       client: Any) -> None:
    _open_service(browser, gateway)
    for value in (1, 5, 3):
        client["COUNT"].write(200 + value)
        wait_for_text(browser, '[data-keyword="COUNT"]', str(200 + value))
    points = WebDriverWait(browser, 5).until(lambda d: d.execute_script(
        "var l = document.querySelector('svg[data-chart=\"COUNT\"] polyline');"
        "return l && l.getAttribute('points').split(' ').length >= 3 && l.getAttribute('points');"))
    assert points
    assert not browser.find_elements(By.CSS_SELECTOR, 'svg[data-chart="LABEL"]')


def test_a_dead_dispatcher_is_shown_down_on_both_pages(browser: Any,
                                                       tmp_path_factory: Any) -> None:
    directory = tmp_path_factory.mktemp("web-down")
    keywords = directory / "demo.toml"
    keywords.write_text(DEMO_KEYWORDS)
    with ServiceHarness(keywords, service="demo", subprocess=True) as h, \
            GatewayProcess(h.config_path) as gw:
        _open_service(browser, gw)
        assert not browser.find_elements(By.CSS_SELECTOR, "form[data-write]")   # read only
        h.stop_dispatcher()            # a clean stop: it unregisters, the router says down
        WebDriverWait(browser, 10).until(lambda d: "down" in d.find_element(
            By.CSS_SELECTOR, 'tr[data-row="TEMP"]').get_attribute("class"))
        assert browser.find_element(By.CSS_SELECTOR, '[data-down="TEMP"]').is_displayed()
        assert browser.execute_script("return window.__not_reloaded === true;")
        browser.get(gw.base + "/")
        browser.execute_script("window.__not_reloaded = true;")
        wait_for_text(browser, 'tr[data-service="demo"] [data-state]', "down", timeout=10)
        assert browser.execute_script("return window.__not_reloaded === true;")
