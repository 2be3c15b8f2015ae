"""Debian's chromium, headless, for the judge page: tests/unit/tools/test_judge.py and
benchmarks/studies/judged_gate.py."""

from __future__ import annotations

from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def headless_chrome(width: int = 1100, height: int = 900):
    """Debian's chromium, headless, driven by selenium through Debian's chromedriver (an explicit
    driver path: selenium never downloads one). Used by tests/unit/tools/test_judge.py and
    benchmarks/studies/judged_gate.py."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
