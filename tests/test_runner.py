"""The notebook runner: profiles, parameter checks, papermill execution, reports, CLI.

Kernel starts are slow, so papermill runs only five times here: one successful two-notebook
run shared by several tests, one failing run, and two CLI runs. Everything else is checked
without a kernel. The fixture notebooks stand in for pipeline notebooks by being copied under
pipeline names (echo -> processdata_01, second -> processdata_02).
"""

import importlib.metadata
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

import nbutils
from nbutils import runner
from nbutils.runner import ParameterError, RunFailed

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"
ECHO_DECLARED = ["run_dir", "output_dir", "seed", "tag", "n_items", "lr"]


def make_workspace(root: Path, notebooks: dict, common=None, run="fx") -> tuple[Path, Path, Path]:
    """Notebooks dir with the fixtures under pipeline names, a profile, and an outputs dir."""
    nb_dir = root / "notebooks"
    nb_dir.mkdir(parents=True)
    shutil.copy(FIXTURES / "echo.ipynb", nb_dir / "processdata_01.ipynb")
    shutil.copy(FIXTURES / "second.ipynb", nb_dir / "processdata_02.ipynb")
    profile = root / "fixture_profile.yaml"
    profile.write_text(yaml.safe_dump({"description": "fixture run <b>", "run": run,
                                       "common": common if common is not None else {"seed": 7},
                                       "notebooks": notebooks}))
    return nb_dir, profile, root / "outputs"


def echo_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "processdata_01" / "summary.json").read_text())


# ----------------------------------------------------------------------------- one successful run

@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    nb_dir, profile, out = make_workspace(root, {"processdata_01": {"lr": 0.5}, "processdata_02": {"scale": 3},
                                                 "train_clip": {}})
    record = runner.run_pipeline(profile, params=["tag=007", "processdata_01.n_items=4"],
                                 notebooks_dir=nb_dir, outputs_dir=out)
    return {"record": record, "run_dir": (out / "fx").resolve(), "nb_dir": nb_dir.resolve()}


def test_parameters_injected_exactly_and_typed_by_default(good_run):
    run_dir = good_run["run_dir"]
    entries = {e["name"]: e for e in good_run["record"]["notebooks"]}
    assert entries["processdata_01"]["parameters"] == {
        "run_dir": str(run_dir), "output_dir": str(run_dir / "processdata_01"),
        "seed": 7, "lr": 0.5, "tag": "007", "n_items": 4}
    assert entries["processdata_02"]["parameters"] == {
        "run_dir": str(run_dir), "output_dir": str(run_dir / "processdata_02"), "seed": 7, "scale": 3}
    # The notebook itself saw these values, with these types.
    summary = echo_summary(run_dir)
    assert summary["tag"] == "007" and summary["n_items"] == 4 and summary["lr"] == 0.5 and summary["seed"] == 7
    assert summary["run_dir"] == str(run_dir)
    # The second notebook read the first one's output through run_dir: 4 items * 2 * scale 3.
    assert json.loads((run_dir / "processdata_02" / "summary.json").read_text()) == {"scaled_total": 24, "seed": 7}


def test_kernel_is_this_interpreter_in_the_notebooks_dir(good_run):
    summary = echo_summary(good_run["run_dir"])
    assert summary["python"] == sys.executable
    assert summary["cwd"] == str(good_run["nb_dir"])


