"""ClipCap training end to end on a copy of the shared tiny prepared run with a tiny train_clip model (CPU)."""

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from nbutils import stages
from nbutils.models import clipcap as clipcap_models
from nbutils.training import clip as clip_training
from nbutils.training import clipcap
from tests.training import torchrun

TINY = dict(
    batch_size=8,
    logging_steps=1,
    prefix_len=2,
    constant_len=2,
    mapping_layers=1,
    mapping_heads=2,
    hidden_size=32,
    num_heads=2,
    max_steps=3,
    resume="",
)
KEYS = {
    "bleu1", "bleu4", "meteor", "rouge_l", "cider", "tokenization", "baseline", "attribute_scores", "decoding",
    "true_captions", "empty_captions",
    "mapping", "prefix_len", "gpt2_frozen", "trainable_parameters", "clip_model", "steps", "clip_embeddings",
}  # fmt: skip


@pytest.fixture(scope="module")
def clip_run(prepared_run, tmp_path_factory):
    """A run folder holding processdata_03 (copied) and a 2-step train_clip model."""
    run_dir = tmp_path_factory.mktemp("clipcap") / "run"
    shutil.copytree(prepared_run["run_dir"], run_dir)
    config = clip_training.TrainClipConfig(
        run_dir=str(run_dir), output_dir=str(run_dir / "train_clip"), batch_size=8, max_steps=2,
        projection_dim=16, vision_width=32, resume="",
    )  # fmt: skip
    clip_training.train_clip(config)
    return run_dir


def _config(run_dir, output_dir, embeddings_dir, **overrides):
    return clipcap.TrainClipCapConfig(
        run_dir=str(run_dir),
        output_dir=str(output_dir),
        embeddings_dir=str(embeddings_dir),
        **{**TINY, **overrides},
    )


def test_frozen_gpt2_is_bit_identical_after_training_and_the_stage_reloads(clip_run, tmp_path):
    config = _config(clip_run, tmp_path / "out", tmp_path / "emb", freeze_language_model=True)
    run = clipcap.train_clipcap(config)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert KEYS <= set(summary) and summary["gpt2_frozen"] is True and summary["mapping"] == "mlp"
    assert summary["steps"] == 3 and summary["clip_model"].startswith("train_clip")
    assert summary["clip_embeddings"]["dim"] == 16 and summary["comparison"] is None
    counts = summary["trainable_parameters"]
    assert counts["trainable"] == sum(p.numel() for p in run.bundle.model.mapper.parameters())

    # The same GPT-2 the job built (same seed, same tokenizer), untrained: every weight equal, bit for bit.
    prepared = stages.load_prepared(clip_run)
    torch.manual_seed(config.seed)
    fresh, _ = clipcap.load_bundle(
        config, "mlp", 16, list(prepared.tables["train"]["text"]), prepared.language
    )
    saved = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    gpt2 = {k: v for k, v in fresh.model.state_dict().items() if not k.startswith("mapper.")}
    assert gpt2 and all(torch.equal(saved[k], v) for k, v in gpt2.items() if k in saved)
    assert not torch.equal(saved["mapper.0.weight"], fresh.model.state_dict()["mapper.0.weight"])

    (tmp_path / "run").mkdir()
    (tmp_path / "out").rename(tmp_path / "run" / "train_clipcap")  # a run folder's stage
    trained = stages.load_trained_clipcap(tmp_path / "run")
    assert trained.summary == summary and trained.model_dir == tmp_path / "run" / "train_clipcap" / "model"
    assert len(trained.predictions) == summary["n_test_images"]
    assert (tmp_path / "run" / "train_clipcap" / "trainer_state.json").is_file()


