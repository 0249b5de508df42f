"""The notebook runner end to end: papermill execution, run.json, a failing notebook, the CLI.

Kernel starts are slow, so papermill runs only four times here: one successful two-notebook
run shared by several tests, one failing run, and two CLI runs (the reports of a run are checked
in tests/reporting/test_index_page.py, parameter checks in test_parameters.py). The fixture
notebooks stand in for pipeline notebooks by being copied under pipeline names (echo ->
processdata_01, second -> processdata_02; see `make_workspace` in conftest.py).
"""

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import nbutils
from nbutils import runner
from nbutils.runner import RunFailed

FIXTURES = Path(__file__).parents[1] / "fixtures" / "notebooks"


def echo_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "processdata_01" / "summary.json").read_text())


# ----------------------------------------------------------------------------- one successful run


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, make_workspace):
    root = tmp_path_factory.mktemp("good")
    nb_dir, profile, out = make_workspace(
        root, {"processdata_01": {"lr": 0.5}, "processdata_02": {"scale": 3}, "train_clip": {}}
    )
    record = runner.run_pipeline(
        profile, params=["tag=007", "processdata_01.n_items=4"], notebooks_dir=nb_dir, outputs_dir=out
    )
    return {"record": record, "run_dir": (out / "fx").resolve(), "nb_dir": nb_dir.resolve()}


