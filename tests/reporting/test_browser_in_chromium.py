"""The caption browser as a person uses it: the real notebooks/infer.ipynb, run in JupyterLab in headless Chromium.

Why: the browser is an ipywidgets VBox whose logic is tested without a kernel (test_browser.py), but what a person
sees is the widget rendered by JupyterLab: the "k / n" header beside the slider, the rows after a preset change,
the image a sort lands on. Those can only be read from a real page, after a real kernel ran the real notebook.

Set-up, in a temporary folder laid out like the repository: `root/notebooks/infer.ipynb` (a copy of the real
notebook, unmodified) and `root/outputs/lab`, a copy of the tiny run the runner made (tests/conftest.py's
`tiny_pipeline_run`, tests/fixtures/profiles/tiny.yaml). The notebook's defaults are `run_dir = "../outputs/lab"` and
`output_dir = ""`, and since `outputs/lab/infer` belongs to a runner-made run, the notebook writes to
`outputs/lab/infer_lab` and must leave `outputs/lab/infer` as the run left it. JupyterLab is started from this
environment on 127.0.0.1 with every Jupyter folder inside the temporary folder, offline (tests/reporting/
jupyterlab_browser.py says how); the test opens the notebook, runs all cells through `window.jupyterapp`, waits for
them, and then drives the caption browser (the notebook's last cell) by clicking, selecting and pressing keys,
reading only the rendered DOM:

- every cell runs without an error or stderr output, and infer_lab holds the notebook's tables;
- the header "k / n" and the slider agree (the slider counts from 1 to n) at the start, after next, after moving
  the slider with the keyboard and after previous;
- choosing another decoding preset re-captions: every row names the new preset, and every score next to a
  re-captioned caption is that caption's (recomputed here the way infer scores, to the 2 decimals shown) or is
  marked "not scored"; after next, the new image's rows and the dropdown still show that preset;
- sort "cider" shows image 1 of the new order, and that image's worst CIDEr (over the models) is the lowest of
  all images in infer_lab/per_image.csv (the notebook's own table); next then walks every image once, worst
  first. The same for sort "clipscore", since on the tiny run every image's worst CIDEr is 0 (degenerate
  captions), so only its CLIPScores tell a worst-first order from any other;
- no request or WebSocket left 127.0.0.1 (DevTools performance log) and the console has no errors.

What is filtered, each with its reason: HARMLESS_STDERR (stderr lines a cell may show) and HARMLESS_CONSOLE (console
errors). The tests share one page and run in file order, each continuing where the previous one left the widget;
after the shared tiny run (1-2 min, once per session) they take about half a minute.
CI installs Debian's chromium and chromium-driver (.ci/run), so there it always runs; elsewhere it is skipped,
with the reason in the test summary, when they are missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.reporting.jupyterlab_browser import MISSING_CHROMIUM, JupyterLab, OfflineChromium

pytestmark = pytest.mark.skipif(MISSING_CHROMIUM is not None, reason=MISSING_CHROMIUM or "")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/infer.ipynb"  # as JupyterLab names it, relative to its root
# What this set-up needs of the notebook's parameters cell (its defaults, as the source spells them).
RUN_DEFAULTS = {"run_dir": '"../outputs/lab"', "output_dir": '""'}
OPEN_TIMEOUT_S = 180  # JupyterLab's page, the notebook and its kernel
RUN_ALL_TIMEOUT_S = 900  # every cell of infer.ipynb on the tiny run (about 15 s on 2 cores)
STEP_TIMEOUT_S = 180  # one widget action, re-captioning the shown image with every model included
SCORE_TOLERANCE = 0.005 + 1e-6  # scores are shown with 2 decimals
SCORES = ("cider", "clipscore", "refclipscore")

# Console messages at level SEVERE that are not errors of the page under test: (pattern, why it is harmless).
# Only SEVERE entries are checked; JupyterLab's WARNINGs (e.g. "Disabling terminals plugin because they are not
# available on the server", which this server's --ServerApp.terminals_enabled=False causes) are not errors.
HARMLESS_CONSOLE: list[tuple[str, str]] = []

# stderr lines a cell may show, each (pattern of a whole line, why it is not a problem). Only these lines are
# dropped; any other line of the same output still fails the test, and error outputs (tracebacks) always do.
HARMLESS_STDERR: list[tuple[str, str]] = []

# The notebook panel of NOTEBOOK in JupyterLab's main area (`panel`), from window.jupyterapp.
FIND_PANEL = (
    "const panel = window.jupyterapp && [...window.jupyterapp.shell.widgets('main')]"
    f".find(w => w.context && w.context.path === {json.dumps(NOTEBOOK)});"
)
# Counts the kernel's returns to idle, so that a test can wait until the kernel has handled a widget action.
WATCH_KERNEL = (
    FIND_PANEL
    + """
