"""The real train_clip notebook through the runner (papermill) with tiny parameters, on a private copy
of the shared prepared run (`copy_prepared_run`: 60 demo images, 32 px, 12 test images)."""

import json

from nbutils import runner

KEYS = {
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "mean_recall",
    "median_rank_i2t",
    "median_rank_t2i",
    "chance_r1",
    "n_test_images",
    "initial",
    "final_train_loss",
    "batch_size",
}


def test_train_clip_notebook_writes_model_state_summary_and_figures(
    copy_prepared_run, prepared_run, readable_report
):
    run_dir = copy_prepared_run("clip")
    params = [
        "train_clip.max_steps=3",
        "train_clip.batch_size=8",
        "train_clip.projection_dim=16",
        "train_clip.logging_steps=1",
        "train_clip.resume=",
        "train_clip.hard_negative_similarity=0.6",
    ]  # the profile's hard negatives, on 195 captions
    result = runner.run_pipeline(
        "demo", only=["train_clip"], params=params, run_name=run_dir.name, outputs_dir=run_dir.parent
    )
    # processdata_03's entry is carried over from the shared run's run.json.
    statuses = [nb["status"] for nb in result["notebooks"] if nb["name"] in ("processdata_03", "train_clip")]
    assert statuses == ["ok"] * 2
    assert [nb["name"] for nb in result["notebooks"] if nb.get("carried_over")] == ["processdata_03"]
    out = run_dir / "train_clip"
    summary = json.loads((out / "summary.json").read_text())
    assert KEYS <= set(summary) and summary["steps"] == 3 and summary["batch_size"] == 8
    assert summary["hard_negatives"]["replaceable_words"] > 0
    assert (
        set(summary["zero_shot_accuracy"])
        == set(summary["linear_probe_accuracy"])
        == {"colour", "shape", "size"}
    )
    p = prepared_run["params"]
    n_test = max(
        1, round(prepared_run["demo"].n_images * p["test_fraction"])
    )  # nbutils.data.splits' rule: 12
    assert summary["n_test_images"] == n_test == 12 and abs(summary["chance_r1"] - 100 / n_test) < 1e-9
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert (out / "model" / "preprocessor_config.json").is_file() and (out / "trainer_state.json").is_file()
    assert (out / "figures" / "loss_curve.png").is_file()
    html = (run_dir / "train_clip.html").read_text(encoding="utf-8")
    assert "Text → image search" in html and "initial" in html
    assert "Zero-shot attribute accuracy" in html and "Linear probe" in html and "prompts per class" in html
    assert "{&#x27;" not in html and "{'" not in html  # tables, not dict reprs
    headline = readable_report(run_dir, "train_clip")
    assert headline.startswith("Trained 3 steps in ") and "; zero-shot colour " in headline
    assert f"(chance {summary['chance_r1']:.1f} %)" in headline
    # The shared run is untouched: train_clip wrote into the copy only.
    assert not (prepared_run["run_dir"] / "train_clip").exists()
