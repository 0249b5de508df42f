"""The run's report: each executed notebook as HTML with the code hidden, and index.html linking them all.

One real two-notebook run (the runner's fixture notebooks under pipeline names, as in
tests/runner/) gives the reports and the index page; write_index is also checked on a hand-made run.json.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from nbutils import runner
from nbutils.reporting import index_page

FIXTURES = Path(__file__).parents[1] / "fixtures" / "notebooks"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """echo as processdata_01 and second as processdata_02, through the runner; train_clip listed, absent."""
    root = tmp_path_factory.mktemp("good")
    nb_dir = root / "notebooks"
    nb_dir.mkdir()
    shutil.copy(FIXTURES / "echo.ipynb", nb_dir / "processdata_01.ipynb")
    shutil.copy(FIXTURES / "second.ipynb", nb_dir / "processdata_02.ipynb")
    profile = root / "fixture_profile.yaml"
    notebooks = {"processdata_01": {"lr": 0.5}, "processdata_02": {"scale": 3}, "train_clip": {}}
    profile.write_text(
        yaml.safe_dump(
            {"description": "fixture run <b>", "run": "fx", "common": {"seed": 7}, "notebooks": notebooks}
        )
    )
    record = runner.run_pipeline(
        profile,
        params=["tag=007", "processdata_01.n_items=4"],
        notebooks_dir=nb_dir,
        outputs_dir=root / "outputs",
    )
    return {"record": record, "run_dir": (root / "outputs" / "fx").resolve(), "nb_dir": nb_dir.resolve()}


def test_reports_hide_code_and_index_shows_headlines(good_run):
    run_dir = good_run["run_dir"]
    report = (run_dir / "processdata_01.html").read_text()
    assert "hidden-code-marker" not in report and "write_summary" not in report  # code cells are hidden
    assert "echo output visible" in report and "Echo fixture" in report  # outputs and markdown are not
    index = (run_dir / "index.html").read_text()
    for href in [
        "processdata_01.html",
        "processdata_02.html",
        "processdata_01.ipynb",
        "processdata_01/figures/curve.png",
    ]:
        assert f'"{href}"' in index and (run_dir / href).is_file()
    assert '<img src="processdata_01/figures/curve.png"' in index
    assert "<td>metrics.total</td><td>8</td>" in index and "<td>scaled_total</td><td>24</td>" in index
    assert "<td>tag</td><td>007</td>" in index
    assert "fixture run &lt;b&gt;" in index  # the profile description, escaped
    assert re.search(r"train_clip <span class=\"status skipped\">", index)
    assert "http://" not in index and "https://" not in index  # self-contained: zip the folder and share


def test_write_index_flattens_summaries_and_links_relatively(tmp_path):
    run_dir = tmp_path / "r1"
    (run_dir / "nb1" / "figures").mkdir(parents=True)
    (run_dir / "nb1" / "figures" / "loss curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run_dir / "nb1" / "summary.json").write_text(
        json.dumps(
            {
                "recall": {"i2t": {"r1": 0.123456}},
                "n": 3000,
                "big": 123456.0,
                "tiny": 0.00001234,
                "ids": [1, 2, 3],
                "name": "<x>",
            }
        )
    )
    entry = {
        "name": "nb1",
        "status": "ok",
        "seconds": 1.25,
        "report": "nb1.html",
        "executed_notebook": "nb1.ipynb",
        "summary": "nb1/summary.json",
        "parameters": {"n": 1},
        "error": None,
        "note": None,
    }
    (run_dir / "run.json").write_text(json.dumps({"run": "r1", "status": "ok", "notebooks": [entry]}))
    html = index_page.write_index(run_dir).read_text()
    assert "<td>recall.i2t.r1</td><td>0.1235</td>" in html
    assert "<td>n</td><td>3000</td>" in html and "<td>big</td><td>123,456.0</td>" in html
    assert "<td>tiny</td><td>1.234e-05</td>" in html and "<td>name</td><td>&lt;x&gt;</td>" in html
    assert "<td>ids</td>" not in html  # lists are not headline numbers
    assert '<img src="nb1/figures/loss%20curve.png"' in html and "1.2 s" in html


def test_runner_exports_the_report_functions():
    assert runner.write_index is index_page.write_index and runner.render_report is index_page.render_report
