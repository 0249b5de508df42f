"""Live progress on the terminal: the cell being run and the kernel's progress bar, without flooding a log."""

import io
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from transformers import TrainerControl, TrainerState, TrainingArguments

from nbutils import progress, runner
from nbutils.runner import live
from nbutils.training.job import ProgressReportCallback

FIXTURES = Path(__file__).parents[1] / "fixtures" / "notebooks"


def test_code_cell_ordinals_count_the_injected_parameters_cell():
    # echo.ipynb: markdown, parameters, then three code cells; papermill injects one after the parameters
    ordinals, n_code = live.code_cell_ordinals(FIXTURES / "echo.ipynb")
    assert ordinals == [None, 1, 2, 3, 4, 5] and n_code == 5
    assert live.code_cell_ordinals(FIXTURES / "echo.ipynb", parameters_injected=False) == (
        [None, 1, 2, 3, 4],
        4,
    )


def test_progress_text_elapsed_and_eta():
    state = {"desc": "training", "n": 120, "total": 440, "unit": "steps", "loss": 2.3101, "started": 100.0,
             "start_n": 0, "time": 160.0}  # fmt: skip
    # 60 s for 120 steps: 0.5 s a step, 320 steps left -> 160 s
    assert (
        live.progress_text(state, now=160.0) == "training 120/440 steps · loss 2.31 · 1:00 elapsed · ETA 2:40"
    )
    resumed = {**state, "start_n": 100}  # resumed at step 100: 20 steps in 60 s -> 3 s a step
    assert live.progress_text(resumed, now=160.0).endswith("ETA 16:00")
    done = {**state, "n": 440}
    assert "ETA" not in live.progress_text(done, now=160.0)
    assert live.progress_text({"desc": "x", "n": 3, "total": None, "unit": "it"}) == "x 3 it"
    assert live.progress_text(None) == ""


def test_terminal_line_is_redrawn_in_place(tmp_path):
    stream = io.StringIO()
    bar = live.LiveProgress(FIXTURES / "echo.ipynb", tmp_path / "p.json", stream=stream, live=True)
    bar.on_cell_start({"source": "\n  run = train(config)\n"}, cell_index=3)
    bar._draw()
    assert stream.getvalue() == "\r\x1b[K  cell 3/5 · run = train(config)"
    (tmp_path / "p.json").write_text(json.dumps({"desc": "training", "n": 4, "total": 8, "unit": "steps",
                                                 "time": time.time() + 1}))  # fmt: skip
    bar._draw()
    assert stream.getvalue().endswith("\r\x1b[K  cell 3/5 · training 4/8 steps")
    # a bar written before this cell started belongs to an earlier cell: not shown
    (tmp_path / "p.json").write_text(json.dumps({"desc": "old", "n": 1, "total": 2, "time": 0}))
    bar._draw()
    assert stream.getvalue().endswith("cell 3/5 · run = train(config)")


def _progress_workspace(root: Path, **params):
    nb_dir = root / "notebooks"
    nb_dir.mkdir(parents=True)
    shutil.copy(FIXTURES / "progress.ipynb", nb_dir / "processdata_01.ipynb")
    profile = root / "p.yaml"
    profile.write_text(yaml.safe_dump({"run": "fx", "notebooks": {"processdata_01": params}}))
    return profile, nb_dir, root / "outputs"


def test_log_shows_the_cell_and_the_kernels_progress_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(live, "LOG_INTERVAL", 0.0)  # print every change (a log prints every 30 s)
    profile, nb_dir, out = _progress_workspace(tmp_path, n_updates=30, pause=0.1)
    runner.run_pipeline(profile, notebooks_dir=nb_dir, outputs_dir=out)
    lines = capsys.readouterr().out.splitlines()
    counting = [line for line in lines if "counting" in line]
    assert counting, lines
    assert all(line.startswith("  cell 4/4 · counting ") and "/30 items" in line for line in counting)
    assert any("elapsed" in line for line in counting)


def test_a_fast_progress_bar_does_not_flood_the_log(tmp_path, capsys):
    profile, nb_dir, out = _progress_workspace(tmp_path, n_updates=5000, pause=0.0)
    runner.run_pipeline(profile, notebooks_dir=nb_dir, outputs_dir=out)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 2, lines  # "[1/1] processdata_01: running (...)" and "ok in ..."
    assert json.loads((out / "fx" / "processdata_01" / "summary.json").read_text()) == {"n_updates": 5000}
    assert not list((out / "fx" / ".stages").glob("*.progress.json"))  # the side channel is removed


# ----------------------------------------------------------------------------- kernel side


def test_tqdm_reports_only_when_a_runner_listens(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    for _ in progress.tqdm(range(3)):
        pass
    assert not path.exists()
    monkeypatch.setenv(progress.PROGRESS_ENV, str(path))
    for _ in progress.tqdm(range(3), disable=True):  # a disabled bar counts nothing: it tells nothing
        pass
    assert not path.exists()
    for _ in progress.tqdm(range(7), desc="decoding", unit="images"):
        pass
    state = progress.read(path)
    assert (state["desc"], state["n"], state["total"], state["unit"]) == ("decoding", 7, 7, "images")


@pytest.mark.parametrize("world_zero", [True, False])
def test_trainer_callback_reports_steps_and_loss(tmp_path, monkeypatch, world_zero):
    path = tmp_path / "progress.json"
    monkeypatch.setenv(progress.PROGRESS_ENV, str(path))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state = TrainerState(global_step=0, max_steps=10, is_world_process_zero=world_zero)
    callback = ProgressReportCallback()
    callback.on_train_begin(args, state, TrainerControl())
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.25})
    state.global_step, state.epoch = 10, 2.0
    callback.on_step_end(args, state, TrainerControl())  # the last step is always written (not throttled)
    if not world_zero:
        assert not path.exists()  # other processes of a torchrun launch stay quiet
        return
    got = progress.read(path)
    assert (got["desc"], got["n"], got["total"], got["unit"], got["loss"], got["epoch"]) == (
        "training", 10, 10, "steps", 1.25, 2.0,
    )  # fmt: skip
    assert got["start_n"] == 10 and got["started"] <= got["time"]
