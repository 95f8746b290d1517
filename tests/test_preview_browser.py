"""The card preview page in a real headless browser (Debian's chromium and
chromedriver, driven by selenium): the page loads, a scenario renders its
expected cards beside the PatientState, and a screenshot is saved to
test-artifacts/preview.png. CI installs chromium (.ci/run); locally
`make browser-deps` does."""
from __future__ import annotations

import shutil
import threading

import pytest
from werkzeug.serving import make_server

from cds_service import create_app

from .conftest import ROOT, SCENARIOS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium/chromedriver not installed: run `make browser-deps` (CI installs them)")


@pytest.fixture(scope="module")
def server():
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z",
                      "CDS_LOG_LEVEL": "ERROR", "CDS_PREVIEW": True, "CDS_FIXTURES_DIR": str(SCENARIOS)})
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chrome')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_preview_renders_scenario_cards(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait
    browser.get(f"{server}/preview")
    wait = WebDriverWait(browser, 15)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "scenario")).options) > 60)
    Select(browser.find_element(By.ID, "scenario")).select_by_value("pv-crisis-grade4")
    wait.until(lambda d: "pv-crisis" not in d.find_element(By.ID, "request").get_attribute("value") and
               '"patient-view"' in d.find_element(By.ID, "request").get_attribute("value"))
    assert Select(browser.find_element(By.ID, "service")).first_selected_option.get_attribute("value") == "mg-patient-view"
    send = browser.find_element(By.ID, "send")
    send.send_keys(Keys.ENTER)  # keyboard-usable: a real <button> answers Enter
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "article.card.critical")))
    rules = [c.get_attribute("data-rule") for c in browser.find_elements(By.CSS_SELECTOR, "article.card")]
    assert rules[0] == "mg-severe-management"
    assert {"myocarditis-check", "mg-workup-incomplete"} <= set(rules)
    critical = browser.find_element(By.CSS_SELECTOR, "article.card.critical")
    assert "Grade 4 MG" in critical.find_element(By.TAG_NAME, "h3").text
    assert critical.find_elements(By.CSS_SELECTOR, "button.suggestion")
    wait.until(lambda d: "crisis" in d.find_element(By.ID, "explain").text)
    assert "MG grade 4" in browser.find_element(By.ID, "explain").text
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(artifacts / "preview.png"))


def test_preview_shows_request_errors(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(f"{server}/preview")
    browser.find_element(By.ID, "request").send_keys('{"hook": "order-select"}')
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 10).until(lambda d: "HTTP 400" in d.find_element(By.ID, "status").text)
    assert "hookInstance is required" in browser.find_element(By.ID, "cards").text
