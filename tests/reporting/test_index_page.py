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
    assert '<caption>metrics</caption><tr><td>total</td><td class="n">8</td>' in index  # a nested group
    assert (
        '<td>scaled_total</td><td class="n">24</td>' in index
        and '<td>tag</td><td class="n">007</td>' in index
    )
    assert index.index('<p class="headline">Run ok in ') < index.index("<h1>")  # the run's own sentence
    assert "fixture run &lt;b&gt;" in index  # the profile description, escaped
    assert re.search(r"train_clip <span class=\"status skipped\">", index)
    assert "http://" not in index and "https://" not in index  # self-contained: zip the folder and share


def _entry(name, **kw):
    return {
        "name": name,
        "status": "ok",
        "seconds": 1.25,
        "report": f"{name}.html",
        "executed_notebook": f"{name}.ipynb",
        "summary": f"{name}/summary.json",
        "parameters": {"n": 1},
        "error": None,
        "note": None,
        **kw,
    }


def test_write_index_groups_and_formats_summaries_and_links_relatively(tmp_path):
    run_dir = tmp_path / "r1"
    (run_dir / "nb1" / "figures").mkdir(parents=True)
    (run_dir / "nb1" / "figures" / "loss curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    summary = {
        "headline": "2,810 of 3,000 images downloaded; 190 failed, by kind below.",
        "n": 3000,
        "big": 123456.0,
        "tiny": 0.00001234,
        "loss": 5.0704361,
        "i2t_r1": 77.90262172284645,
        "cider": 2.0112469982439642,
        "ids": [1, 2, 3],
        "name": "<x>",
        "frozen": False,
        "failed_by_kind": {"http_404": 81, "timeout": 4},
        "zero_shot_accuracy": {"colour": 98.6486, "shape": 77.027},
        "zero_shot_chance": {"colour": 12.5, "shape": 20.0},
        "attribute_scores": {
            "hallucination_rate": 49.06,
            "single_object_no_false_statement": 61.04,
            "per_attribute": {
                "colour": {"precision": 94.38, "coverage": 100.0},
                "count": {"precision": None, "coverage": 0.0},
            },
            "n_images": 267,
        },
        "true_captions": {"cider": 2.5413, "held_out": "the first reference of each image"},
        "comparison": [{"mapping": "mlp", "CIDEr": 2.0112}, {"mapping": "transformer", "CIDEr": 1.5}],
    }
    (run_dir / "nb1" / "summary.json").write_text(json.dumps(summary))
    record = {
        "run": "r1",
        "status": "ok",
        "notebooks": [_entry("nb1"), _entry("nb2", summary="nb2/summary.json")],
    }
    (run_dir / "nb2").mkdir()
    (run_dir / "nb2" / "summary.json").write_text("{not json")
    (run_dir / "run.json").write_text(json.dumps(record))
    html = index_page.write_index(run_dir).read_text()

    def row(key, value):
        return f'<tr><td>{key}</td><td class="n">{value}</td></tr>'

    assert '<p class="headline">2,810 of 3,000 images downloaded; 190 failed, by kind below.</p>' in html
    assert "<td>headline</td>" not in html  # shown once, as the sentence
    for key, value in [
        ("n", "3,000"),
        ("big", "123,456.0"),
        ("tiny", "1.234e-05"),
        ("loss", "5.07"),
        ("i2t_r1", "77.9 %"),
        ("cider", "2.011"),
        ("name", "&lt;x&gt;"),
        ("frozen", "no"),
    ]:
        assert row(key, value) in html, key
    assert "<td>ids</td>" not in html  # lists of numbers are not headline figures
    # nested groups: one small table each; alike groups share one table, a column per key
    assert f"<caption>failed_by_kind</caption>{row('http_404', '81')}{row('timeout', '4')}</table>" in html
    assert (
        '<table class="summary"><tr><th></th><th>colour</th><th>shape</th></tr>'
        '<tr><td>zero_shot_accuracy</td><td class="n">98.6 %</td><td class="n">77.0 %</td></tr>'
        '<tr><td>zero_shot_chance</td><td class="n">12.5 %</td><td class="n">20.0 %</td></tr></table>'
    ) in html
    assert (
        f"<caption>attribute_scores</caption>{row('hallucination_rate', '49.1 %')}"
        f"{row('single_object_no_false_statement', '61.0 %')}"
    ) in html
    assert (
        "<caption>attribute_scores › per_attribute</caption><tr><th></th><th>precision</th><th>coverage</th></tr>"
        '<tr><td>colour</td><td class="n">94.4 %</td><td class="n">100.0 %</td></tr>'
        '<tr><td>count</td><td class="n">–</td><td class="n">0.0 %</td></tr>'
    ) in html  # precision over no caption stating the count: null, shown as "–"
    assert f"<caption>true_captions</caption>{row('cider', '2.541')}" in html
    assert row("n_images", "267") in html
    assert (
        "<caption>comparison</caption><tr><th>mapping</th><th>CIDEr</th></tr>"
        '<tr><td class="n">mlp</td><td class="n">2.011</td></tr>'
    ) in html
    assert '<img src="nb1/figures/loss%20curve.png"' in html and "1.2 s" in html
    assert "summary.json unreadable" in html  # nb2's, without breaking the page
    assert (
        '<details><summary>parameters</summary><table class="summary"><tr><td>n</td><td>1</td></tr>' in html
    )
    assert '<a href="../index.html">' not in html  # no runs page next to this run yet
    assert html.index('<p class="headline">Run ok in 2 s: 2 of 2 notebooks ran ok.</p>') < html.index("<h1>")