if (!window.__kernelIdle) {
  window.__kernelIdle = {count: 0};
  panel.sessionContext.statusChanged.connect((_, status) => { if (status === 'idle') window.__kernelIdle.count++; });
}
return window.__kernelIdle.count;
"""
)
KERNEL_STATE = (
    FIND_PANEL
    + """
return {idle: window.__kernelIdle ? window.__kernelIdle.count : -1,
        status: panel && panel.sessionContext.session && panel.sessionContext.session.kernel
                ? panel.sessionContext.session.kernel.status : null};
"""
)
# Where run-all stands: code cells not run yet or running, error outputs (from the cells' models).
RUN_STATE = (
    FIND_PANEL
    + """
const cells = [...panel.content.widgets].filter(c => c.model.type === 'code');
const errors = [];
cells.forEach((cell, i) => cell.model.outputs.toJSON().forEach(o => {
  if (o.output_type === 'error') errors.push(`code cell ${i + 1}: ${o.ename}: ${o.evalue}`);
}));
return {cells: cells.length, errors,
        pending: cells.filter(c => c.model.executionCount === null || c.model.executionState === 'running').length,
        status: panel.sessionContext.session.kernel.status};
"""
)
# What the rendered page shows of the outputs: stderr and error outputs (JupyterLab renders both with the stderr
# mime type), by their text.
OUTPUT_PROBLEMS = """
return [...document.querySelectorAll(
  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], .jp-OutputArea-output.jp-mod-error'
)].map(e => e.textContent.trim().slice(0, 1500));
"""
# The caption browser as rendered: the VBox holding the "next ▶" button, read from the DOM only.
SNAPSHOT = """
const next = [...document.querySelectorAll('button.jupyter-button')].find(b => b.textContent.includes('next'));
if (!next) return null;
const box = next.closest('.widget-vbox');
const html = box.querySelector('.widget-html-content');
const slider = box.querySelector('.widget-slider');
const handle = slider && slider.querySelector('.noUi-handle');
const readout = slider && slider.querySelector('.widget-readout');
const dropdown = label => {
  const d = [...box.querySelectorAll('.widget-dropdown')]
    .find(d => d.querySelector('label').textContent.trim() === label);
  const select = d && d.querySelector('select');
  return select && select.selectedOptions.length ? select.selectedOptions[0].textContent.trim() : null;
};
const image = box.querySelector('img.widget-image');
return {
  text: html ? html.textContent : '',
  rows: html ? [...html.querySelectorAll('div.caption')].map(r => ({
    text: r.textContent.trim(),
    model: r.querySelector('b') ? r.querySelector('b').textContent : '',
    note: r.querySelector('small') ? r.querySelector('small').textContent.trim() : '',
  })) : [],
  readout: readout ? readout.textContent.trim() : null,
  slider_min: handle && handle.getAttribute('aria-valuemin'),
  slider_max: handle && handle.getAttribute('aria-valuemax'),
  slider_now: handle && handle.getAttribute('aria-valuenow'),
  preset: dropdown('preset'),
  sort: dropdown('sort'),
  image_loaded: !!(image && image.complete && image.naturalWidth > 0),
};
"""


# -- the set-up -------------------------------------------------------------------------------------------------


def _digests(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _parameters_source(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    assert cell is not None, f"{notebook} has no cell tagged 'parameters'"
    return "".join(cell["source"])


def _unresolved(run: Path) -> list[str]:
    """What the copied run names that does not exist: each stage.json's files (relative to its stage folder), its
    absolute paths (the image cache, the demo's ground truth), and the images of the test split."""
    missing = []
    for manifest in sorted(run.glob("*/stage.json")):
        stage = json.loads(manifest.read_text())
        for name in (stage.get("files") or {}).values():
            if not (manifest.parent / name).exists():
                missing.append(f"{manifest.parent.name}/stage.json: {name}")
        for value in [stage.get("cache_dir"), *(stage.get("origin") or {}).values()]:
            if isinstance(value, str) and value.startswith("/") and not Path(value).exists():
                missing.append(f"{manifest.parent.name}/stage.json: {value}")
    test_split = run / "processdata_03" / "test.csv"
    if test_split.is_file():
        for path in pd.read_csv(test_split, dtype=str)["image_path"].unique():
            if not (Path(path) if Path(path).is_absolute() else run / path).exists():
                missing.append(f"processdata_03/test.csv: {path}")
    return missing


@pytest.fixture(scope="module")
def lab_root(tiny_pipeline_run, tmp_path_factory) -> dict:
    """root/notebooks/infer.ipynb (the real one) and root/outputs/lab (a copy of the tiny run)."""
    entries = {e["name"]: e for e in tiny_pipeline_run["record"]["notebooks"]}
    infer_entry = entries.get("infer", {})
    assert infer_entry.get("status") == "ok", (
        f"the tiny run's infer stage did not run ok ({infer_entry}); run failure: {tiny_pipeline_run['failure']}"
    )
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    (root / "notebooks").mkdir(parents=True)
    notebook = root / NOTEBOOK
    shutil.copyfile(REPO / NOTEBOOK, notebook)
    source = _parameters_source(notebook)
    for name, value in RUN_DEFAULTS.items():
        assert re.search(rf"^{name}\s*=\s*{re.escape(value)}", source, re.MULTILINE), (
            f"{NOTEBOOK}'s parameters cell must default to {name} = {value} (this test opens the notebook as is, "
            f"next to outputs/lab); it has:\n{source}"
        )
    run = root / "outputs" / "lab"
    # A copy, not a link: the notebook writes into outputs/lab/infer_lab, and the shared run stays as it is.
    # Its tables name images by absolute paths inside the shared run, which outlives this module.
    shutil.copytree(tiny_pipeline_run["run_dir"], run, symlinks=True)
    assert (run / ".stages" / "infer.json").is_file(), "the copied run has no runner manifest for infer"
    missing = _unresolved(run)
    assert missing == [], f"the copied run names files that do not exist: {missing[:10]}"
    return {
        "base": base,
        "root": root,
        "run": run,
        "infer_lab": run / "infer_lab",
        "run_infer": _digests(run / "infer"),
    }


@pytest.fixture(scope="module")
def lab(lab_root):
    with JupyterLab(lab_root["root"], lab_root["base"] / "home") as server:
        yield server


@pytest.fixture(scope="module")
def chromium(lab, lab_root):
    with OfflineChromium(lab_root["base"] / "home" / "chromium", lab.origin) as browser:
        yield browser


def _wait(driver, condition, timeout: float, message):
    """Poll `condition(driver)` until it is truthy; on timeout fail with `message()` (the state at that time)."""
    from selenium.common.exceptions import (
        StaleElementReferenceException,
        TimeoutException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=(
            StaleElementReferenceException,)).until(condition)  # fmt: skip
    except TimeoutException:
        pytest.fail(message(), pytrace=False)
    except WebDriverException as e:  # e.g. the page's script failed: say so rather than wait
        pytest.fail(f"{message()}\n({type(e).__name__}: {e.msg})", pytrace=False)


@pytest.fixture(scope="module")
def notebook(lab, chromium) -> dict:
    """Open infer.ipynb, wait for its kernel, run all cells and wait until they are done (or one failed).

    Returns {"state": RUN_STATE at the end, "outputs": stderr and error outputs on the page, "seconds"}."""
    driver = chromium.driver
    start = time.monotonic()
    driver.get(lab.url(f"lab/tree/{NOTEBOOK}"))
    _wait(
        driver,
        lambda d: d.execute_script(
            FIND_PANEL + "return !!(panel && panel.context.isReady && panel.sessionContext.session"
            " && panel.sessionContext.session.kernel && panel.sessionContext.session.kernel.status === 'idle');"
        ),
        OPEN_TIMEOUT_S,
        lambda: f"{NOTEBOOK} did not open with an idle kernel within {OPEN_TIMEOUT_S} s:\n{lab.log_tail()}",
    )
    driver.execute_script(FIND_PANEL + "window.jupyterapp.shell.activateById(panel.id);")
    driver.execute_script(WATCH_KERNEL)
    opened = time.monotonic()
    driver.execute_script("return window.jupyterapp.commands.execute('notebook:run-all-cells');")
    state = {}

    def finished(d):
        state.update(d.execute_script(RUN_STATE))
        return state["errors"] or (state["pending"] == 0 and state["status"] == "idle")

    _wait(
        driver,
        finished,
        RUN_ALL_TIMEOUT_S,
        lambda: f"run all cells did not finish within {RUN_ALL_TIMEOUT_S} s: {state}\n{lab.log_tail()}",
    )
    done = time.monotonic()
    print(f"JupyterLab: opened in {opened - start:.1f} s, all cells ran in {done - opened:.1f} s")
    return {
        "state": state,
        "outputs": _stderr_problems(driver.execute_script(OUTPUT_PROBLEMS)),
        "seconds": done - opened,
    }


def _stderr_problems(outputs: list[str]) -> list[str]:
    """The stderr and error outputs' texts without the lines HARMLESS_STDERR names; those left empty dropped."""
    left = []
    for text in outputs:
        lines = [
            line
            for line in text.splitlines()
            if line.strip() and not any(re.fullmatch(p, line.strip()) for p, _ in HARMLESS_STDERR)
        ]
        if lines:
            left.append("\n".join(lines))
    return left


@pytest.fixture(scope="module")
def per_image(lab_root, notebook) -> pd.DataFrame:
    """The per-image table the notebook wrote (one row per image and model; nbutils/infer.py)."""
    path = lab_root["infer_lab"] / "per_image.csv"
    assert path.is_file(), f"the notebook wrote no {path}"
    return pd.read_csv(path, dtype={"image_path": str, "model": str, "caption": str}, keep_default_na=False,
                       na_values={s: [""] for s in SCORES})  # fmt: skip


# -- reading and driving the widget ----------------------------------------------------------------------------


class CaptionBrowserPage:
    """The caption browser widget on the JupyterLab page: actions that wait for the kernel, and DOM snapshots."""

    def __init__(self, driver):
        self.driver = driver

    def snapshot(self) -> dict:
        shown = self.driver.execute_script(SNAPSHOT)
        if shown is None:
            pytest.fail(
                "the caption browser (a widget with a 'next ▶' button) is not on the page", pytrace=False
            )
        header = re.match(r"\s*(\d+)\s*/\s*(\d+)\s+(.*)", shown["text"].split("\n")[0])
        shown["number"], shown["count"] = (int(header[1]), int(header[2])) if header else (None, None)
        shown["path"] = header[3].strip() if header else None
        shown["header"] = shown["text"].split("\n")[0].strip()
        shown["rows"] = [_parse_row(row) for row in shown["rows"]]
        return shown

    def _control(self, xpath: str, what: str):
        """The element at `xpath` inside the caption browser's box (a fresh lookup: the widget re-renders)."""
        from selenium.common.exceptions import NoSuchElementException

        box = self.driver.execute_script(
            "const next = [...document.querySelectorAll('button.jupyter-button')]"
            ".find(b => b.textContent.includes('next')); return next && next.closest('.widget-vbox');"
        )
        if box is None:
            pytest.fail("the caption browser is not on the page", pytrace=False)
        try:
            return box.find_element("xpath", xpath)
        except NoSuchElementException:
            pytest.fail(f"the caption browser has no {what}", pytrace=False)

    def act(self, description: str, action) -> dict:
        """Do `action()`, wait until the kernel has handled it (back to idle), return the snapshot then."""
        before = self.driver.execute_script(WATCH_KERNEL)
        action()
        state = {}

        def handled(d):
            state.update(d.execute_script(KERNEL_STATE))
            return state["idle"] > before and state["status"] == "idle"

        _wait(
            self.driver,
            handled,
            STEP_TIMEOUT_S,
            lambda: f"{description}: the kernel did not handle it within {STEP_TIMEOUT_S} s ({state})",
        )
        return self.snapshot()

    def click(self, label: str) -> dict:
        button = self._control(f".//button[contains(., {label!r})]", f"{label!r} button")
        return self.act(f"clicking {label!r}", button.click)

    def choose(self, label: str, value: str) -> dict:
        from selenium.webdriver.support.ui import Select

        select = Select(self._control(
            f".//div[contains(@class, 'widget-dropdown')][label[normalize-space() = {label!r}]]//select",
            f"{label!r} dropdown",
        ))  # fmt: skip
        return self.act(f"choosing {label} {value!r}", lambda: select.select_by_visible_text(value))

    def slide(self, key: str, name: str) -> dict:
        """Press `key` (selenium's Keys) on the slider's handle, as a person moving it with the keyboard."""
        handle = self._control(
            ".//div[contains(@class, 'widget-slider')]//div[contains(@class, 'noUi-handle')]", "slider handle"
        )
        return self.act(f"moving the slider ({name})", lambda: handle.send_keys(key))


def _parse_row(row: dict) -> dict:
    """A caption row, "✎ model [preset]: caption (cider x, clipscore y · wrong: ... · not scored: ...)"."""
    text, note = row["text"], row["note"]
    match = re.match(r"✎?\s*(?P<model>.*?)\s*\[(?P<preset>[^\]]*)\]:\s*(?P<rest>.*)", text, re.DOTALL)
    rest = match["rest"] if match else text
    if note and rest.endswith(note):
        rest = rest[: -len(note)]
    return {
        "text": text,
        "model": row["model"].replace("✎", "").strip() or (match["model"] if match else ""),
        "preset": match["preset"] if match else None,
        "caption": rest.strip(),
        "note": note,
        "scores": {
            name: float(value)
            for name, value in re.findall(r"\b(cider|clipscore|refclipscore)\s+(-?[\d.]+)", note)
        },
        "not_scored": "not scored" in note.lower(),
    }


@pytest.fixture(scope="module")
def page(notebook, chromium) -> CaptionBrowserPage:
    browser = CaptionBrowserPage(chromium.driver)
    _wait(
        chromium.driver,
        lambda d: d.execute_script(SNAPSHOT),
        60,
        lambda: f"the caption browser did not render after run all: {notebook['state']}",
    )
    return browser


def _agreement(shown: dict, n_images: int, after: str) -> list[str]:
    """What is wrong with the header and the slider of `shown`: they must agree, counting 1..n_images."""
    if shown["number"] is None:
        return [f"after {after}: no 'k / n' header in {shown['text'][:200]!r}"]
    k, n = shown["number"], shown["count"]
    problems = []
    if n != n_images:
        problems.append(
            f"after {after}: the header says {k} / {n}, but infer_lab/per_image.csv has {n_images} images"
        )
    limits = (shown["slider_min"], shown["slider_max"])
    if shown["readout"] != str(k):
        problems.append(
            f"after {after}: the header says {k} / {n} but the slider shows {shown['readout']} (range "
            f"{'..'.join(limits)}); the slider must count images from 1 to {n} like the header"
        )
    elif shown["slider_now"] is not None and float(shown["slider_now"]) != k:
        problems.append(f"after {after}: the slider's handle is at {shown['slider_now']}, the header at {k}")
    elif None not in limits and (float(limits[0]), float(limits[1])) != (1, n):
        problems.append(f"after {after}: the slider runs {'..'.join(limits)}, not 1..{n}")
    return problems


def _sort_problems(page: CaptionBrowserPage, per_image: pd.DataFrame, sort: str) -> list[str]:
    """Choose `sort`: image 1 / n of the new order must show, one whose worst `sort` score (over the models) is the
    lowest in per_image.csv; walking the order with next must then show every image once, worst first."""
    from selenium.webdriver.common.keys import Keys

    worst = per_image.groupby("image_path")[sort].min()
    lowest, n = worst.min(), len(worst)
    shown = page.choose("sort", sort)
    problems = _agreement(shown, n, f"choosing sort {sort!r}")
    if shown["sort"] != sort:
        problems.append(f"the sort menu shows {shown['sort']!r} after choosing {sort!r}")
    if shown["number"] != 1:
        problems.append(
            f"sort {sort!r} shows {shown['header']!r}: it must show image 1 / {n} of the new order"
        )
    if shown["path"] not in worst.index:
        problems.append(f"sort {sort!r} shows {shown['path']!r}, which is not in infer_lab/per_image.csv")
    elif not math.isclose(worst[shown["path"]], lowest, rel_tol=1e-9, abs_tol=1e-12):
        problems.append(
            f"sort {sort!r} shows {shown['path']} first, whose worst {sort} is {worst[shown['path']]:.4f}; the "
            f"lowest over all images is {lowest:.4f} ({', '.join(worst[worst == lowest].index[:3])})"
        )
    if shown["number"] != 1:
        shown = page.slide(Keys.HOME, "Home")
    seen = [shown["path"]]
    for _ in range(n - 1):
        seen.append(page.click("next")["path"])
    values = [worst.get(path, math.nan) for path in seen]
    if sorted(map(str, seen)) != sorted(worst.index):
        problems.append(f"next through sort {sort!r} shows {len(set(seen))} different images of {n}: {seen}")
    elif any(later < earlier - 1e-12 for earlier, later in zip(values, values[1:])):
        problems.append(
            f"sort {sort!r} is not worst first: next through it shows images whose worst {sort} is "
            + ", ".join(f"{v:.3f}" for v in values)
        )
    return problems


# -- re-scoring, the way infer scores ---------------------------------------------------------------------------


class InferScores:
    """Scores a caption of one image as infer.ipynb scored the run's: CIDEr-D with the test set's document
    frequencies (pycocoevalcap on nbutils' tokenisation), CLIPScore and RefCLIPScore with the run's CLIP and
    the image embeddings the notebook cached in infer_lab. Independent of nbutils.reporting.browser."""

    def __init__(self, run: Path, infer_dir: Path):
        import torch

        from nbutils import infer, stages
        from nbutils.data.cache import processor_mean_std
        from nbutils.data.image_embeddings import cached_image_embeddings
        from nbutils.evaluation.caption_metrics import check_tokenization

        summary = json.loads((infer_dir / "summary.json").read_text())
        self.config = infer.InferConfig(
            run_dir=str(run), output_dir=str(infer_dir)
        )  # the notebook's defaults
        self.images = infer.collect_images(self.config)
        self.language = self.images.language or "zh"
        self.tokenization = check_tokenization(self.language, self.config.tokenization or None)
        self.references = dict(zip(self.images.paths, self.images.references or []))
        self.prompt = summary.get("clipscore_prompt") or ""
        self.clip = None
        if summary.get("clipscore_model"):
            bundle = stages.load_trained_clip(run).bundle
            cache = infer.image_cache(self.images, bundle.image_processor, infer_dir / "cache")
            mean, std = processor_mean_std(bundle.image_processor)
            embeddings, _, _ = cached_image_embeddings(
                bundle.model, cache, mean, std, infer_dir / "clip_embeddings", progress=False
            )
            self.clip = (bundle, embeddings, cache, torch)

    def score(self, path: str, caption: str) -> dict:
        from pycocoevalcap.cider.cider import Cider

        from nbutils.evaluation.caption_metrics import tokenize_caption
        from nbutils.evaluation.clipscore import score_captions

        scores = {}
        if path in self.references:
            gts = {
                key: [tokenize_caption(r, self.language, self.tokenization) for r in refs]
                for key, refs in self.references.items()
            }
            res = {key: [tokenize_caption(caption, self.language, self.tokenization)] for key in gts}
            _, per_image = Cider().compute_score(gts, res)  # an image's score: its caption, references and df
            scores["cider"] = float(per_image[list(gts).index(path)])
        if self.clip is not None:
            bundle, embeddings, cache, torch = self.clip
            row = embeddings[torch.as_tensor(cache.index_of([path]))]
            refs = [self.references[path]] if path in self.references else None
            table = score_captions(bundle, row, [caption], refs, prompt=self.prompt)
            scores.update(
                {name: float(table[name].iloc[0]) for name in ("clipscore", "refclipscore") if name in table}
            )
        return scores


def _rescoring_problems(shown: dict, preset: str, scorer: InferScores, scored: set, where: str) -> list[str]:
    """Each row of `shown` must name `preset`; a score beside its caption must be that caption's (to the 2 decimals
    shown) or be marked "not scored". `scored`: the score columns the run has."""
    problems = []
    for row in shown["rows"]:
        label = f"{where}, {row['model']}"
        if row["preset"] != preset:
            problems.append(
                f"{label}: the row shows preset [{row['preset']}], not [{preset}]: {row['text'][:160]!r}"
            )
            continue
        expected = scorer.score(shown["path"], row["caption"])
        for name in sorted(scored):
            if name in row["scores"]:
                if name not in expected:
                    problems.append(
                        f"{label}: shows {name} {row['scores'][name]:.2f}, which cannot be recomputed"
                    )
                elif abs(row["scores"][name] - expected[name]) > SCORE_TOLERANCE:
                    problems.append(
                        f"{label}: shows {name} {row['scores'][name]:.2f} beside the {preset} caption "
                        f"{row['caption'][:60]!r}, which scores {expected[name]:.4f} (a score of another caption, "
                        "e.g. the run's? re-score it or mark it 'not scored')"
                    )
            elif not row["not_scored"]:
                problems.append(f"{label}: shows no {name} and does not say 'not scored': {row['note']!r}")
    return problems


# -- the tests --------------------------------------------------------------------------------------------------


def test_infer_runs_every_cell_in_jupyterlab(notebook, chromium, lab_root):
    state = notebook["state"]
    assert state["errors"] == [], f"run all cells stopped on an error: {state['errors']}"
    assert state["pending"] == 0, f"{state['pending']} code cells did not run: {state}"
    assert notebook["outputs"] == [], f"the page shows stderr or error outputs: {notebook['outputs']}"
    written = (
        sorted(p.name for p in lab_root["infer_lab"].glob("*")) if lab_root["infer_lab"].is_dir() else []
    )
    assert {"per_image.csv", "predictions.csv", "summary.json", "stage.json"} <= set(written), (
        f"the notebook's tables are not in outputs/lab/infer_lab (it has {written})"
    )
    assert _digests(lab_root["run"] / "infer") == lab_root["run_infer"], (
        "the notebook changed outputs/lab/infer, which belongs to the runner-made run (it must write infer_lab)"
    )
    shown = CaptionBrowserPage(chromium.driver).snapshot()
    assert shown["image_loaded"], "the caption browser's image did not load"
    assert shown["rows"], f"the caption browser shows no caption rows: {shown['text'][:300]!r}"


def test_the_header_and_the_slider_agree_while_stepping(page, per_image):
    from selenium.webdriver.common.keys import Keys

    n = per_image["image_path"].nunique()
    problems = []
    shown = page.snapshot()
    problems += _agreement(shown, n, "opening")
    if shown["number"] != 1:
        problems.append(f"the browser opens at {shown['header']!r}, not at image 1 / {n}")
    shown = page.click("next")
    problems += _agreement(shown, n, "clicking next")
    if shown["number"] != 2:
        problems.append(f"next from image 1 shows {shown['header']!r}, not image 2 / {n}")
    shown = page.slide(Keys.END, "End")
    problems += _agreement(shown, n, "moving the slider to its end")
    if shown["number"] != n:
        problems.append(f"moving the slider to its end shows {shown['header']!r}, not image {n} / {n}")
    shown = page.slide(Keys.ARROW_LEFT, "one step left")
    problems += _agreement(shown, n, "moving the slider one step left")
    if shown["number"] != n - 1:
        problems.append(f"one step left from image {n} shows {shown['header']!r}, not image {n - 1} / {n}")
    shown = page.click("previous")
    problems += _agreement(shown, n, "clicking previous")
    shown = page.slide(Keys.HOME, "Home")
    problems += _agreement(shown, n, "moving the slider to its start")
    if shown["number"] != 1:
        problems.append(f"moving the slider to its start shows {shown['header']!r}, not image 1 / {n}")
    assert problems == [], "\n".join(problems)


def test_a_new_preset_recaptions_rescores_and_stays_chosen(page, per_image, lab_root):
    summary = json.loads((lab_root["infer_lab"] / "summary.json").read_text())
    run_preset = summary["decoding"]["given"]
    preset = "greedy" if run_preset != "greedy" else "beam"
    scored = {name for name in SCORES if name in per_image and per_image[name].notna().any()}
    scorer = InferScores(lab_root["run"], lab_root["infer_lab"])
    problems = []

    before = page.snapshot()
    if before["preset"] != run_preset:
        problems.append(
            f"the preset menu starts at {before['preset']!r}, not the run's decoding {run_preset!r}"
        )
    shown = page.choose("preset", preset)
    if shown["preset"] != preset:
        problems.append(f"after choosing {preset!r} the preset menu shows {shown['preset']!r}")
    problems += _rescoring_problems(
        shown, preset, scorer, scored, f"image {shown['header']!r} after choosing {preset}"
    )

    shown = page.click("next")
    if shown["path"] == before["path"]:
        problems.append(f"next after choosing {preset!r} still shows {shown['header']!r}")
    if shown["preset"] != preset:
        problems.append(f"after next the preset menu shows {shown['preset']!r}, not the chosen {preset!r}")
    problems += _rescoring_problems(shown, preset, scorer, scored, f"image {shown['header']!r} after next")
    assert problems == [], "\n".join(problems)


def test_sorting_by_cider_shows_the_worst_image_first(page, per_image):
    problems = _sort_problems(page, per_image, "cider")
    assert problems == [], "\n".join(problems)


def test_sorting_by_clipscore_shows_the_worst_image_first(page, per_image):
    """The same for CLIPScore, whose values differ between images of the tiny run (its worst CIDEr is 0 for all)."""
    if "clipscore" not in per_image or per_image["clipscore"].isna().all():
        pytest.skip("the run has no CLIPScore (no CLIP)")
    problems = _sort_problems(page, per_image, "clipscore")
    assert problems == [], "\n".join(problems)


def test_nothing_left_the_machine_and_the_console_has_no_errors(chromium, notebook):
    outside = chromium.outside()
    assert outside == [], f"requests that left {chromium.origin}: {outside[:10]}"
    assert chromium.websockets(), "no WebSocket to the kernel was seen: the DevTools log is not being read"
    errors = [
        entry["message"]
        for entry in chromium.console()
        if entry["level"] == "SEVERE" and not any(re.search(p, entry["message"]) for p, _ in HARMLESS_CONSOLE)
    ]
    assert errors == [], "console errors:\n" + "\n".join(errors[:20])
