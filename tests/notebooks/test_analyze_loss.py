"""The real analyze_loss notebook through the runner (papermill) on run folders written by the test: two runs
with known losses, one with unreadable JSON and one that does not exist."""

import json
import math

import pandas as pd

from nbutils import runner


def _training(folder, stage, train, evals=(), batch=16, summary=None):
    log = [{"epoch": s / 10, "loss": v, "step": s} for s, v in train]
    log += [{"epoch": s / 10, "eval_loss": v, "step": s} for s, v in evals]
    log.sort(key=lambda e: (e["step"], "eval_loss" in e))
    folder.mkdir(parents=True)
    last = max(s for s, _ in [*train, *evals])
    state = {"global_step": last, "epoch": last / 10, "train_batch_size": batch, "log_history": log}
    (folder / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    (folder / "stage.json").write_text(json.dumps({"stage": stage}), encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps(summary or {}), encoding="utf-8")


def test_analyze_loss_notebook_compares_runs_and_names_what_it_skipped(tmp_path):
    outputs = tmp_path / "outputs"
    _training(
        outputs / "alpha" / "train_clip", "train_clip", [(10, 3.5), (20, 2.0)], [(20, 2.5)], batch=64,
        summary={"i2t_r1": 81.3456, "steps": 20, "trainable_parameters": {"total": 721409},
                 "chance_loss": math.log(64), "chance_train_loss": math.log(64), "batch_size": 64,
                 "negatives_per_caption": 0, "world_size": 1, "word_loss_weight": 0.0},
    )  # fmt: skip
    _training(
        outputs / "alpha" / "train_clipcap", "train_clipcap", [(10, 4.0), (20, 1.25)], [(20, 1.5)],
        summary={"mapping": "mlp", "cider": 2.0589, "n_test_images": 1234},
    )  # fmt: skip
    _training(
        outputs / "beta" / "train_encoder_decoder", "train_encoder_decoder", [(5, 5.0), (10, 3.0)],
        summary={"decoder": "gpt2", "cider": 1.6461},
    )  # fmt: skip
    (outputs / "broken" / "train_clip").mkdir(parents=True)
    (outputs / "broken" / "train_clip" / "trainer_state.json").write_text("{oops", encoding="utf-8")

    result = runner.run_pipeline(
        "demo",
        only=["analyze_loss"],
        params=["analyze_loss.runs=alpha,beta,broken,ghost", "analyze_loss.smoothing=0.5"],
        run_name="cmp",
        outputs_dir=outputs,
    )
    entry = next(nb for nb in result["notebooks"] if nb["name"] == "analyze_loss")
    assert entry["status"] == "ok"
    out = outputs / "cmp" / "analyze_loss"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    headline = (
        "Compared 3 trainings (1 contrastive, 2 captioning) from 2 runs; 2 folders skipped "
        "(1 not found, 1 trainer_state.json is not valid JSON)."
    )
    assert summary["headline"] == headline
    assert [t["label"] for t in summary["trainings"]] == [
        "alpha/train_clip", "alpha/train_clipcap/mlp", "beta/train_encoder_decoder",
    ]  # fmt: skip
    assert summary["trainings"][0]["chance"]["train"] == summary["trainings"][0]["chance"]["eval"]
    assert math.isclose(summary["trainings"][0]["chance"]["eval"], math.log(64))
    assert [(s["folder"], s["reason"]) for s in summary["skipped"]] == [
        ("ghost", "not found"), ("broken/train_clip", "trainer_state.json is not valid JSON"),
    ]  # fmt: skip
    losses = pd.read_csv(out / "losses.csv")
    assert len(losses) == 8 and losses.loc[losses["label"] == "alpha/train_clipcap/mlp", "loss"].tolist() == [
        4.0, 1.25, 1.5,
    ]  # fmt: skip
    assert (out / "figures" / "loss_vs_step.png").is_file() and (
        out / "figures" / "loss_vs_epoch.png"
    ).is_file()

    html = (outputs / "cmp" / "analyze_loss.html").read_text(encoding="utf-8")
    assert html.index(headline) < html.index("Trainings")  # the headline comes first
    assert "ghost" in html and "not found" in html and "Skipped" in html
    assert "ln 64 = 4.16" in html and "ClipCap (mlp)" in html and "captioner (gpt2)" in html
    assert (
        "81.3" in html and "81.35" not in html and "721,409" in html and "1,234" in html and "2.059" in html
    )
    assert html.count("data:image/png;base64") >= 2  # the two figures
    assert "Traceback" not in html and "{&#x27;" not in html and "{'" not in html