def test_values_are_formatted_as_the_stage_schema_declares_them():
    """One rule (nbutils.summaries): the notebook's own schema; a notebook outside the pipeline, any stage's."""
    clip = {
        "i2t_r1": 0.3745,
        "chance_loss": 4.852030263919617,
        "learning_rate": 0.002,
        "train_seconds": 209.4,
        "linear_probe_accuracy": {"colour": 98.6},
    }
    html = index_page.summary_tables(clip, "train_clip")
    for key, value in [
        ("i2t_r1", "0.4 %"),
        ("chance_loss", "4.852"),  # a loss, not a percentage
        ("learning_rate", "2.0e-03"),
        ("train_seconds", "3.5 min"),
        ("colour", "98.6 %"),
    ]:
        assert f'<td>{key}</td><td class="n">{value}</td>' in html, key
    infer = {"models": {"m": {"metrics": {"cider": 1.69064}}}, "clipscore": {"m": 1.7468}}
    html = index_page.summary_tables(infer, "infer")
    assert '<td>cider</td><td class="n">1.691</td>' in html and '<td>m</td><td class="n">1.747</td>' in html
    comparison = {
        "comparison": [{"mapping": "mlp", "BLEU-4": 0.46022, "shape precision, single-object (%)": 98.65}]
    }
    html = index_page.summary_tables(comparison, "train_clipcap")
    assert '<td class="n">0.460</td><td class="n">98.7 %</td>' in html
    html = index_page.summary_tables({"mean_recall": 87.29868, "loss": 5.0704361}, None)
    assert '<td class="n">87.3 %</td>' in html and '<td class="n">5.07</td>' in html  # undeclared: 4 digits


def _run(outputs, name, started, status="ok", summaries=None, index=True):
    run_dir = outputs / name
    run_dir.mkdir(parents=True)
    entries = []
    for nb, summary in (summaries or {}).items():
        (run_dir / nb).mkdir()
        (run_dir / nb / "summary.json").write_text(json.dumps(summary))
        entries.append(_entry(nb))
    record = {
        "run": name,
        "profile": "demo",
        "status": status,
        "started_at": started,
        "finished_at": None,
        "description": "<d>",
        "notebooks": entries,
    }
    (run_dir / "run.json").write_text(json.dumps(record))
    if index:
        index_page.write_index(run_dir)
    return run_dir


def test_write_runs_index_lists_every_run_with_its_headline_figures(tmp_path):
    outputs = tmp_path / "outputs"
    _run(
        outputs,
        "demo",
        "2026-12-06T08:38:55+00:00",
        summaries={
            "processdata_01": {"ok": 2810, "failed": 190},
            "processdata_03": {"train_images": 2269, "test_images": 267},
            "train_clip": {
                "i2t_r1": 77.90262,
                "zero_shot_accuracy": {"colour": 98.0, "shape": 77.0, "size": 100.0},
            },
            "train_clipcap": {"cider": 2.0112469982},
            "infer": {"clipscore": {"train_clipcap": 1.7468, "train_encoder_decoder": 1.5}},
        },
    )
    _run(outputs, "older run", "2026-11-01T10:00:00+00:00", status="failed", index=False)
    (outputs / "broken").mkdir()
    (outputs / "broken" / "run.json").write_text("{not json")
    (outputs / "not a run").mkdir()  # no run.json: not listed
    html = index_page.write_runs_index(outputs).read_text()

    assert html.index('<p class="headline">3 runs in this folder: ') < html.index("<h1>")
    assert html.index(">demo<") < html.index(">older run<") < html.index(">broken<")  # newest first
    assert "not a run" not in html and "http" not in html
    assert '<a href="demo/index.html">demo</a>' in html and "older%20run" not in html  # it has no index.html
    demo = re.search(r"<tr><td[^>]*><a href=\"demo/index.html\">.*?</tr>", html).group(0)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", demo)
    columns = ["status", "started", "finished", "profile"] + [t for t, *_ in index_page.HEADLINE_FIGURES]
    shown = dict(zip(columns, cells[1:]))
    assert '<span class="status ok">ok</span>' in shown["status"]
    assert shown["started"] == "2026-12-06 08:38" and shown["finished"] == "–" and shown["profile"] == "demo"
    assert shown["images downloaded"] == "2,810" and shown["download failures"] == "190"
    assert shown["clean images"] == "–" and shown["train / test images"] == "2,269 / 267"
    assert shown["CLIP R@1 image→text"] == "77.9 %" and shown["CLIP zero-shot accuracy (mean)"] == "91.7 %"
    assert shown["encoder-decoder CIDEr"] == "–" and shown["ClipCap CIDEr"] == "2.011"
    assert shown["CLIPScore (best captioner)"] == "1.747"
    broken = re.search(r"<tr><td[^>]*>broken</td>.*?</tr>", html).group(0)
    assert '<span class="status unreadable">unreadable</span>' in broken and "run.json unreadable" in broken
    assert '<span class="status failed">failed</span>' in html
    # a run's own page links back to the runs page once there is one
    assert '<a href="../index.html">all runs</a>' in index_page.write_index(outputs / "demo").read_text()


def test_write_runs_index_of_an_empty_folder(tmp_path):
    html = index_page.write_runs_index(tmp_path).read_text()
    assert "0 runs in this folder." in html and "<th>run</th>" in html


def test_summary_headline(tmp_path):
    (tmp_path / "nb").mkdir()
    assert index_page.summary_headline(tmp_path, "nb") is None
    (tmp_path / "nb" / "summary.json").write_text(json.dumps({"headline": " All good. "}))
    assert index_page.summary_headline(tmp_path, "nb") == "All good."
    (tmp_path / "nb" / "summary.json").write_text("[1]")
    assert index_page.summary_headline(tmp_path, "nb") is None


def test_runner_exports_the_report_functions():
    assert runner.write_index is index_page.write_index and runner.render_report is index_page.render_report
