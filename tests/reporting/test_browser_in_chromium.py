"""The caption browser driven in a real browser: Voilà serves a small notebook on 127.0.0.1 and headless Chromium
(Debian's chromium + chromium-driver, through Selenium) clicks next and changes the preset, as a person would.

CI installs the two Debian packages (.ci/run), so there it always runs; elsewhere it is skipped, with the reason in
the test summary, when they are missing.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "browser"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="Chromium not found (apt-get install chromium chromium-driver): the real-browser test did not run",
)


def _notebook(path: Path) -> None:
    cells = [
        f"import sys\nsys.path.insert(0, {str(FIXTURES)!r})\nimport browser_demo",
        "browser_demo.browser().widget(thumb_px=64)",
    ]
    nb = {
        "cells": [
            {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
            for c in cells
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offline_template(jupyter_dir: Path) -> None:
    """Voilà's lab template without its two Font Awesome stylesheets from a CDN (they fail offline, and the test
    asserts a clean console): a copy made at run time from the installed Voilà, placed on JUPYTER_PATH, where it
    takes precedence over the installed one."""
    installed = Path(sys.prefix) / "share" / "jupyter" / "voila" / "templates" / "lab"
    target = jupyter_dir / "voila" / "templates" / "lab"
    shutil.copytree(installed, target)
    index = target / "index.html.j2"
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(line for line in lines if "cdn.jsdelivr.net" not in line))


@pytest.fixture
def served_notebook(tmp_path):
    _notebook(tmp_path / "browser.ipynb")
    _offline_template(tmp_path / "jupyter")
    port = _free_port()
    voila = shutil.which("voila", path=str(Path(sys.executable).parent)) or "voila"
    server = subprocess.Popen(
        [
            voila,
            "browser.ipynb",
            "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1",
        ],
        cwd=tmp_path,
        env={**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        try:
            output = server.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()[0]
        print(output[-3000:])


def test_clicking_next_and_changing_the_preset_update_the_page(served_notebook):
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(served_notebook)
        wait = WebDriverWait(driver, 120, ignored_exceptions=(StaleElementReferenceException,))
        next_button = wait.until(lambda d: d.find_element(By.XPATH, "//button[contains(., 'next')]"))

        def caption_text():
            try:  # the widget re-renders its HTML: an element read a moment ago may be gone
                return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, "div.caption"))
            except StaleElementReferenceException:
                return ""

        def image_src():
            try:
                images = [i.get_attribute("src") for i in driver.find_elements(By.TAG_NAME, "img")]
            except StaleElementReferenceException:
                return ""
            return next((src for src in images if src), "")

        wait.until(lambda d: "as run: red.png" in caption_text() and image_src())
        first_image = image_src()

        next_button.click()
        wait.until(lambda d: "as run: green.png" in caption_text())
        wait.until(lambda d: image_src() not in ("", first_image))
        assert "2 / 3" in driver.page_source

        preset = Select(driver.find_element(By.TAG_NAME, "select"))
        preset.select_by_visible_text("greedy")
        wait.until(lambda d: "greedy caption of image" in caption_text())
        assert "[greedy]" in caption_text()

        errors = [
            entry
            for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "favicon" not in entry["message"]
        ]
        assert errors == []
    finally:
        driver.quit()