def test_parameters_injected_exactly_and_typed_by_default(good_run):
    run_dir = good_run["run_dir"]
    entries = {e["name"]: e for e in good_run["record"]["notebooks"]}
    assert entries["processdata_01"]["parameters"] == {
        "run_dir": str(run_dir),
        "output_dir": str(run_dir / "processdata_01"),
        "seed": 7,
        "lr": 0.5,
        "tag": "007",
        "n_items": 4,
    }
    assert entries["processdata_02"]["parameters"] == {
        "run_dir": str(run_dir),
        "output_dir": str(run_dir / "processdata_02"),
        "seed": 7,
        "scale": 3,
    }
    # The notebook itself saw these values, with these types.
    summary = echo_summary(run_dir)
    assert (
        summary["tag"] == "007" and summary["n_items"] == 4 and summary["lr"] == 0.5 and summary["seed"] == 7
    )
    assert summary["run_dir"] == str(run_dir)
    # The second notebook read the first one's output through run_dir: 4 items * 2 * scale 3.
    assert json.loads((run_dir / "processdata_02" / "summary.json").read_text()) == {
        "scaled_total": 24,
        "seed": 7,
    }


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
        ("processdata_01", "ok"),
        ("processdata_02", "ok"),
        ("train_clip", "skipped"),
    ]
    assert "does not exist" in record["notebooks"][2]["note"]
    for e in record["notebooks"][:2]:
        assert e["executed_notebook"] == f"{e['name']}.ipynb" and (run_dir / e["executed_notebook"]).is_file()
        assert e["report"] == f"{e['name']}.html" and e["summary"] == f"{e['name']}/summary.json"
        assert e["error"] is None and e["seconds"] > 0
    assert record["versions"] == {
        "python": platform.python_version(),
        "nbutils": nbutils.__version__,
        **{p: importlib.metadata.version(p) for p in ("torch", "transformers", "papermill")},
    }
    import torch

    assert record["device"] == (
        f"cuda: {torch.cuda.get_device_name(0)}"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    head = subprocess.run(
        ["git", "-C", str(runner.REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    inside = (
        subprocess.run(
            ["git", "-C", str(runner.REPO_DIR), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
        ).returncode
        == 0
    )
    if inside:
        assert set(record["git"]) == {"commit", "dirty"} and isinstance(record["git"]["dirty"], bool)
        assert record["git"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    else:
        assert record["git"] is None


def test_warnings_and_library_messages_go_to_a_log_linked_from_the_report(good_run):
    """echo.ipynb warns and logs like a library: both land in processdata_01.log, beside the executed notebook."""
    run_dir = good_run["run_dir"]
    executed = nbformat.read(run_dir / "processdata_01.ipynb", as_version=4)
    streams = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "stream"]
    assert [o.name for o in streams] == ["stdout"] and "echo output visible" in streams[0].text
    log = (run_dir / "processdata_01.log").read_text()
    assert "UserWarning: echo library warning" in log and "echo library record" in log
    assert "echo output visible" not in log
    first, second, _ = good_run["record"]["notebooks"]
    assert first["log"] == "processdata_01.log"
    assert second["log"] is None and not (run_dir / "processdata_02.log").exists()  # nothing written, no file
    assert (
        '<a href="processdata_01.log">processdata_01.log</a>' in (run_dir / "processdata_01.html").read_text()
    )
    assert ".log" not in (run_dir / "processdata_02.html").read_text()


def test_a_kernel_being_shut_down_is_interrupted_only_while_a_cell_runs():
    """jupyter_client interrupts before a shutdown; an idle kernel's ipykernel would log a KeyboardInterrupt."""
    import asyncio

    from nbutils.runner.execute import KERNEL_NAME, _this_interpreter_kernel_manager

    manager_class = _this_interpreter_kernel_manager()
    manager = manager_class(kernel_name=KERNEL_NAME)
    manager.shutting_down = True
    try:
        manager_class.cell_finished(cell=None, cell_index=0, execute_reply=None)
        asyncio.run(manager._async_interrupt_kernel())  # left alone: no signal, so no complaint either
        manager_class.cell_started(cell=None, cell_index=0)
        with pytest.raises(RuntimeError, match="No kernel is running"):  # it tried to signal the kernel
            asyncio.run(manager._async_interrupt_kernel())
    finally:
        manager_class.cell_finished()


# ----------------------------------------------------------------------------- failure


def test_failing_notebook_stops_the_pipeline(tmp_path, make_workspace):
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
    assert first["error"] == {
        "cell_index": failing,
        "exec_count": 4,
        "ename": "ValueError",
        "evalue": "n_items must be >= 0, got -1",
    }
    assert second["status"] == "skipped" and second["note"] == "not run: processdata_01 failed"
    index = (run_dir / "index.html").read_text()
    assert 'class="status failed"' in index and "n_items must be &gt;= 0, got -1" in index


# ----------------------------------------------------------------------------- command line


def cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "nbutils", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_cli_help():
    result = cli("run", "--help", cwd=runner.REPO_DIR)
    assert result.returncode == 0
    for flag in ["--profile", "--only", "-p KEY=VALUE", "--run NAME", "--notebooks-dir", "--outputs-dir"]:
        assert flag in result.stdout


def test_cli_run_keeps_earlier_entries_and_prints_the_report(tmp_path, make_workspace):
    nb_dir, profile, out = make_workspace(tmp_path, {"processdata_01": {}, "processdata_02": {}})
    # An earlier invocation of the same run finished processdata_02; `--only processdata_01` keeps it.
    earlier = {
        "profile": "fixture_profile",
        "notebooks": [
            {
                "name": "processdata_02",
                "status": "ok",
                "seconds": 1.0,
                "report": "processdata_02.html",
                "summary": None,
            }
        ],
    }
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "run.json").write_text(json.dumps(earlier))
    result = cli(
        "run",
        "--profile",
        profile,
        "--only",
        "processdata_01",
        "-p",
        "n_items=2",
        "--run",
        "mine",
        "--notebooks-dir",
        nb_dir,
        "--outputs-dir",
        out,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "Report: outputs/mine/index.html"
    record = json.loads((out / "mine" / "run.json").read_text())
    assert record["status"] == "ok" and record["run"] == "mine"
    assert record["command"][:4] == ["python", "-m", "nbutils", "run"] and "n_items=2" in record["command"]
    first, second = record["notebooks"]
    assert first["status"] == "ok" and first["parameters"]["n_items"] == 2
    assert second == {**earlier["notebooks"][0], "carried_over": True}
    assert echo_summary(out / "mine")["metrics"] == {"total": 4}


def test_cli_failure_and_bad_parameter_exit_codes(tmp_path, make_workspace):
    nb_dir, profile, out = make_workspace(tmp_path, {"processdata_01": {}, "processdata_02": {}})
    args = ["run", "--profile", profile, "--notebooks-dir", nb_dir, "--outputs-dir", out]
    bad = cli(*args, "-p", "n_itmes=2", cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'n_items'" in bad.stderr and "Traceback" not in bad.stderr
    assert not out.exists()
    failed = cli(*args, "-p", "processdata_01.n_items=-3", cwd=tmp_path)
    assert failed.returncode == 1
    assert (
        "processdata_01 failed in cell" in failed.stderr and "n_items must be >= 0, got -3" in failed.stderr
    )
    assert "Traceback" not in failed.stderr
    assert json.loads((out / "fx" / "run.json").read_text())["status"] == "failed"


# ----------------------------------------------------------------------------- notebooks at once


def _timing_notebook(path) -> None:
    """A notebook that holds its kernel for `hold` seconds and records when, and with which thread cap."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell('run_dir = ""\noutput_dir = ""\nseed = 0\nhold = 2.0')
    parameters.metadata["tags"] = ["parameters"]
    body = (
        "import os, time\nfrom nbutils.files import write_summary\nstart = time.time()\ntime.sleep(hold)\n"
        'write_summary(output_dir, {"start": start, "end": time.time(), "omp": os.environ.get("OMP_NUM_THREADS")})'
    )
    nb.cells = [parameters, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, str(path))


def test_kernel_threads_share_the_cores_between_notebooks_that_may_run_together(monkeypatch):
    from nbutils.runner.execute import _kernel_threads
    from nbutils.runner.profiles import PIPELINE

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    threads = _kernel_threads(list(PIPELINE), jobs=2)
    # the two trainings that read only processdata_03, and ClipCap, which may run beside the encoder-decoder
    assert {nb for nb, n in threads.items() if n} == {"train_clip", "train_encoder_decoder", "train_clipcap"}
    assert (
        threads["train_clip"] == 1 and threads["infer"] is None
    )  # infer reads every training: alone, all cores
    assert _kernel_threads(list(PIPELINE), jobs=1) == dict.fromkeys(PIPELINE)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert _kernel_threads(["train_clip", "train_encoder_decoder"], jobs=2) == {
        "train_clip": 8,
        "train_encoder_decoder": 8,
    }
    assert _kernel_threads(["processdata_03", "train_clip"], jobs=2) == dict.fromkeys(
        ["processdata_03", "train_clip"]
    )


@pytest.mark.parametrize("jobs", [1, 2])
def test_independent_notebooks_run_at_once_with_jobs(tmp_path, make_workspace, monkeypatch, jobs):
    nb_dir, _, outputs = make_workspace(tmp_path, {})
    for nb in ("train_clip", "train_encoder_decoder"):  # both read only processdata_03 (fingerprints.READS)
        _timing_notebook(nb_dir / f"{nb}.ipynb")
    profile = tmp_path / "two.yaml"
    profile.write_text("run: two\nnotebooks:\n  train_clip: {}\n  train_encoder_decoder: {}\n")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    record = runner.run_pipeline(profile, notebooks_dir=nb_dir, outputs_dir=outputs, jobs=jobs)
    assert [e["status"] for e in record["notebooks"]] == ["ok", "ok"]
    a, b = (
        json.loads((outputs / "two" / nb / "summary.json").read_text())
        for nb in ("train_clip", "train_encoder_decoder")
    )
    overlap = min(a["end"], b["end"]) - max(a["start"], b["start"])
    if jobs == 2:
        assert overlap > 1.0, (a, b)  # both kernels held their 2 s at the same time
        assert a["omp"] == b["omp"] == "1"  # one core each of the two
        assert [e["threads"] for e in record["notebooks"]] == [1, 1]
    else:
        assert overlap < 0 and a["omp"] is None and b["omp"] is None


def test_jobs_must_be_positive(tmp_path, make_workspace):
    nb_dir, profile, outputs = make_workspace(tmp_path, {"processdata_01": {}})
    with pytest.raises(runner.ParameterError, match="jobs=0"):
        runner.run_pipeline(profile, notebooks_dir=nb_dir, outputs_dir=outputs, jobs=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs: two\nnotebooks:\n  processdata_01: {}\n")
    with pytest.raises(runner.ParameterError, match="jobs 'two' must be a whole number"):
        runner.load_profile(bad)


def test_a_notebook_starts_once_what_it_reads_has_finished():
    from nbutils.runner.execute import _inputs_finished
    from nbutils.runner.profiles import PIPELINE

    selected = list(PIPELINE)
    finished = {"processdata_01", "processdata_02", "processdata_03"}
    assert _inputs_finished("train_clip", selected, finished)
    assert _inputs_finished("train_encoder_decoder", selected, finished)  # beside train_clip
    assert not _inputs_finished("train_clipcap", selected, finished)  # reads train_clip's model
    assert _inputs_finished("train_clipcap", selected, finished | {"train_clip"})
    assert not _inputs_finished("infer", selected, finished | {"train_clip", "train_clipcap"})
    almost = set(selected) - {"infer", "analyze_loss"}
    assert _inputs_finished("infer", selected, almost)
    assert not _inputs_finished("analyze_loss", selected, almost)  # it sums up the run: after every other one
    assert _inputs_finished(
        "train_clipcap", ["train_clipcap"], set()
    )  # a stage not selected is read as it is
