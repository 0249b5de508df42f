"""Every HTML report of a real run opens offline: a tiny run of every pipeline notebook that exists (the profile
tests/fixtures/profiles/tiny.yaml), then each `<nb>.html`, the run's index.html and outputs/index.html in headless
Chromium with the network blocked. Every image must load, the console must stay free of errors, and no request
may leave the machine; a report whose summary.json has a `headline` opens with that sentence.

The browser is jupyterlab_browser.py's OfflineChromium without a server (Debian's chromium + chromium-driver): CI
installs them, elsewhere the test is skipped with the reason in the summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbutils import runner
from nbutils.reporting.notebook_report import external_references
from tests.reporting.jupyterlab_browser import MISSING_CHROMIUM, OfflineChromium

pytestmark = pytest.mark.skipif(MISSING_CHROMIUM is not None, reason=MISSING_CHROMIUM or "")

# Images each report shows at least: a plot or grid for every notebook, infer's two galleries of 8.
MIN_IMAGES = {
    "processdata_01": 1,
    "processdata_02": 1,
    "processdata_03": 1,
    "train_clip": 1,
    "train_encoder_decoder": 1,
    "train_clipcap": 1,
    "infer": 16,
}
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome:", "devtools:")


@pytest.fixture(scope="module")
def tiny_run(tiny_pipeline_run) -> dict:
    """The tiny profile's run (tests/conftest.py), as the runner left it."""
    return {
        **tiny_pipeline_run,
        "record": json.loads((tiny_pipeline_run["run_dir"] / "run.json").read_text()),
    }


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium that cannot reach any network (jupyterlab_browser.OfflineChromium without an origin: no
    host resolves, every http(s)/ws url is blocked at the DevTools level, the proxy is a closed port); its driver,
    with console and network events logged."""
    with OfflineChromium(tmp_path_factory.mktemp("chromium"), origin=None, window="1280,1024") as chromium:
        yield chromium.driver


def open_offline(driver, page: Path) -> dict:
    """Open `page`, let every image load (lazy ones too), and return what the checks need."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser"), driver.get_log("performance")  # drop what earlier pages left
    driver.get(page.resolve().as_uri())
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    driver.execute_script("for (const img of document.images) img.loading = 'eager';")
    wait.until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
    images = driver.execute_script(
        "return [...document.images].map(i => ({src: i.currentSrc.slice(0, 80), width: i.naturalWidth}))"
    )
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    return {
        "images": images,
        "resources": resources,
        "requests": requests,
        "console": [e for e in driver.get_log("browser") if e["level"] == "SEVERE"],
        "text": driver.execute_script("return document.body.innerText.trim()"),
    }


def pages(tiny_run) -> list[tuple[str, Path]]:
    run_dir = tiny_run["run_dir"]
    reports = [(e["name"], run_dir / e["report"]) for e in tiny_run["record"]["notebooks"] if e.get("report")]
    return [
        *reports,
        ("run index", run_dir / "index.html"),
        ("runs index", tiny_run["outputs"] / "index.html"),
    ]


def test_the_tiny_run_runs_every_notebook(tiny_run):
    """Every pipeline notebook that exists runs ok; the others are skipped with a note (the runner's rule)."""
    assert tiny_run["failure"] is None, tiny_run["failure"]
    entries = tiny_run["record"]["notebooks"]
    assert [e["name"] for e in entries] == list(runner.PIPELINE)  # the profile lists every notebook
    assert {e["name"] for e in entries if e["status"] == "ok"} >= set(MIN_IMAGES)
    for entry in entries:
        assert entry["status"] == "ok" or entry["note"] == "notebook does not exist yet", entry


def test_every_report_opens_offline_with_its_images_and_a_clean_console(tiny_run, browser):
    problems = []
    for name, page in pages(tiny_run):
        assert page.is_file(), page
        static = external_references(page.read_text(encoding="utf-8"))
        if static:
            problems.append(f"{name} ({page.name}): remote references: {static[:5]}")
        seen = open_offline(browser, page)
        broken = [i["src"] for i in seen["images"] if i["width"] == 0]
        remote = [u for u in seen["resources"] + seen["requests"] if not u.startswith(LOCAL_SCHEMES)]
        wanted = MIN_IMAGES.get(name, 0)
        if name == "run index":
            wanted = len(list(tiny_run["run_dir"].glob("*/figures/*.png")))  # every figure's thumbnail
        for problem, bad in [
            ("broken images", broken),
            ("network requests", remote),
            ("console errors", [e["message"] for e in seen["console"]]),
            (f"fewer than {wanted} images", [len(seen["images"])] if len(seen["images"]) < wanted else []),
        ]:
            if bad:
                problems.append(f"{name} ({page.name}): {problem}: {bad[:5]}")
    assert problems == []


def test_each_report_opens_with_its_headline(tiny_run, browser):
    run_dir = tiny_run["run_dir"]
    checked = 0
    for entry in tiny_run["record"]["notebooks"]:
        summary = run_dir / entry["name"] / "summary.json"
        headline = json.loads(summary.read_text()).get("headline") if summary.is_file() else None
        if not (entry.get("report") and isinstance(headline, str) and headline.strip()):
            continue
        text = open_offline(browser, run_dir / entry["report"])["text"]
        assert text.startswith(headline.strip()), f"{entry['name']}: {text[:200]!r}"
        checked += 1
    assert checked == sum(e["status"] == "ok" for e in tiny_run["record"]["notebooks"])  # every stage has one
    for page in (run_dir / "index.html", tiny_run["outputs"] / "index.html"):
        text = open_offline(browser, page)["text"]
        assert text.split("\n")[0].endswith("."), text[:200]  # a sentence first, then the page
