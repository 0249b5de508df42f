"""The real infer notebook through the runner (papermill) after tiny train_clip and train_clipcap runs, on a private
copy of the shared prepared run (12 test images)."""

import json

import pandas as pd

from nbutils import runner


def test_infer_notebook_writes_predictions_summary_and_a_report_with_tables_and_a_gallery(
    copy_prepared_run, readable_report
):
    run_dir = copy_prepared_run("infer")
    params = [
        "train_clip.max_steps=2", "train_clip.batch_size=8", "train_clip.projection_dim=16",
        "train_clip.vision_width=32", "train_clip.resume=", "train_clip.hard_negative_similarity=0.6",
        "train_clipcap.mapping=mlp", "train_clipcap.max_steps=2", "train_clipcap.batch_size=8",
        "train_clipcap.prefix_len=2", "train_clipcap.hidden_size=32", "train_clipcap.num_heads=2",
        "train_clipcap.resume=", f"train_clipcap.embeddings_dir={run_dir / 'embeddings'}",
        "infer.max_new_tokens=6", "infer.batch_size=8",
    ]  # fmt: skip
    result = runner.run_pipeline(
        "demo", only=["train_clip", "train_clipcap", "infer"], params=params, run_name=run_dir.name,
        outputs_dir=run_dir.parent,
    )  # fmt: skip
    entry = next(nb for nb in result["notebooks"] if nb["name"] == "infer")
    assert entry["status"] == "ok"
    summary = json.loads((run_dir / "infer" / "summary.json").read_text())
    assert summary["n_images"] == 12 and list(summary["models"]) == [
        "train_clipcap"
    ]  # no train_encoder_decoder
    assert summary["clipscore_model"] == "train_clip of this run" and summary["rejected_images"] == 0
    assert len(pd.read_csv(run_dir / "infer" / "predictions.csv")) == 12
    html = (run_dir / "infer.html").read_text(encoding="utf-8")
    assert "CLIPScore" in html and "images/s" in html and "Worst CIDEr first" in html
    assert html.count("✎ train_clipcap") >= 8  # the static gallery, twice
    headline = readable_report(run_dir, "infer")
    assert headline.startswith("Captioned 12 images with 1 model (beam decoding): CIDEr train_clipcap ")
    assert "; CLIPScore train_clipcap " in headline
    # The caption browser cannot run in a static report: its display carries a note that says where it runs.
    assert "JupyterLab or Voilà" in html and "VBox(" not in html
