"""The summary page of the end-to-end run, rendered in headless Chromium (Debian's chromium and
chromium-driver, driven by selenium; no browser download)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from conftest import require_module, skip_or_fail

pytestmark = pytest.mark.e2e

CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1200,1600",
)  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    webdriver = require_module("selenium.webdriver", "the summary page test drives Chromium")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        skip_or_fail("Debian's chromium and chromium-driver are not installed")
    opts = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    yield d
    d.quit()


def test_summary_page_renders_every_check_and_number(e2e_run, browser, tmp_path):
    page = e2e_run / "results" / "summary.html"
    summary = json.loads((e2e_run / "results" / "summary.json").read_text())
    browser.get(page.as_uri())
    browser.save_screenshot(str(tmp_path / "summary.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    rows = browser.find_elements("css selector", "tr.check")
    assert len(rows) == len(summary["checks"]) > 0
    shown = {r.get_attribute("data-check"): r for r in rows}
    for c in summary["checks"]:
        row = shown[f"{c['stage']}/{c['name']}/{c['where']}"]
        status = row.find_element("css selector", "[data-status]")
        assert status.get_attribute("data-status") == c["status"]
    # failures first
    order = {"fail": 0, "warn": 1, "pass": 2}
    statuses = [r.find_element("css selector", "[data-status]").get_attribute("data-status")
                for r in rows]  # fmt: skip
    assert statuses == sorted(statuses, key=order.__getitem__)
    # the overlay's weight gate runs in warn mode and fails on its tiny samples: the failing
    # gate is the first row of the page, shown as "fail (warned)"
    first = summary["checks"][0]
    assert (first["stage"], first["status"], first["warned"]) == ("weights", "fail", True)
    assert rows[0].find_element("css selector", "[data-status]").text == "fail (warned)"
    # every number on the page is a JSON value of the summary, displayed rounded
    values = []

    def walk(x):  # type: ignore[no-untyped-def]
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, int | float) and not isinstance(x, bool):
            values.append(float(x))

    walk(summary)
    for span in browser.find_elements("css selector", "span.num"):
        raw = span.get_attribute("data-value")
        if raw == "null":
            continue
        v = float(raw)
        assert any(math.isclose(v, w, rel_tol=1e-12, abs_tol=1e-300) for w in values), raw
        text = span.text.replace("–", "-")
        assert math.isclose(float(text), v, rel_tol=5e-3, abs_tol=5e-4), (text, raw)
    # the headline results are on the page
    assert browser.find_element("id", "scale_factors").text
    assert browser.find_element("id", "fits").text
    assert browser.find_element("id", "verdict").text.split()[0].isdigit()
