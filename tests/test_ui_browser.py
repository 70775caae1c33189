"""The dashboard in a real headless Chromium against a real `ota serve` on 127.0.0.1.

Three virtual boards (MicroPython's unix port on flash directories, tools/virtual_board) are
provisioned, boot once and really check in; release 1.1.0 then rolls out to half of the
`stable` channel, and 1.2.0, whose app raises at start, to the `beta` channel, whose board
installs it, crashes in its trial boot, rolls back and reports the exception. The browser logs
in, sees the boards, pauses the rollout with its button (and the API reports it paused),
filters the board table, opens a board's history with that failure reason, yanks 1.2.0 with
its button (refused while it rolls out, then with the separate force button; the API reports
it yanked), reads the audit log, revokes a board, and is turned away without a session,
without the CSRF token, or with a `read` token. A PNG of each page goes to
$MPOTA_SCREENSHOTS (browser_support.screenshots).

One browser (browser_support.browser) and one fleet serve every test of the module: the tests
run in file order and each one leaves the fleet as the next expects it.
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
FAILING = "lab-1"  # the `beta` board that takes the crashing 1.2.0 and rolls back
CRASH = b"raise OSError('sensor bus not found')\n"
REASON = "OSError: sensor bus not found"  # what the board reports (bootloader_py/ota/crash.py)
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
                            small_app("1.0.0"), channel=channel, timeout_s=3, trial_boots=1)
            flashes[device_id] = flash
        for flash in flashes.values():  # each boots once and checks in: nothing new yet
            VirtualBoard(flash, micropython=micropython).run(max_boots=1, timeout=60)
        seen = {d["device_id"]: d["last_seen"] for d in server.client().list_devices()}
        assert all(seen[b] is not None for b in BOARDS), seen
        bundle = build_release(work, small_app("1.1.0"), "1.1.0", 2, keys)
        server.client().publish(bundle, channel="stable", policy={
            "stages": [{"percent": 50}, {"percent": 100}], "auto_advance": False})
        crashing = build_release(work, small_app("1.2.0", {"app_main.py": CRASH}), "1.2.0", 3,
                                 keys)
        server.client().publish(crashing, channel="beta", percent=100)
        # the `stable` boards inside the first stage take 1.1.0; lab-1 takes 1.2.0 and resets,
        # its trial boot raises and resets, it rolls back and reports the exception
        ended = {device_id: [b.ended for b in VirtualBoard(flash, micropython=micropython)
                             .run(max_boots=3, timeout=60).boots]
                 for device_id, flash in flashes.items()}
        assert ended[FAILING] == ["reset", "reset", "exit"], ended
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
    failing = browser.find_element(By.CSS_SELECTOR, '[data-live-fleet="failing"]')
    assert (ok.text, failing.text) == ("2", "1")  # lab-1 rolled back 1.2.0
    charts = browser.find_element(By.CSS_SELECTOR, ".charts").text
    assert "refapp 1.0.0" in charts and "stable" in charts and "beta" in charts
    _shot(browser, screenshots, "fleet")
    browser.find_element(By.LINK_TEXT, "Boards").click()
    ids = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#boards tbody th a")]
    assert ids == sorted(BOARDS)
    statuses = [e.text for e in browser.find_elements(By.CSS_SELECTOR,
                                                      '#boards [data-field="status"]')]
    assert statuses == ["ok", "ok", "failing"]
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


def test_a_board_s_history_shows_the_failure_reason_it_really_reported(
        logged_in: Any, fleet: Fleet, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = logged_in
    browser.get(fleet.server.url + "/ui/boards?status=failing")
    rows = browser.find_elements(By.CSS_SELECTOR, "#boards tbody th a")
    assert [r.text for r in rows] == [FAILING]
    rows[0].click()
    _wait(browser, lambda b: b.current_url.endswith(f"/ui/boards/{FAILING}"))
    api = fleet.server.client().device(FAILING)
    assert [(h["version"], h["reason"]) for h in api["history"]
            if h["status"] == "rolled_back"] == [("1.2.0", REASON)]
    shown = [[td.text for td in tr.find_elements(By.CSS_SELECTOR, "th, td")]
             for tr in browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")]
    assert [(row[1], row[3], row[4]) for row in shown] == [
        (f"refapp {h['version']}", h["status"].replace("_", " "), h["reason"] or "")
        for h in reversed(api["history"])]
    assert shown[0][1:] == ["refapp 1.2.0", "3", "rolled back", REASON]
    assert REASON in browser.find_element(By.CSS_SELECTOR, ".facts").text  # its last error
    _shot(browser, screenshots, "board-failure")


def _accept(browser: Any, question: str) -> None:
    """Answer OK to the page's confirmation (live.js, data-confirm), which asks `question`."""
    from selenium.webdriver.support import expected_conditions as ec

    alert = _wait(browser, ec.alert_is_present())
    assert alert.text.startswith(question), alert.text
    alert.accept()


def _release_row(browser: Any, version: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f'#releases tr[data-release="refapp {version}"]')


def _api_release(fleet: Fleet, version: str) -> dict[str, Any]:
    (found,) = [r for r in fleet.server.client().list_releases("refapp")
                if r["version"] == version]
    return found


