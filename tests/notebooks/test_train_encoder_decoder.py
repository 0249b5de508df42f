"""The real train_encoder_decoder notebook through the runner (papermill) with tiny parameters, on a private
copy of the shared prepared run (60 demo images, 32 px, 12 test images)."""

import json

import pandas as pd
import pytest
from transformers import AutoTokenizer, VisionEncoderDecoderModel

from nbutils import runner, stages

METRICS = {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
KEYS = METRICS | {
    "tokenization",
    "n_test_images",
    "decoding",
    "baseline",
    "attribute_scores",
    "true_captions",
    "empty_captions",
    "decoder",
    "trainable_parameters",
    "steps",
    "final_train_loss",
}


def test_train_encoder_decoder_notebook_writes_model_predictions_summary_and_report(
    copy_prepared_run, prepared_run, readable_report
):
    run_dir = copy_prepared_run("captioner")
    params = [
        "train_encoder_decoder.max_steps=4",
        "train_encoder_decoder.batch_size=8",
        "train_encoder_decoder.hidden_size=32",
        "train_encoder_decoder.encoder_layers=1",
        "train_encoder_decoder.decoder_layers=1",
        "train_encoder_decoder.num_heads=2",
        "train_encoder_decoder.intermediate_size=64",
        "train_encoder_decoder.logging_steps=1",
        "train_encoder_decoder.resume=",
    ]
    result = runner.run_pipeline(
        "demo",
        only=["train_encoder_decoder"],
        params=params,
        run_name=run_dir.name,
        outputs_dir=run_dir.parent,
    )
    entry = next(nb for nb in result["notebooks"] if nb["name"] == "train_encoder_decoder")
    assert entry["status"] == "ok"
    out = run_dir / "train_encoder_decoder"
    summary = json.loads((out / "summary.json").read_text())
    assert KEYS <= set(summary) and summary["steps"] == 4 and summary["decoder"] == "gpt2"
    assert METRICS <= set(summary["baseline"]) and summary["n_test_images"] == 12
    assert {"per_attribute", "hallucination_rate"} <= set(summary["attribute_scores"])
    assert summary["true_captions"]["attribute_scores"]["hallucination_rate"] == 0.0
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(predictions) == 12 and {"image_path", "references", "prediction"} <= set(predictions.columns)
    # The stage hands its captioner on; plain transformers loads the same folder.
    trained = stages.load_trained_captioner(run_dir)
    assert trained.summary == summary and trained.model_dir == out / "model"
    assert VisionEncoderDecoderModel.from_pretrained(str(out / "model")).config.decoder.model_type == "gpt2"
    assert len(AutoTokenizer.from_pretrained(str(out / "model"))) == len(trained.bundle.tokenizer)
    assert (out / "figures" / "loss_curve.png").is_file() and (out / "trainer_state.json").is_file()
    html = (run_dir / "train_encoder_decoder.html").read_text(encoding="utf-8")
    assert (
        "constant-caption baseline" in html
        and "What the captions state about the image" in html
        and "✎" in html
    )
    headline = readable_report(run_dir, "train_encoder_decoder")
    assert (
        headline.startswith("Trained a ViT → GPT-2 captioner for 4 steps in ")
        and " on 12 test images" in headline
    )
    assert (
        "single-object precision colour " in headline and "(true captions " in headline and ">BLEU-4<" in html
    )
    assert html.count(">true captions<") >= 2 and ">precision<" in html  # the metrics and the attribute table
    assert not (prepared_run["run_dir"] / "train_encoder_decoder").exists()


def test_a_misspelt_decoder_model_fails_the_notebook_at_once_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits it: as on a machine without network
    encoder = tmp_path / "vit"
    encoder.mkdir()
    params = [
        f"train_encoder_decoder.encoder={encoder}",
        "train_encoder_decoder.decoder_model=models/gpt2_typo",
    ]
    with pytest.raises(runner.RunFailed) as err:
        runner.run_pipeline(
            "demo",
            only=["train_encoder_decoder"],
            run_name="typo",
            outputs_dir=tmp_path / "outputs",
            params=params,
        )
    message = str(err.value)
    assert "train_encoder_decoder failed" in message
    assert "decoder_model='models/gpt2_typo': no such folder: " in message
    # relative to the folder the notebooks run in
    assert str(runner.NOTEBOOKS_DIR.resolve() / "models" / "gpt2_typo") in message
    assert "hub is not reachable (HF_HUB_OFFLINE is set)" in message
