"""The dashboard in a real headless Chromium against a real `ota serve` on 127.0.0.1.

Three virtual boards (MicroPython's unix port on flash directories, tools/virtual_board) are
provisioned, boot once and really check in; release 1.1.0 then rolls out to half of the
`stable` channel. The browser logs in, sees the boards, pauses the rollout with its button
(and the API reports it paused), filters the board table, opens a board's page, and is
turned away without a session or without the CSRF token. A PNG of each page goes to
$MPOTA_SCREENSHOTS (browser_support.screenshots).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.reference_app import build_release, make_keys, provision_board, small_app
from tools.local_server import LocalServer
from tools.virtual_board import VirtualBoard

BOARDS = {"greenhouse-1": "stable", "greenhouse-2": "stable", "lab-1": "beta"}
WAIT_S = 15


@dataclass
class Fleet:
    server: LocalServer
    boards: dict[str, Path]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, micropython: str) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("ui-fleet")
    keys = make_keys()
    (work / "root.json").write_bytes(keys.root_envelope)
    with LocalServer(work / "data", work / "root.json") as server:
        flashes = {}
        for device_id, channel in BOARDS.items():
            flash = work / device_id
            provision_board(flash, server.client(), device_id, server.url, keys,
                            small_app("1.0.0"), channel=channel, timeout_s=3)
            flashes[device_id] = flash
        for flash in flashes.values():  # each boots once and checks in: nothing new yet
            VirtualBoard(flash, micropython=micropython).run(max_boots=1, timeout=60)
        seen = {d["device_id"]: d["last_seen"] for d in server.client().list_devices()}
        assert all(seen[b] is not None for b in BOARDS), seen
        bundle = build_release(work, small_app("1.1.0"), "1.1.0", 2, keys)
        server.client().publish(bundle, channel="stable", policy={
            "stages": [{"percent": 50}, {"percent": 100}], "auto_advance": False})
        for flash in flashes.values():  # the boards inside the first stage take 1.1.0
            VirtualBoard(flash, micropython=micropython).run(max_boots=3, timeout=60)
        yield Fleet(server, flashes)


def _wait(browser: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S).until(condition)


def _shot(browser: Any, screenshots: Path, name: str) -> None:
    # the whole page: as tall as its content
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(700, min(int(height) + 40, 4000)))
    assert browser.save_screenshot(str(screenshots / f"{name}.png"))
    browser.set_window_size(1280, 1000)


def _log_in(browser: Any, fleet: Fleet, token: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(fleet.server.url + "/ui/login")
    field = browser.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


@pytest.fixture
def logged_in(browser: Any, fleet: Fleet) -> Any:
    """The browser with a session (a new one when it has none)."""
    from selenium.webdriver.support import expected_conditions as ec

    browser.get(fleet.server.url + "/ui/fleet")
    if "/ui/login" in browser.current_url:
        _log_in(browser, fleet, fleet.server.token)
        _wait(browser, ec.url_contains("/ui/fleet"))
    return browser


def _api_rollout(fleet: Fleet) -> dict[str, Any]:
    """GET /v1/channels/stable/rollout through the client `ota rollout status stable` uses."""
    result: dict[str, Any] = fleet.server.client().rollout_status("stable")["rollout"]
    return result


def test_without_a_session_the_browser_lands_on_the_login_and_a_wrong_token_stays_there(
        browser: Any, fleet: Fleet, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser.delete_all_cookies()
    browser.get(fleet.server.url + "/ui/boards?channel=beta")
    assert "/ui/login" in browser.current_url
    _shot(browser, screenshots, "login")
    _log_in(browser, fleet, fleet.server.token[:-2] + "xx")
    alert = _wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, "[role=alert]")))
    assert "Unknown or revoked token" in alert.text
    assert "/ui/login" in browser.current_url
    assert browser.get_cookie("mpota_session") is None
    _shot(browser, screenshots, "login-refused")
    browser.get(fleet.server.url + "/ui/fleet")
    assert "/ui/login" in browser.current_url


def test_log_in_and_see_the_three_boards_that_checked_in(logged_in: Any, fleet: Fleet,
                                                         screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = logged_in
    ok = browser.find_element(By.CSS_SELECTOR, '[data-live-fleet="ok"]')
    assert ok.text == "3"
    charts = browser.find_element(By.CSS_SELECTOR, ".charts").text
    assert "refapp 1.0.0" in charts and "stable" in charts and "beta" in charts
    _shot(browser, screenshots, "fleet")
    browser.find_element(By.LINK_TEXT, "Boards").click()
    ids = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#boards tbody th a")]
    assert ids == sorted(BOARDS)
    statuses = [e.text for e in browser.find_elements(By.CSS_SELECTOR,
                                                      '#boards [data-field="status"]')]
    assert statuses == ["ok", "ok", "ok"]
    _shot(browser, screenshots, "boards")


def test_the_pause_button_pauses_the_rollout_the_api_reports(logged_in: Any, fleet: Fleet,
                                                            screenshots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser = logged_in
    assert _api_rollout(fleet)["state"] == "active"
    browser.get(fleet.server.url + "/ui/rollouts")
    section = browser.find_element(By.ID, "channel-stable")
    assert section.find_element(By.CSS_SELECTOR, '[data-field="state"]').text == "active"
    # the progress the boards made (the one in the 50% stage took 1.1.0), as the API has it
    counts = _api_rollout(fleet)["counts"]
    assert counts["confirmed"] >= 1
    for key, value in counts.items():
        assert section.find_element(By.CSS_SELECTOR, f'[data-count="{key}"]').text == str(value)
    _shot(browser, screenshots, "rollouts")
    browser.set_window_size(390, 1400)  # a phone's width: one column, nothing cut off
    inner, width = browser.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth]")
    assert width <= inner, (inner, width)
    assert browser.save_screenshot(str(screenshots / "rollouts-phone.png"))
    browser.set_window_size(1280, 1000)
    section.find_element(By.CSS_SELECTOR, 'button[value="pause"]').click()
    flash = _wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, ".flash")))
    assert "stable: pause done; the rollout is paused" in flash.text
    api = _api_rollout(fleet)
    assert api["state"] == "paused" and api["reason"] == "paused by hand"
    _shot(browser, screenshots, "rollouts-paused")


def test_the_rollout_page_follows_the_api_without_a_reload(logged_in: Any, fleet: Fleet,
                                                          screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = logged_in
    if _api_rollout(fleet)["state"] != "paused":
        fleet.server.client().rollout_pause("stable")
    browser.get(fleet.server.url + "/ui/rollouts")
    state = browser.find_element(By.CSS_SELECTOR, '#channel-stable [data-field="state"]')
    assert state.text == "paused"
    browser.execute_script("document.body.dataset.marker = 'same page'")
    fleet.server.client().rollout_resume("stable")
    _wait(browser, lambda b: state.text == "active")
    # the very same document: no reload happened
    assert browser.execute_script("return document.body.dataset.marker") == "same page"


def test_an_action_without_the_csrf_token_is_refused(logged_in: Any, fleet: Fleet) -> None:
    from selenium.webdriver.common.by import By

    browser = logged_in
    if _api_rollout(fleet)["state"] != "active":
        fleet.server.client().rollout_resume("stable")
    browser.get(fleet.server.url + "/ui/rollouts")
    form = browser.find_element(By.CSS_SELECTOR, '#channel-stable form[action$="/pause"]')
    browser.execute_script(
        "arguments[0].querySelector('input[name=csrf]').remove()", form)
    form.find_element(By.CSS_SELECTOR, "button").click()
    _wait(browser, lambda b: "bad_csrf" in b.page_source)
    assert _api_rollout(fleet)["state"] == "active"


def test_filter_the_board_table_and_open_a_board(logged_in: Any, fleet: Fleet,
                                                 screenshots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser = logged_in
    browser.get(fleet.server.url + "/ui/boards")
    Select(browser.find_element(By.ID, "f-channel")).select_by_value("beta")
    browser.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
    _wait(browser, lambda b: "channel=beta" in b.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#boards tbody th a")
    assert [r.text for r in rows] == ["lab-1"]
    assert browser.find_element(By.ID, "matching").text == "1 board match."
    _shot(browser, screenshots, "boards-filtered")
    search = browser.find_element(By.ID, "f-q")
    Select(browser.find_element(By.ID, "f-channel")).select_by_value("")
    search.clear()
    search.send_keys("house-2")
    browser.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
    _wait(browser, lambda b: "q=house-2" in b.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#boards tbody th a")
    assert [r.text for r in rows] == ["greenhouse-2"]
    rows[0].click()
    _wait(browser, lambda b: b.current_url.endswith("/ui/boards/greenhouse-2"))
    facts = browser.find_element(By.CSS_SELECTOR, ".facts").text
    assert "refapp 1.0.0 (sequence 1)" in facts and "stable" in facts
    assert browser.find_element(By.ID, "deployments").is_displayed()
    _shot(browser, screenshots, "board")
    # the board that took 1.1.0: its history, from its own reports, newest first
    browser.get(fleet.server.url + "/ui/boards?version=1.1.0")
    rows = browser.find_elements(By.CSS_SELECTOR, "#boards tbody th a")
    assert len(rows) == 1
    updated = rows[0].text
    rows[0].click()
    _wait(browser, lambda b: b.current_url.endswith(f"/ui/boards/{updated}"))
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#history .pill")]
    api = fleet.server.client().device(updated)["history"]
    assert shown == [h["status"].replace("_", " ") for h in reversed(api)]
    assert shown[0] == "confirmed"
    _shot(browser, screenshots, "board-updated")


def test_releases_and_audit_pages(logged_in: Any, fleet: Fleet, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = logged_in
    browser.get(fleet.server.url + "/ui/releases")
    table = browser.find_element(By.ID, "releases")
    assert "refapp 1.1.0" in table.text and "stable (rollout" in table.text
    table.find_element(By.TAG_NAME, "summary").click()
    assert "app_main.py" in table.text
    _shot(browser, screenshots, "releases")
    browser.get(fleet.server.url + "/ui/audit")
    assert "issue #15" in browser.find_element(By.TAG_NAME, "main").text
    _shot(browser, screenshots, "audit")


def test_logout_ends_the_session(logged_in: Any, fleet: Fleet) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser = logged_in
    browser.find_element(By.CSS_SELECTOR, ".logout button").click()
    _wait(browser, ec.url_contains("/ui/login"))
    browser.get(fleet.server.url + "/ui/rollouts")
    assert "/ui/login" in browser.current_url
