"""A real headless Chromium for the dashboard tests: Debian's `chromium` and `chromium-driver`
(installed by `make browser`, which `make test` runs), driven by Selenium, started once per
test session. No browser is downloaded from anywhere: the driver's path is given, so
Selenium's own manager never runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
# Headless and quiet: no GPU, no sandbox (root in a container), and no network of its own
# (no QUIC, sync, component updates or background fetches): it talks to 127.0.0.1 only.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")


def _which(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is not installed: run `make browser` (Debian's chromium and "
                    f"chromium-driver)", pytrace=False)
    return found


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the whole test session, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options,
                              service=Service(executable_path=_which(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the dashboard tests save a PNG of each page: $MPOTA_SCREENSHOTS, or a temp dir."""
    folder = Path(os.environ.get("MPOTA_SCREENSHOTS") or
                  tempfile.mkdtemp(prefix="mpota-screenshots-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
