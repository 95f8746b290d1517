"""The card preview page in a real headless browser (Debian's chromium and chromedriver, driven by
selenium): a scenario renders its expected cards beside what the service read (found labs first,
missing ones grouped), a suggestion shows what accepting it would do, a failed request clears the
previous answer and says what went wrong in plain words, the favicon is served, and a screenshot is
saved to test-artifacts/preview.png. CI installs chromium (.ci/run) and under CI=true this test fails
rather than skips when chromium cannot start; locally `make browser-deps` installs it."""
from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request

import pytest
from werkzeug.serving import make_server

from cds_service import create_app

from .conftest import NOW, ROOT, SCENARIOS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def server():
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": NOW,
                      "CDS_LOG_LEVEL": "ERROR", "CDS_PREVIEW": True, "CDS_FIXTURES_DIR": str(SCENARIOS)})
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium/chromedriver not installed: .ci/run must install them")
        pytest.skip("chromium/chromedriver not installed: run `make browser-deps` (CI installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chrome')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # fails loudly if it cannot start
    yield driver
    driver.quit()


def _open_scenario(browser, server, name: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    browser.get(f"{server}/preview")
    wait = WebDriverWait(browser, 15)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "scenario")).options) > 60)
    Select(browser.find_element(By.ID, "scenario")).select_by_value(name)
    hook = json.loads((SCENARIOS / name / "request.json").read_text())["hook"]
    wait.until(lambda d: f'"{hook}"' in d.find_element(By.ID, "request").get_attribute("value"))
    return wait


def _send_and_wait_for_cards(browser, wait):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    browser.find_element(By.ID, "send").send_keys(Keys.ENTER)  # keyboard-usable: a real <button> answers Enter
    wait.until(lambda d: "card(s) from" in d.find_element(By.ID, "status").text)
    return browser.find_elements(By.CSS_SELECTOR, "article.card")


def test_preview_renders_scenario_cards(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    wait = _open_scenario(browser, server, "pv-crisis-grade4")
    assert Select(browser.find_element(By.ID, "service")).first_selected_option.get_attribute("value") == "mg-patient-view"
    cards = _send_and_wait_for_cards(browser, wait)
    rules = [c.get_attribute("data-rule") for c in cards]
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


def test_what_the_service_read_leads_with_found_labs_and_groups_missing_ones(server, browser):
    from selenium.webdriver.common.by import By
    wait = _open_scenario(browser, server, "ivig-dose-too-high")
    _send_and_wait_for_cards(browser, wait)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "ul.labs li"))
    items = browser.find_elements(By.CSS_SELECTOR, "ul.labs li")
    assert "found" in items[0].get_attribute("class") and items[0].text.startswith("IgA: 250 mg/dL")
    missing = [li.text for li in items if "missing" in li.get_attribute("class")]
    # one line per window for the labs without a result, not one line each: the last 12 months, and the
    # one-time tests and positives read at any date (rules v2)
    assert len(missing) == 2, missing
    recent, ever = missing
    assert recent.startswith("No result in the last 12 months: ") and "IgG" in recent and "troponin" in recent
    assert ever.startswith("No result at any date: ") and "HBsAg" in ever and "AChR antibody" in ever
    assert all("IgA" not in line.split(": ", 1)[1].split(", ") for line in missing)


def test_a_suggestion_shows_the_resource_and_the_feedback(server, browser):
    from selenium.webdriver.common.by import By
    wait = _open_scenario(browser, server, "pv-crisis-grade4")
    _send_and_wait_for_cards(browser, wait)
    button = browser.find_element(By.CSS_SELECTOR, "article.card.critical button.suggestion")
    label = button.text
    button.click()
    panel = browser.find_element(By.CSS_SELECTOR, "article.card.critical .accepted")
    wait.until(lambda d: panel.is_displayed())
    assert button.get_attribute("aria-expanded") == "true"
    assert f"Accepting “{label}” would" in panel.text and "create MedicationRequest" in panel.text
    shown = [json.loads(p.text) for p in panel.find_elements(By.CSS_SELECTOR, "pre.json")]
    resource, feedback = shown[0], shown[-1]
    assert resource["resourceType"] == "MedicationRequest" and resource["status"] == "draft"
    card = browser.execute_script("return lastCards.find(c => c.source.topic.code === 'mg-severe-management')")
    item = feedback["feedback"][0]
    assert item["card"] == card["uuid"] and item["outcome"] == "accepted"
    assert item["acceptedSuggestions"] == [{"id": card["suggestions"][0]["uuid"]}]
    assert "/cds-services/mg-patient-view/feedback" in panel.text
    button.click()  # a second click folds it away
    wait.until(lambda d: not panel.is_displayed())