def test_run_json_records_the_run(good_run):
    record, run_dir = good_run["record"], good_run["run_dir"]
    assert json.loads((run_dir / "run.json").read_text()) == record
    assert record["run"] == "fx" and record["profile"] == "fixture_profile" and record["status"] == "ok"
    assert record["seed"] == 7
    assert record["started_at"] <= record["finished_at"]
    assert [(e["name"], e["status"]) for e in record["notebooks"]] == [
        ("processdata_01", "ok"), ("processdata_02", "ok"), ("train_clip", "skipped")]
    assert "does not exist" in record["notebooks"][2]["note"]
    for e in record["notebooks"][:2]:
        assert e["executed_notebook"] == f"{e['name']}.ipynb" and (run_dir / e["executed_notebook"]).is_file()
        assert e["report"] == f"{e['name']}.html" and e["summary"] == f"{e['name']}/summary.json"
        assert e["error"] is None and e["seconds"] > 0
    assert record["versions"] == {"python": platform.python_version(), "nbutils": nbutils.__version__,
                                  **{p: importlib.metadata.version(p) for p in ("torch", "transformers", "papermill")}}
    import torch
    assert record["device"] == (f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else
                                "mps" if torch.backends.mps.is_available() else "cpu")
    head = subprocess.run(["git", "-C", str(runner.REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True)
    inside = subprocess.run(["git", "-C", str(runner.REPO_DIR), "rev-parse", "--is-inside-work-tree"],
                            capture_output=True, text=True).returncode == 0
    if inside:
        assert set(record["git"]) == {"commit", "dirty"} and isinstance(record["git"]["dirty"], bool)
        assert record["git"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    else:
        assert record["git"] is None


def test_reports_hide_code_and_index_shows_headlines(good_run):
    run_dir = good_run["run_dir"]
    report = (run_dir / "processdata_01.html").read_text()
    assert "hidden-code-marker" not in report and "write_summary" not in report  # code cells are hidden
    assert "echo output visible" in report and "Echo fixture" in report       # outputs and markdown are not
    index = (run_dir / "index.html").read_text()
    for href in ["processdata_01.html", "processdata_02.html", "processdata_01.ipynb",
                 "processdata_01/figures/curve.png"]:
        assert f'"{href}"' in index and (run_dir / href).is_file()
    assert '<img src="processdata_01/figures/curve.png"' in index
    assert "<td>metrics.total</td><td>8</td>" in index and "<td>scaled_total</td><td>24</td>" in index
    assert "<td>tag</td><td>007</td>" in index
    assert "fixture run &lt;b&gt;" in index                        # the profile description, escaped
    assert re.search(r"train_clip <span class=\"status skipped\">", index)
    assert "http://" not in index and "https://" not in index    # self-contained: zip the folder and share


# ----------------------------------------------------------------------------- failure

def test_failing_notebook_stops_the_pipeline(tmp_path):
    nb_dir, profile, out = make_workspace(tmp_path, {"processdata_01": {"n_items": -1}, "processdata_02": {}})
    with pytest.raises(RunFailed) as info:
        runner.run_pipeline(profile, notebooks_dir=nb_dir, outputs_dir=out)
    source = nbformat.read(FIXTURES / "echo.ipynb", as_version=4)
    # papermill's index counts the injected-parameters cell it adds after the parameters cell.
    failing = next(i for i, c in enumerate(source.cells) if "raise ValueError" in c.source) + 1
    run_dir = out / "fx"
    message = str(info.value)
    assert f"processdata_01 failed in cell {failing}" in message
    assert "ValueError: n_items must be >= 0, got -1" in message
    assert str(run_dir / "processdata_01.ipynb") in message

    executed = nbformat.read(run_dir / "processdata_01.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert [(o.ename, o.evalue) for o in errors] == [("ValueError", "n_items must be >= 0, got -1")]
    assert (run_dir / "processdata_01.html").is_file()
    assert not (run_dir / "processdata_02.ipynb").exists() and not (run_dir / "processdata_02").exists()

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["finished_at"]
    first, second = record["notebooks"]
    assert first["status"] == "failed" and first["summary"] is None
    assert first["error"] == {"cell_index": failing, "exec_count": 4, "ename": "ValueError",
                              "evalue": "n_items must be >= 0, got -1"}
    assert second["status"] == "skipped" and second["note"] == "not run: processdata_01 failed"
    index = (run_dir / "index.html").read_text()
    assert 'class="status failed"' in index and "n_items must be &gt;= 0, got -1" in index


# ----------------------------------------------------------------------------- bad input, nothing runs

BAD_INPUTS = [
    ({"common": {"sed": 1}}, {}, ["profile common.sed", "did you mean 'seed'"]),
    ({"notebooks": {"processdata_01": {"n_item": 3}}}, {},
     ["processdata_01 has no parameter 'n_item'", "did you mean 'n_items'", "declared: " + ", ".join(ECHO_DECLARED)]),
    ({"notebooks": {"processdata_01": {"run_dir": "/elsewhere"}}}, {}, ["run_dir is set by the runner"]),
    ({"notebooks": {"processdata_01": {"n_items": "three"}}}, {}, ["n_items", "expected int", "'three'"]),
    ({"notebooks": {"processdata_1": {}}}, {},
     ["'processdata_1' is not in the pipeline", "did you mean 'processdata_01'"]),
    ({}, {"params": ["bogus=1"]}, ["-p bogus=1", "no selected notebook", "declares 'bogus'"]),
    ({}, {"params": ["processdata_02.tag=x"]}, ["-p processdata_02.tag=x", "processdata_02 has no parameter 'tag'"]),
    ({}, {"params": ["n_items=abc"]}, ["-p n_items=abc", "expected int"]),
    ({}, {"params": ["lr=[1, 2"]}, ["-p lr=[1, 2", "cannot parse"]),
    ({}, {"params": ["processdata_02.scale=2"], "only": "processdata_01"}, ["processdata_02 is not selected"]),
    ({}, {"only": "processdata_1"}, ["--only processdata_1", "did you mean 'processdata_01'"]),
    ({}, {"only": "train_clip"}, ["--only train_clip", "does not exist"]),
    ({}, {"only": "processdata_03,processdata_01"}, ["--only processdata_03", "does not exist"]),
    ({"notebooks": {"processdata_01": {}}}, {"only": "processdata_02"}, ["profile fixture_profile has no entry"]),
]


@pytest.mark.parametrize("profile_changes, kwargs, expected", BAD_INPUTS)
def test_bad_input_fails_before_anything_runs(tmp_path, profile_changes, kwargs, expected):
    notebooks = profile_changes.get("notebooks", {"processdata_01": {}, "processdata_02": {}})
    nb_dir, profile, out = make_workspace(tmp_path, notebooks, common=profile_changes.get("common"))
    with pytest.raises(ParameterError) as info:
        runner.run_pipeline(profile, notebooks_dir=nb_dir, outputs_dir=out, **kwargs)
    for text in expected:
        assert text in str(info.value)
    assert not out.exists()  # no run folder: nothing was executed or written


def test_unknown_profile_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ParameterError) as info:
        runner.run_pipeline("dem", outputs_dir=tmp_path / "out")
    assert "unknown profile 'dem'" in str(info.value) and "did you mean 'demo'" in str(info.value)
    assert "coco_en, demo, flickr30k_cn" in str(info.value)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- pure parts

def test_notebook_parameters_reads_lines_papermill_skips():
    declared = runner.notebook_parameters(FIXTURES / "echo.ipynb")
    assert list(declared) == ECHO_DECLARED
    assert declared["tag"] == '"default"' and declared["n_items"] == "3" and declared["lr"] == "0.001"
    # papermill.inspect_notebook drops lines whose comment holds an '=' but agrees on the rest.
    reference = {k: v["default"] for k, v in papermill.inspect_notebook(str(FIXTURES / "echo.ipynb")).items()}
    assert {"tag", "n_items"} - set(reference) == {"tag", "n_items"}
    assert all(declared[k] == v for k, v in reference.items())


def _declared():
    return {"a": {"run_dir": '""', "output_dir": '""', "seed": "0", "name": '"x"', "n": "3", "lr": "0.1",
                  "flag": "False", "sizes": "[1, 2]"},
            "b": {"run_dir": '""', "output_dir": '""', "seed": "0", "n": "3"}}


def test_resolve_parameters_precedence_and_typing():
    injected = {nb: {"run_dir": "/r", "output_dir": f"/r/{nb}"} for nb in "ab"}
    out = runner.resolve_parameters(
        _declared(), ["a", "b"], common={"seed": 1, "n": 5, "name": "from-common"},
        per_notebook={"a": {"n": 6, "lr": "1e-4"}},
        overrides=["a.n=8", "n=7", "name=007", "flag=true", "sizes=[3, 4]", "lr=2"], injected=injected)
    assert out == {"a": {"run_dir": "/r", "output_dir": "/r/a", "seed": 1, "n": 8, "name": "007", "lr": 2.0,
                         "flag": True, "sizes": [3, 4]},
                   "b": {"run_dir": "/r", "output_dir": "/r/b", "seed": 1, "n": 7}}
    assert isinstance(out["a"]["lr"], float)
    # PyYAML reads 1e-4 as a string; a float default turns it back into a number.
    only_profile = runner.resolve_parameters(_declared(), ["a"], per_notebook={"a": {"lr": "1e-4"}})
    assert only_profile == {"a": {"lr": 1e-4}}
    # A mapping of overrides is taken as typed values.
    typed = runner.resolve_parameters(_declared(), ["a"], overrides={"a.name": "y", "n": 2})
    assert typed == {"a": {"name": "y", "n": 2}}


def test_resolve_parameters_checks_unselected_entries_and_collects_every_problem():
    with pytest.raises(ParameterError) as info:
        runner.resolve_parameters(_declared(), ["a"], common={"nn": 1}, per_notebook={"b": {"lr": 0.1}},
                                  overrides=["flag=maybe"])
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert "common.nn" in lines[0] and "did you mean 'n'" in lines[0]
    assert "b has no parameter 'lr'" in lines[1]
    assert "-p flag=maybe" in lines[2] and "expected bool" in lines[2]
    with pytest.raises(ParameterError, match="does not declare 'run_dir'"):
        runner.resolve_parameters({"c": {"seed": "0"}}, ["c"], injected={"c": {"run_dir": "/r", "output_dir": "/r/c"}})


def test_shipped_profiles_match_the_notebooks_that_exist():
    demo = runner.load_profile("demo")
    assert list(demo["notebooks"]) == runner.PIPELINE
    # The demo chains the data notebooks: generated set -> faulty server -> download -> validate -> split.
    assert [demo["notebooks"][nb]["source"] for nb in ("processdata_01", "processdata_02", "processdata_03")] \
        == ["demo", "processdata_01", "processdata_02"]
    assert demo["notebooks"]["processdata_01"]["n_images"] == 3000
    pd03 = {"run_dir", "output_dir", "seed", "source", "input_format", "images_root", "language", "n_images",
            "image_size", "image_processor", "val_fraction", "test_fraction", "small_train_images",
            "small_test_images", "cache_dir", "num_workers", "max_caption_chars"}
    existing = [nb for nb in runner.PIPELINE if (runner.NOTEBOOKS_DIR / f"{nb}.ipynb").is_file()]
    declared = {nb: runner.notebook_parameters(runner.NOTEBOOKS_DIR / f"{nb}.ipynb") for nb in existing}
    for name in ("demo", "flickr30k_cn", "coco_en"):
        profile = runner.load_profile(name)
        assert profile["run"] == name and profile["description"]
        assert set(profile["notebooks"]["processdata_03"]) <= pd03
        selected = [nb for nb in existing if nb in profile["notebooks"]]
        injected = {nb: {"run_dir": "/r", "output_dir": f"/r/{nb}"} for nb in selected}
        if selected:  # raises on any name a notebook does not declare
            runner.resolve_parameters({nb: declared[nb] for nb in selected}, selected, profile["common"],
                                      profile["notebooks"], injected=injected)


def test_write_index_flattens_summaries_and_links_relatively(tmp_path):
    run_dir = tmp_path / "r1"
    (run_dir / "nb1" / "figures").mkdir(parents=True)
    (run_dir / "nb1" / "figures" / "loss curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run_dir / "nb1" / "summary.json").write_text(json.dumps(
        {"recall": {"i2t": {"r1": 0.123456}}, "n": 3000, "big": 123456.0, "tiny": 0.00001234,
         "ids": [1, 2, 3], "name": "<x>"}))
    entry = {"name": "nb1", "status": "ok", "seconds": 1.25, "report": "nb1.html", "executed_notebook": "nb1.ipynb",
             "summary": "nb1/summary.json", "parameters": {"n": 1}, "error": None, "note": None}
    (run_dir / "run.json").write_text(json.dumps({"run": "r1", "status": "ok", "notebooks": [entry]}))
    html = runner.write_index(run_dir).read_text()
    assert "<td>recall.i2t.r1</td><td>0.1235</td>" in html
    assert "<td>n</td><td>3000</td>" in html and "<td>big</td><td>123,456.0</td>" in html
    assert "<td>tiny</td><td>1.234e-05</td>" in html and "<td>name</td><td>&lt;x&gt;</td>" in html
    assert "<td>ids</td>" not in html  # lists are not headline numbers
    assert '<img src="nb1/figures/loss%20curve.png"' in html and "1.2 s" in html


# ----------------------------------------------------------------------------- command line

def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nbutils", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_cli_help():
    result = cli("run", "--help", cwd=runner.REPO_DIR)
    assert result.returncode == 0
    for flag in ["--profile", "--only", "-p KEY=VALUE", "--run NAME", "--notebooks-dir", "--outputs-dir"]:
        assert flag in result.stdout


def test_cli_run_keeps_earlier_entries_and_prints_the_report(tmp_path):
    nb_dir, profile, out = make_workspace(tmp_path, {"processdata_01": {}, "processdata_02": {}})
    # An earlier invocation of the same run finished processdata_02; `--only processdata_01` keeps it.
    earlier = {"profile": "fixture_profile", "notebooks": [{"name": "processdata_02", "status": "ok", "seconds": 1.0,
                                                            "report": "processdata_02.html", "summary": None}]}
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "run.json").write_text(json.dumps(earlier))
    result = cli("run", "--profile", profile, "--only", "processdata_01", "-p", "n_items=2", "--run", "mine",
                 "--notebooks-dir", nb_dir, "--outputs-dir", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "Report: outputs/mine/index.html"
    record = json.loads((out / "mine" / "run.json").read_text())
    assert record["status"] == "ok" and record["run"] == "mine"
    assert record["command"][:4] == ["python", "-m", "nbutils", "run"] and "n_items=2" in record["command"]
    first, second = record["notebooks"]
    assert first["status"] == "ok" and first["parameters"]["n_items"] == 2
    assert second == {**earlier["notebooks"][0], "carried_over": True}
    assert echo_summary(out / "mine")["metrics"] == {"total": 4}


def test_cli_failure_and_bad_parameter_exit_codes(tmp_path):
    nb_dir, profile, out = make_workspace(tmp_path, {"processdata_01": {}, "processdata_02": {}})
    args = ["run", "--profile", profile, "--notebooks-dir", nb_dir, "--outputs-dir", out]
    bad = cli(*args, "-p", "n_itmes=2", cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'n_items'" in bad.stderr and "Traceback" not in bad.stderr
    assert not out.exists()
    failed = cli(*args, "-p", "processdata_01.n_items=-3", cwd=tmp_path)
    assert failed.returncode == 1
    assert "processdata_01 failed in cell" in failed.stderr and "n_items must be >= 0, got -3" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert json.loads((out / "fx" / "run.json").read_text())["status"] == "failed"
