"""Headless chromium through selenium, for the dashboard's browser tests and the screenshots
of bench/real/screenshots.py (test-only: not part of the installed package)."""

from __future__ import annotations

import shutil

INSTALL_HINT = "apt-get install -y chromium chromium-driver"


def browser_paths() -> tuple[str | None, str | None]:
    """(chromium binary, chromedriver) found on PATH, or None for each that is missing."""
    binary = next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    return binary, shutil.which("chromedriver")


def headless_chromium(window: str = "1440,1000"):
    """A selenium Chrome driver on headless chromium; FileNotFoundError names the install."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = browser_paths()
    if binary is None or driver_path is None:
        raise FileNotFoundError(f"chromium and chromium-driver are not installed ({INSTALL_HINT})")
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={window}", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    return driver