def test_invalid_json_clears_the_previous_cards(server, browser):
    from selenium.webdriver.common.by import By
    wait = _open_scenario(browser, server, "macrolide-grade3")
    assert _send_and_wait_for_cards(browser, wait)
    browser.find_element(By.ID, "request").send_keys("}{ not json")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: "not valid JSON" in d.find_element(By.ID, "status").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "article.card")
    assert browser.find_element(By.ID, "explain").text == ""
    assert "The request is not valid JSON" in browser.find_element(By.ID, "cards").text


def test_wrong_service_is_said_plainly_and_clears_the_previous_cards(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    wait = _open_scenario(browser, server, "pv-crisis-grade4")
    assert _send_and_wait_for_cards(browser, wait)
    Select(browser.find_element(By.ID, "service")).select_by_value("mg-order-select")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: "HTTP 400" in d.find_element(By.ID, "status").text)
    text = browser.find_element(By.ID, "cards").text
    assert not browser.find_elements(By.CSS_SELECTOR, "article.card")
    assert text.startswith("mg-order-select refused this request:")
    assert "pick the service for patient-view" in text
    assert "resourceType" not in text and "OperationOutcome" not in text  # the raw body is folded away
    details = browser.find_element(By.CSS_SELECTOR, "#cards details")
    details.click()
    assert "OperationOutcome" in details.text


def test_request_errors_name_the_missing_field(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(f"{server}/preview")
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#service option"))
    browser.find_element(By.ID, "request").send_keys('{"hook": "order-select"}')
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 10).until(lambda d: "HTTP 400" in d.find_element(By.ID, "status").text)
    assert "hookInstance is required" in browser.find_element(By.ID, "cards").text


def test_favicon_is_served_and_the_page_logs_no_errors(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    with urllib.request.urlopen(f"{server}/favicon.ico", timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("image/svg+xml")
    browser.get_log("browser")  # drop what earlier tests logged
    browser.get(f"{server}/preview")
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#scenario option[value='ivig-no-iga']"))
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def _post(server: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{server}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_order_sign_says_which_card_it_left_out_as_overridden_at_order_select(server, browser):
    """Select, override every card, sign the same draft: the cards are left out and the explain says why."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    selected = json.loads((SCENARIOS / "macrolide-grade3" / "request.json").read_text())
    cards = _post(server, "/cds-services/mg-order-select", selected)["cards"]
    assert cards
    _post(server, "/cds-services/mg-order-select/feedback", {"feedback": [
        {"card": c["uuid"], "outcome": "overridden", "outcomeTimestamp": NOW} for c in cards]})
    sign = {**selected, "hook": "order-sign", "hookInstance": "preview-sign-1",
            "context": {k: v for k, v in selected["context"].items() if k != "selections"}}
    wait = _open_scenario(browser, server, "macrolide-grade3")
    Select(browser.find_element(By.ID, "service")).select_by_value("mg-order-sign")
    browser.execute_script("document.getElementById('request').value = arguments[0];", json.dumps(sign))
    _send_and_wait_for_cards(browser, wait)
    wait.until(lambda d: "Repeats at signing" in d.find_element(By.ID, "explain").text)
    left_out = browser.find_elements(By.CSS_SELECTOR, "#explain ul.repeats li.suppressed")
    assert {li.find_element(By.CLASS_NAME, "rule").text for li in left_out} == {c["source"]["topic"]["code"] for c in cards}
    assert all("left out (shown at order-select" in li.text and "overridden" in li.text for li in left_out)
    assert "0 card(s) from mg-order-sign" in browser.find_element(By.ID, "status").text
