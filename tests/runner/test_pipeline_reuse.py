"""Stage reuse on the real pipeline (the tiny profile's run of all eight notebooks, tests/conftest.py).

No stage may touch what an earlier stage wrote (else a rerun would redo everything after it), and the readers
of a stage (READS in nbutils/runner/fingerprints.py) must be exactly the notebooks that rerun when it changes.
"""

import os

from nbutils import runner


def _by_name(record: dict) -> dict:
    return {e["name"]: e for e in record["notebooks"]}


def _executed_mtimes(run_dir) -> dict:
    return {p.stem: os.stat(p).st_mtime_ns for p in run_dir.glob("*.ipynb")}


def test_a_rerun_with_nothing_changed_reuses_every_stage(tiny_pipeline_run, capsys):
    assert tiny_pipeline_run["failure"] is None, tiny_pipeline_run["failure"]
    run_dir = tiny_pipeline_run["run_dir"]
    before = _executed_mtimes(run_dir)
    assert set(before) == set(runner.PIPELINE)
    capsys.readouterr()
    record = tiny_pipeline_run["run"]()
    entries = _by_name(record)
    assert record["status"] == "ok"
    assert {nb: e["reused"] for nb, e in entries.items()} == dict.fromkeys(runner.PIPELINE, True)
    assert _executed_mtimes(run_dir) == before  # no notebook ran
    out = capsys.readouterr().out
    assert out.count(": reused: unchanged since") == len(runner.PIPELINE) and "running" not in out


def test_a_changed_train_clipcap_parameter_reruns_train_clipcap_infer_and_analyze_loss_only(
    tiny_pipeline_run,
):
    run_dir = tiny_pipeline_run["run_dir"]
    before = _executed_mtimes(run_dir)
    record = tiny_pipeline_run["run"]("train_clipcap.max_steps=4")
    entries = _by_name(record)
    assert record["status"] == "ok"
    rerun = {"train_clipcap", "infer", "analyze_loss"}
    assert {nb for nb, e in entries.items() if not e["reused"]} == rerun
    assert entries["train_clipcap"]["reason"] == "parameters changed (max_steps)"
    assert entries["infer"]["reason"] == "train_clipcap ran again"
    assert "train_clipcap ran again" in entries["analyze_loss"]["reason"]
    after = _executed_mtimes(run_dir)
    assert {nb for nb in before if after[nb] != before[nb]} == rerun