def test_several_mappings_are_trained_and_compared_and_embeddings_are_reused(clip_run, tmp_path):
    first = clipcap.train_clipcap(_config(clip_run, tmp_path / "a", tmp_path / "emb", mapping="mlp"))
    assert first.summary["clip_embeddings"]["reused"] is False
    run = clipcap.train_clipcap(
        _config(clip_run, tmp_path / "b", tmp_path / "emb", mapping="transformer,bert,mlp", num_return_sequences=2,
                decoding="beam")
    )  # fmt: skip
    assert run.summary["clip_embeddings"]["reused"] is True
    assert run.summary["clip_embeddings"]["file"] == first.summary["clip_embeddings"]["file"]
    assert list(run.results) == ["transformer", "bert", "mlp"] and run.summary["mapping"] == "transformer"
    table = run.comparison()
    assert list(table.index) == ["transformer", "bert", "mlp"]
    assert {"CIDEr", "trainable parameters", "training seconds"} <= set(table.columns)
    assert {"colour precision, single-object (%)", "hallucination (%)"} <= set(table.columns)
    assert table.loc["mlp", "CIDEr"] == run.results["mlp"].summary["cider"]
    # the reading copy ends with the true captions, scored the same way
    ceiling = run.comparison(true_captions=True)
    assert list(ceiling.index) == ["transformer", "bert", "mlp", "true captions"]
    assert ceiling.loc["true captions", "CIDEr"] == run.summary["true_captions"]["cider"]
    assert ceiling.loc["true captions", "hallucination (%)"] == 0.0
    assert pd.isna(ceiling.loc["true captions", "trainable parameters"])
    assert [r["mapping"] for r in run.summary["comparison"]] == ["transformer", "bert", "mlp"]
    assert run.summary["headline"].startswith("Trained ClipCap (transformer mapping) for ")
    assert (
        "(bert mapping: CIDEr " in run.summary["headline"]
        and "; mlp mapping: CIDEr " in run.summary["headline"]
    )
    shown = run.comparison_table().to_html()
    assert ">training time<" in shown and "training seconds" not in shown
    assert ">true captions<" in shown and ">hallucination<" in shown and " %<" in shown
    assert (tmp_path / "b" / "comparison.csv").is_file()
    for mapping in ("bert", "mlp"):
        other = json.loads((tmp_path / "b" / "mappings" / mapping / "summary.json").read_text())
        assert other["mapping"] == mapping
        loaded = clipcap_models.load_saved_clipcap(tmp_path / "b" / "mappings" / mapping / "model")
        assert loaded.model.config.mapping == mapping
    predictions = pd.read_csv(tmp_path / "b" / "predictions.csv", keep_default_na=False)
    assert all(len(c.split(" | ")) == 2 for c in predictions["candidates"])


def test_a_clip_folder_gives_the_same_embeddings_as_this_runs_clip(clip_run, tmp_path):
    a = clipcap.train_clipcap(_config(clip_run, tmp_path / "a", tmp_path / "emb", max_steps=1))
    b = clipcap.train_clipcap(
        _config(
            clip_run,
            tmp_path / "b",
            tmp_path / "emb",
            max_steps=1,
            clip_model=str(clip_run / "train_clip" / "model"),
        )
    )
    assert b.summary["clip_model"] == str(clip_run / "train_clip" / "model")
    assert (
        b.summary["clip_embeddings"]["reused"]
        and b.summary["clip_embeddings"]["file"] == a.summary["clip_embeddings"]["file"]
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mapping": "lstm"}, "mapping='lstm'"),
        ({"mapping": "mlp,mlp"}, "each once"),
        ({"decoding": "fast"}, "unknown decoding preset 'fast'"),
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
        ({"mapping": "transformer", "mapping_layers": 0}, "mapping_layers >= 1"),
    ],
)
def test_bad_parameters_are_named(clip_run, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        clipcap.train_clipcap(_config(clip_run, tmp_path / "x", tmp_path / "emb", **overrides))


def test_headline_says_what_happened_in_one_sentence():
    summary = {"mapping": "mlp", "steps": 1300, "train_seconds": 147.2, "cider": 2.0112, "n_test_images": 267,
               "baseline": {"cider": 0.2031}, "empty_captions": 0,
               "true_captions": {"cider": 2.5413, "attribute_scores": {"hallucination_rate": 0.0}},
               "attribute_scores": {"single_object": {"colour": {"precision": 98.6}, "shape": {"precision": 95.9}},
                                    "hallucination_rate": 40.07},
               "comparison": [{"mapping": "mlp", "CIDEr": 2.0112},
                              {"mapping": "transformer", "CIDEr": 1.8021}]}  # fmt: skip
    assert clipcap.headline(summary) == (
        "Trained ClipCap (mlp mapping) for 1,300 steps in 2.5 min: CIDEr 2.011 on 267 test images (true captions "
        "2.541), 9.9× the constant caption's 0.203; single-object precision colour 98.6 %, shape 95.9 %; "
        "hallucinated objects in 40.1 % of captions (true captions 0.0 %) (transformer mapping: CIDEr 1.802)."
    )
    alone = {**summary, "comparison": None, "attribute_scores": None, "true_captions": None}
    assert clipcap.headline(alone).endswith("9.9× the constant caption's 0.203.")


def test_torchrun_two_processes_on_cpu(clip_run, tmp_path):
    """train_clipcap under torchrun (gloo on CPU): both ranks end with the same mapper and GPT-2 weights."""
    config = _config(clip_run, tmp_path / "ddp", tmp_path / "emb", batch_size=4)
    ranks = torchrun.run_ranks(clipcap.train_clipcap, config, tmp_path)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 8 and summary["steps"] == 3
    prepared = stages.load_prepared(clip_run)
    torch.manual_seed(config.seed)
    start, _ = clipcap.load_bundle(
        config, "mlp", 16, list(prepared.tables["train"]["text"]), prepared.language
    )
    torchrun.assert_same_trained_weights(ranks, start.model.state_dict())
