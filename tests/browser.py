"""A real browser for the web chat's tests: Debian's chromium, headless, driven by Selenium.

Selenium talks to Debian's own chromedriver (`apt-get install chromium chromium-driver`), named
by path, so that Selenium Manager never runs and nothing is downloaded. The browser starts with a
fresh profile, with its background traffic (component updates, sync, QUIC probes) off, so that the
only requests in its performance log are the page's own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


class Unavailable(Exception):
    """No browser on this host; the message says why, in one line."""


def require_browser() -> None:
    """Raise Unavailable unless chromium, chromedriver and Selenium are all here."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise Unavailable(
            f"the browser tests need {' and '.join(missing)} "
            "(apt-get install chromium chromium-driver)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise Unavailable("the browser tests need Selenium (pip install -e '.[test]')") from None


@contextmanager
def chromium(width: int = 1100, height: int = 800) -> Iterator[Any]:
    """A headless chromium with a new empty profile; yields Selenium's WebDriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llmkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium's sandbox refuses to run as root
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for since the last call, from the performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def sent_requests(driver: Any) -> list[dict[str, Any]]:
    """Every request the page sent since the last call (method, url, postData if any), from the
    performance log: what reached the network, whatever the page shows."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            sent.append(message["params"]["request"])
    return sent
