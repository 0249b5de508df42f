"""The real train_clipcap notebook through the runner (papermill) with tiny parameters, after a tiny train_clip, on a
private copy of the shared prepared run (60 demo images, 32 px, 12 test images)."""

import json

import pandas as pd
from transformers import AutoModelForCausalLM, AutoTokenizer

from nbutils import runner, stages
from nbutils.models.clipcap import ClipCapModel

KEYS = {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "tokenization", "baseline",
        "attribute_scores", "decoding", "true_captions", "empty_captions", "mapping", "prefix_len", "gpt2_frozen",
        "trainable_parameters", "clip_model", "n_test_images", "steps", "comparison"}  # fmt: skip


def test_train_clipcap_notebook_compares_mappings_and_writes_model_predictions_summary_and_report(
    copy_prepared_run, prepared_run, readable_report
):
    run_dir = copy_prepared_run("clipcap")
    params = [
        "train_clip.max_steps=2", "train_clip.batch_size=8", "train_clip.projection_dim=16",
        "train_clip.vision_width=32", "train_clip.resume=", "train_clip.hard_negative_similarity=0.6",
        "train_clipcap.mapping=mlp,transformer", "train_clipcap.max_steps=3", "train_clipcap.batch_size=8",
        "train_clipcap.prefix_len=2", "train_clipcap.constant_len=2", "train_clipcap.mapping_layers=1",
        "train_clipcap.mapping_heads=2", "train_clipcap.hidden_size=32", "train_clipcap.num_heads=2",
        "train_clipcap.logging_steps=1", "train_clipcap.resume=",
        f"train_clipcap.embeddings_dir={run_dir / 'embeddings'}",
    ]  # fmt: skip
    result = runner.run_pipeline(
        "demo",
        only=["train_clip", "train_clipcap"],
        params=params,
        run_name=run_dir.name,
        outputs_dir=run_dir.parent,
    )
    entry = next(nb for nb in result["notebooks"] if nb["name"] == "train_clipcap")
    assert entry["status"] == "ok"
    out = run_dir / "train_clipcap"
    summary = json.loads((out / "summary.json").read_text())
    assert KEYS <= set(summary) and summary["steps"] == 3 and summary["mapping"] == "mlp"
    assert summary["n_test_images"] == 12 and summary["gpt2_frozen"] is False
    assert [row["mapping"] for row in summary["comparison"]] == ["mlp", "transformer"]
    assert {"per_attribute", "single_object"} <= set(summary["attribute_scores"])
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(predictions) == 12 and {"image_path", "references", "prediction", "cider"} <= set(
        predictions.columns
    )
    trained = stages.load_trained_clipcap(run_dir)
    assert trained.summary == summary and trained.model_dir == out / "model"
    assert type(AutoModelForCausalLM.from_pretrained(str(out / "model"))) is ClipCapModel
    assert len(AutoTokenizer.from_pretrained(str(out / "model"))) == len(trained.bundle.tokenizer)
    assert (out / "mappings" / "transformer" / "summary.json").is_file() and (
        out / "comparison.csv"
    ).is_file()
    assert (out / "figures" / "loss_curve.png").is_file() and (out / "trainer_state.json").is_file()
    assert len(list((run_dir / "embeddings").glob("*.safetensors"))) == 1
    html = (run_dir / "train_clipcap.html").read_text(encoding="utf-8")
    assert (
        "constant-caption baseline" in html
        and "What the captions state about the image" in html
        and "✎" in html
    )
    assert html.count(">true captions<") >= 3  # the comparison, the metrics and the attribute table
    assert "transformer" in html and "trainable parameters" in html
    headline = readable_report(run_dir, "train_clipcap")
    assert headline.startswith("Trained ClipCap (mlp mapping) for 3 steps in ")
    assert "(transformer mapping: CIDEr " in headline
    assert not (prepared_run["run_dir"] / "train_clipcap").exists()
