"""Stage reuse: a rerun skips every notebook whose fingerprint is unchanged, and reruns exactly what changed.

The fixture notebooks stand in for two pipeline stages: echo -> processdata_01, second -> processdata_02 (which
reads processdata_01's summary). One workspace serves the whole sequence, as a user's run folder would: each test
step starts from the state the previous one left, so the module runs in order.
"""

import json
import os

import pytest

from nbutils import runner
from nbutils.runner import ParameterError, fingerprints


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_workspace):
    root = tmp_path_factory.mktemp("reuse")
    nb_dir, profile, out = make_workspace(root, {"processdata_01": {"n_items": 2}, "processdata_02": {}})

    def run(*params, capsys=None, **kwargs):
        record = runner.run_pipeline(
            profile, params=list(params), notebooks_dir=nb_dir, outputs_dir=out, command=["test"], **kwargs
        )
        entries = {e["name"]: e for e in record["notebooks"]}
        return record, entries

    return run, out / "fx"


def mtime(path):
    return os.stat(path).st_mtime_ns


def test_first_run_records_fingerprints_and_outputs(workspace, capsys):
    run, run_dir = workspace
    record, entries = run()
    assert record["status"] == "ok"
    for nb in ("processdata_01", "processdata_02"):
        entry = entries[nb]
        assert entry["status"] == "ok" and entry["reused"] is False and entry["reason"] == "no earlier run"
        assert len(entry["fingerprint"]["digest"]) == 64 and len(entry["outputs_digest"]) == 64
        manifest = json.loads((run_dir / ".stages" / f"{nb}.json").read_text())
        assert manifest["fingerprint"] == entry["fingerprint"]["digest"]
        assert f"{nb}.ipynb" in manifest["files"] and f"{nb}/summary.json" in manifest["files"]
    # processdata_02 reads processdata_01: its fingerprint holds processdata_01's outputs digest
    upstream = entries["processdata_02"]["fingerprint"]["parts"]["upstream"]
    assert upstream == {"processdata_01": entries["processdata_01"]["outputs_digest"]}
    out = capsys.readouterr().out
    assert "[1/2] processdata_01: running (no earlier run)" in out and "[2/2] processdata_02: running" in out


def test_rerun_with_nothing_changed_reuses_every_notebook(workspace, capsys):
    run, run_dir = workspace
    before = {nb: mtime(run_dir / f"{nb}.ipynb") for nb in ("processdata_01", "processdata_02")}
    first = json.loads((run_dir / "run.json").read_text())
    record, entries = run()
    assert record["status"] == "ok"
    for nb, stamp in before.items():
        assert entries[nb]["reused"] is True and entries[nb]["status"] == "ok"
        assert mtime(run_dir / f"{nb}.ipynb") == stamp  # not executed again
        old = next(e for e in first["notebooks"] if e["name"] == nb)
        assert entries[nb]["seconds"] == old["seconds"] and entries[nb]["fingerprint"] == old["fingerprint"]
    out = capsys.readouterr().out
    assert "processdata_01: reused: unchanged since" in out and "processdata_02: reused" in out
    assert "running" not in out


def test_changed_parameter_reruns_that_notebook_only(workspace, capsys):
    run, run_dir = workspace
    stamp = mtime(run_dir / "processdata_01.ipynb")
    _, entries = run("processdata_02.scale=5")
    assert entries["processdata_01"]["reused"] is True and mtime(run_dir / "processdata_01.ipynb") == stamp
    assert entries["processdata_02"]["reused"] is False
    assert entries["processdata_02"]["reason"] == "parameters changed (scale)"
    assert json.loads((run_dir / "processdata_02" / "summary.json").read_text())["scaled_total"] == 4 * 5
    assert "processdata_02: running (parameters changed (scale))" in capsys.readouterr().out


def test_changed_upstream_reruns_its_readers(workspace):
    run, run_dir = workspace
    _, entries = run("processdata_02.scale=5", "processdata_01.n_items=3")
    assert entries["processdata_01"]["reason"] == "parameters changed (n_items)"
    assert entries["processdata_02"]["reason"] == "processdata_01 ran again"
    assert json.loads((run_dir / "processdata_02" / "summary.json").read_text())["scaled_total"] == 6 * 5


def test_modified_or_missing_output_reruns_the_notebook(workspace):
    run, run_dir = workspace
    summary = run_dir / "processdata_02" / "summary.json"
    summary.write_text(summary.read_text())  # same bytes, new mtime: the runner cannot know it is unchanged
    _, entries = run("processdata_02.scale=5", "processdata_01.n_items=3")
    assert entries["processdata_01"]["reused"] is True
    assert entries["processdata_02"]["reason"] == "outputs changed: processdata_02/summary.json was modified"
    (run_dir / "processdata_01" / "figures" / "curve.png").unlink()
    _, entries = run("processdata_02.scale=5", "processdata_01.n_items=3")
    assert (
        entries["processdata_01"]["reason"] == "outputs changed: processdata_01/figures/curve.png is missing"
    )
    assert entries["processdata_02"]["reason"] == "processdata_01 ran again"


