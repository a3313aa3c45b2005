"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for the dashboard tests."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from tests.support.events import BROWSER_USER_AGENT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1600,1900",
    # a visitor's browser: headless Chromium's own User-Agent names it (HeadlessChrome), and the
    # collector refuses it as a bot
    f"--user-agent={BROWSER_USER_AGENT}",
)

#: What Superset draws for a chart that failed (error alert) and for one that is still loading.
#: Superset 6.1 draws a failed chart's "Data error" as an ant-alert-error inside the chart holder,
#: outside any .chart-container.
ERROR_SELECTORS = (
    ".chart-container .alert-danger, .chart-container .ant-alert-error, [data-test='error-message'],"
    " .dashboard-component-chart-holder .ant-alert-error"
)
LOADING_SELECTOR = ".chart-container .loading, [data-test='loading-indicator']"
CHART_SELECTOR = "[data-test='chart-grid-component'], .dashboard-component-chart-holder"


@contextmanager
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(60)
        try:
            yield driver
        finally:
            driver.quit()


def login(driver, base_url: str, username: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/login/")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "input[name='username'], #username"), 30)
    driver.find_element(By.CSS_SELECTOR, "input[name='username'], #username").send_keys(username)
    driver.find_element(By.CSS_SELECTOR, "input[name='password'], #password").send_keys(password + "\n")
    wait_for(lambda: "/login" not in driver.current_url, 30)


def wait_for(check, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    return None


def render_dashboard(
    driver, url: str, expected_charts: int, screenshot: Path | None = None, timeout: float = 90
) -> dict:
    """Opens a dashboard and waits until every chart has finished drawing; returns what it saw."""
    from selenium.webdriver.common.by import By

    driver.get(url)

    def settled():
        holders = driver.find_elements(By.CSS_SELECTOR, ".dashboard-component-chart-holder")
        loading = driver.find_elements(By.CSS_SELECTOR, LOADING_SELECTOR)
        errors = driver.find_elements(By.CSS_SELECTOR, ERROR_SELECTORS)
        return (len(holders) >= expected_charts and not loading) or errors

    wait_for(settled, timeout)
    time.sleep(2)  # let the last animations finish before the picture
    holders = driver.find_elements(By.CSS_SELECTOR, ".dashboard-component-chart-holder")
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ERROR_SELECTORS)]
    titles = [
        e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-test='editable-title-input'], .header-title")
    ]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1600, max(1200, min(int(height) + 100, 4000)))
        time.sleep(1)
        driver.save_screenshot(str(screenshot))
    return {
        "url": driver.current_url,
        "page_title": driver.title,
        "charts": len(holders),
        "errors": errors,
        "loading": len(driver.find_elements(By.CSS_SELECTOR, LOADING_SELECTOR)),
        "titles": titles,
        "text": driver.find_element(By.TAG_NAME, "body").text,
    }


# --- the demo shop (collector/static/shop) and its tracker ------------------------------------------


def tracker(driver) -> tuple[int, list]:
    """The tracker's anonymous user id and the events it has not yet had acknowledged."""
    return driver.execute_script("return [window.rtAnalytics.userId, window.rtAnalytics.queue()]")


def drained(driver) -> bool:
    return driver.execute_script("return window.rtAnalytics && window.rtAnalytics.queue().length === 0")


def click(driver, product: int, action: str) -> None:
    """One of a product's buttons (view, click, purchase), as a shopper clicks it."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f".product[data-id='{product}'] button[data-track='{action}']").click()
