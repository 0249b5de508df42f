"""The real train_clip notebook through the runner (papermill) with tiny parameters."""

import json

from nbutils import runner

KEYS = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean_recall", "median_rank_i2t",
        "median_rank_t2i", "chance_r1", "n_test_images", "initial", "final_train_loss", "batch_size"}


def test_train_clip_notebook_writes_model_state_summary_and_figures(tmp_path):
    params = ["processdata_03.source=demo", f"data_dir={tmp_path / 'data'}", "n_images=60", "image_size=32",
              "processdata_03.num_workers=1", "train_clip.max_steps=3", "train_clip.batch_size=8",
              "train_clip.projection_dim=16", "train_clip.logging_steps=1", "train_clip.resume="]
    result = runner.run_pipeline("demo", only=["processdata_03", "train_clip"], params=params, run_name="clip",
                                 outputs_dir=tmp_path / "outputs")
    assert [nb["status"] for nb in result["notebooks"] if nb["name"] in ("processdata_03", "train_clip")] == ["ok"] * 2
    out = tmp_path / "outputs" / "clip" / "train_clip"
    summary = json.loads((out / "summary.json").read_text())
    assert KEYS <= set(summary) and summary["steps"] == 3 and summary["batch_size"] == 8
    assert summary["n_test_images"] == 6 and abs(summary["chance_r1"] - 100 / 6) < 1e-9
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert (out / "model" / "preprocessor_config.json").is_file() and (out / "trainer_state.json").is_file()
    assert (out / "figures" / "loss_curve.png").is_file()
    html = (tmp_path / "outputs" / "clip" / "train_clip.html").read_text(encoding="utf-8")
    assert "Text → image search" in html and "initial" in html
