"""A real headless Chromium (Debian's chromium + chromium-driver) driven by Selenium: load a
page, collect its console errors, check its images, take a full-page screenshot.

    .venv/bin/python -m tests.browser warehouse/_reports/report.html docs/report.png
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def available() -> str | None:
    """None when the browser can run here, else why not."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return "Chromium and its driver are not installed (make browser: apt-get install " \
               "chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def render(page: Path, screenshot: Path, width: int = 1280) -> dict:
    """Open `page` (a local file), wait for it, and return what a person would notice: the
    console's errors, each image's natural size, the title, and the screenshot's path."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--disable-dev-shm-usage", f"--window-size={width},1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.resolve().as_uri())
        driver.execute_async_script(  # every image decoded (data URIs decode asynchronously)
            "const done = arguments[0];"
            "Promise.all([...document.images].map(i => i.decode().catch(() => null)))"
            ".then(() => done(true));")
        images = driver.execute_script(
            "return [...document.images].map(i => [i.naturalWidth, i.naturalHeight, i.alt]);")
        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(width, min(int(height) + 40, 16000))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        logs = driver.get_log("browser")
        return {"title": driver.title, "images": images, "height": height,
                "errors": [e for e in logs if e["level"] in ("SEVERE", "ERROR")],
                "screenshot": screenshot}
    finally:
        driver.quit()


if __name__ == "__main__":
    why = available()
    if why:
        raise SystemExit(f"error: {why}")
    got = render(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{got['title']}: {len(got['images'])} images, {len(got['errors'])} console errors, "
          f"screenshot {got['screenshot']}")