def test_only_reuses_and_carries_over(workspace):
    run, _ = workspace
    _, entries = run("processdata_02.scale=5", only="processdata_02")
    assert entries["processdata_01"].get("carried_over") is True
    assert entries["processdata_02"]["reused"] is True


def test_fresh_from_deletes_and_reruns_from_that_notebook(workspace, capsys):
    run, run_dir = workspace
    marker = run_dir / "processdata_02" / "left_over.txt"
    marker.write_text("from an older run")
    stamp = mtime(run_dir / "processdata_01.ipynb")
    _, entries = run("processdata_02.scale=5", "processdata_01.n_items=3", fresh_from="processdata_02")
    assert entries["processdata_01"]["reused"] is True and mtime(run_dir / "processdata_01.ipynb") == stamp
    assert entries["processdata_02"]["reason"] == "fresh: its outputs were deleted first"
    assert not marker.exists() and (run_dir / "processdata_02" / "summary.json").is_file()
    assert "removing" in capsys.readouterr().out


def test_fresh_reruns_everything(workspace):
    run, run_dir = workspace
    _, entries = run("processdata_02.scale=5", "processdata_01.n_items=3", fresh=True)
    assert [e["reused"] for e in entries.values()] == [False, False]
    assert {e["reason"] for e in entries.values()} == {"fresh: its outputs were deleted first"}


def test_fresh_from_must_name_a_selected_pipeline_notebook(workspace):
    run, _ = workspace
    with pytest.raises(ParameterError, match=r"--fresh-from train_clpi: not a pipeline notebook.*train_clip"):
        run(fresh_from="train_clpi")
    with pytest.raises(ParameterError, match="--fresh-from infer: not among the notebooks to run"):
        run(fresh_from="infer")


# ----------------------------------------------------------------------------- the fingerprint itself


def test_what_changed_names_each_part():
    base = {
        "notebook": "n",
        "code": "c",
        "environment": {"device": "cpu"},
        "parameters": "p",
        "upstream": {"train_clip": "a"},
        "files": {},
        "extra": None,
    }
    old = {"digest": "x", "parts": base}

    def changed(**parts):
        return fingerprints.what_changed(old, {"digest": "y", "parts": {**base, **parts}}, {}, {})

    assert changed(code="d") == "nbutils code changed"
    assert changed(notebook="m") == "notebook changed"
    assert changed(environment={"device": "cuda: H100"}) == "device or library versions changed"
    assert changed(upstream={"train_clip": "b"}) == "train_clip ran again"
    assert changed(files={"source:x.csv": "s"}) == "input files changed"
    assert changed(extra="e") == "files it reads changed"
    assert fingerprints.what_changed(None, {"parts": base}, None, {}) == "no earlier run"


def test_notebook_digest_ignores_outputs_and_metadata(tmp_path):
    cells = [{"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": []}]
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    a.write_text(json.dumps({"cells": cells, "metadata": {}}))
    b.write_text(
        json.dumps(
            {"cells": [{**cells[0], "outputs": [{"text": "1"}], "execution_count": 3}], "metadata": {"k": 1}}
        )
    )
    assert fingerprints.notebook_digest(a) == fingerprints.notebook_digest(b)
    b.write_text(json.dumps({"cells": [{**cells[0], "source": "x = 2"}]}))
    assert fingerprints.notebook_digest(a) != fingerprints.notebook_digest(b)


def test_input_parameters_fingerprint_the_files_they_name(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "x.ipynb").write_text(json.dumps({"cells": []}))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("url,text\n")

    def fingerprint(**params):
        return fingerprints.stage_fingerprint("processdata_01", notebooks / "x.ipynb", params, {}, {})

    with_file = fingerprint(source=str(manifest), data_dir=str(tmp_path))
    assert list(with_file["parts"]["files"]) == [f"source:{manifest}"]  # data_dir is an output: not an input
    os.utime(manifest, ns=(1, 1))
    assert fingerprint(source=str(manifest), data_dir=str(tmp_path))["digest"] != with_file["digest"]
    assert fingerprint(source="demo")["parts"]["files"] == {}  # not a path
    assert fingerprint(source=f"demo?n_images=30&data_dir={tmp_path}")["parts"]["files"] == {}
    # relative to the notebooks folder, like the kernels see it; comma lists are split
    assert set(fingerprints.stage_fingerprint(
        "infer", notebooks / "x.ipynb", {"captioners": "train_clipcap,../manifest.csv"}, {}, {}
    )["parts"]["files"]) == {"captioners:../manifest.csv"}  # fmt: skip


def test_tree_signature_sees_sizes_and_mtimes(tmp_path):
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "w.bin"
    f.write_bytes(b"1234")
    first = fingerprints.tree_signature(tmp_path)
    assert fingerprints.tree_signature(tmp_path) == first
    f.write_bytes(b"12345")
    assert fingerprints.tree_signature(tmp_path) != first
    assert fingerprints.tree_signature(tmp_path / "nothing") is None