def test_releases_show_signers_and_yank_is_refused_while_rolling_then_forced(
        logged_in: Any, fleet: Fleet, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser = logged_in
    browser.get(fleet.server.url + "/ui/releases")
    table = browser.find_element(By.ID, "releases")
    assert "refapp 1.1.0" in table.text and "stable (rollout" in table.text
    registered = fleet.server.client().list_releases("refapp")
    assert [r["version"] for r in registered] == ["1.1.0", "1.2.0"]
    for release in registered:  # the key ids the server verified, as `ota releases list`
        signers = _release_row(browser, release["version"]).find_element(
            By.CSS_SELECTOR, '[data-field="signers"]').text.split()
        assert signers == release["signers"] and signers
    table.find_element(By.TAG_NAME, "summary").click()
    assert "app_main.py" in table.text
    _shot(browser, screenshots, "releases")
    # 1.2.0 still rolls out on beta: the plain Yank is refused, as the API refuses it
    beta = fleet.server.client().rollout_status("beta")["rollout"]
    assert beta["state"] in ("active", "paused")
    _release_row(browser, "1.2.0").find_element(By.CSS_SELECTOR, 'button[value="yank"]').click()
    flash = _wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, ".flash")))
    assert flash.text.startswith("refapp 1.2.0: not yanked: refapp 1.2.0 is rolling out on "
                                 f"'beta' ({beta['state']})")
    assert _api_release(fleet, "1.2.0")["yanked"] is None
    _shot(browser, screenshots, "releases-yank-refused")
    # the separate, labelled force button: aborts beta's rollout and yanks
    force = _release_row(browser, "1.2.0").find_element(By.CSS_SELECTOR,
                                                        'button[value="force"]')
    assert force.text == "Abort its rollouts and yank"
    force.click()
    _accept(browser, "Abort the rollout of refapp 1.2.0 on beta (paused")
    flash = _wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, ".flash")))
    assert "refapp 1.2.0: yanked" in flash.text and "rollouts aborted on beta" in flash.text
    assert _api_release(fleet, "1.2.0")["yanked"] is not None
    assert fleet.server.client().rollout_status("beta")["rollout"]["state"] == "aborted"
    row = _release_row(browser, "1.2.0")
    assert "yanked" in row.find_element(By.CSS_SELECTOR, '[data-field="yanked"]').text
    assert not row.find_elements(By.CSS_SELECTOR, "button")
    _shot(browser, screenshots, "releases-yanked")


def test_the_audit_page_shows_who_did_what_newest_first(logged_in: Any, fleet: Fleet,
                                                        screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = logged_in
    browser.get(fleet.server.url + "/ui/audit")
    api = fleet.server.client().audit(limit=100)
    rows = browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
    assert [int(r.get_attribute("data-audit-id")) for r in rows] == \
        [e["id"] for e in reversed(api)]
    shown = [tuple(r.find_element(By.CSS_SELECTOR, f'[data-field="{f}"]').text
                   for f in ("action", "target", "outcome")) for r in rows[:2]]
    assert shown == [("POST /ui/releases/{app}/{version}/yank", "refapp 1.2.0 (force)",
                      "303 ok"),
                     ("POST /ui/releases/{app}/{version}/yank", "refapp 1.2.0",
                      "409 rollout_active")]
    _shot(browser, screenshots, "audit")


def test_a_read_token_logs_in_and_cannot_pause(browser: Any, fleet: Fleet,
                                               screenshots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    if _api_rollout(fleet)["state"] != "active":
        fleet.server.client().rollout_resume("stable")
    viewer = fleet.server.client().create_token("viewer", "read")
    browser.delete_all_cookies()
    try:
        _log_in(browser, fleet, viewer)
        _wait(browser, ec.url_contains("/ui/fleet"))
        browser.get(fleet.server.url + "/ui/boards/greenhouse-1")
        assert not browser.find_element(By.CSS_SELECTOR, 'button[value="revoke"]').is_enabled()
        browser.get(fleet.server.url + "/ui/rollouts")
        browser.find_element(By.CSS_SELECTOR, '#channel-stable button[value="pause"]').click()
        _wait(browser, lambda b: "missing_scope" in b.page_source)
        _shot(browser, screenshots, "rollouts-read-refused")
        assert _api_rollout(fleet)["state"] == "active"
        (entry,) = [e for e in fleet.server.client().audit(limit=100) if e["actor"] == "viewer"]
        assert (entry["status"], entry["outcome"]) == (403, "missing_scope")
    finally:
        browser.delete_all_cookies()  # the next test logs in with the admin token again


def test_the_revoke_button_revokes_the_board_the_api_reports(logged_in: Any, fleet: Fleet,
                                                             screenshots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser = logged_in
    assert fleet.server.client().device("greenhouse-1")["revoked"] is None
    browser.get(fleet.server.url + "/ui/boards/greenhouse-1")
    browser.find_element(By.CSS_SELECTOR, 'button[value="revoke"]').click()
    _accept(browser, "Revoke greenhouse-1?")
    flash = _wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, ".flash")))
    assert flash.text.startswith("greenhouse-1: revoked")
    assert fleet.server.client().device("greenhouse-1")["revoked"] is not None
    assert browser.find_element(By.CSS_SELECTOR, '[data-field="status"]').text == "revoked"
    _shot(browser, screenshots, "board-revoked")


def test_logout_ends_the_session(logged_in: Any, fleet: Fleet) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser = logged_in
    browser.find_element(By.CSS_SELECTOR, ".logout button").click()
    _wait(browser, ec.url_contains("/ui/login"))
    browser.get(fleet.server.url + "/ui/rollouts")
    assert "/ui/login" in browser.current_url
