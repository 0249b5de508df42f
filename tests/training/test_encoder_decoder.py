"""Captioner training end to end on the shared tiny prepared demo run (CPU, seconds per training).

The run is `prepared_run` (tests/conftest.py): 60 Chinese demo images at 32 px, 39 / 9 / 12 train / val /
test images. METEOR starts a JVM (~15 s) per scoring: only the module fixture `trained` computes it; every
other training hides java (`no_java`), so METEOR is None with a reason there.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, TrainerCallback, VisionEncoderDecoderModel, ViTImageProcessor

from nbutils import stages
from nbutils.evaluation import caption_metrics as caption_metrics_module
from nbutils.models.tokenizer import caption_special_ids
from nbutils.training import encoder_decoder as ed
from nbutils.training.encoder_decoder import TrainEncoderDecoderConfig
from tests.training import torchrun

TINY = dict(
    batch_size=8,
    logging_steps=1,
    hidden_size=32,
    encoder_layers=1,
    decoder_layers=1,
    num_heads=2,
    intermediate_size=64,
    patch_size=8,
)
N_TEST = 12
SUMMARY_KEYS = {
    "bleu1",
    "bleu2",
    "bleu3",
    "bleu4",
    "meteor",
    "meteor_missing_reason",
    "rouge_l",
    "cider",
    "tokenization",
    "n_test_images",
    "decoding",
    "baseline",
    "true_captions",
    "empty_captions",
    "attribute_scores",
    "decoder",
    "trainable_parameters",
    "steps",
    "final_train_loss",
    "learning_rate",
    "batch_size",
}
METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "meteor_missing_reason", "rouge_l", "cider")


def _config(prepared_run, output_dir, **overrides) -> TrainEncoderDecoderConfig:
    return TrainEncoderDecoderConfig(
        run_dir=str(prepared_run["run_dir"]),
        output_dir=str(output_dir),
        **{**TINY, "resume": "", **overrides},
    )


@pytest.fixture
def no_java(monkeypatch):
    """METEOR is skipped (None with a reason): saves a JVM start per scoring."""
    which = shutil.which
    monkeypatch.setattr(
        caption_metrics_module.shutil,
        "which",
        lambda name, *a, **k: None if name == "java" else which(name, *a, **k),
    )


@pytest.fixture(scope="module")
def trained(prepared_run, tmp_path_factory):
    """One tiny GPT-2-decoder training (4 steps) with full metrics, shared by the tests that read its results.

    Written to <tmp>/run/train_encoder_decoder, so <tmp>/run is a run folder `stages.load_trained_captioner` reads.
    """
    out = tmp_path_factory.mktemp("captioner") / "run" / "train_encoder_decoder"
    run = ed.train_encoder_decoder(_config(prepared_run, out, max_steps=4))
    return SimpleNamespace(run=run, output_dir=out, prepared=stages.load_prepared(prepared_run["run_dir"]))


def test_summary_predictions_and_files(trained):
    run, out = trained.run, trained.output_dir
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n_test_images"] == N_TEST and summary["steps"] == 4 and summary["decoder"] == "gpt2"
    assert summary["tokenization"] == "jieba"
    assert summary["decoding"] == {
        "preset": "greedy",
        "num_beams": 1,
        "do_sample": False,
        "max_new_tokens": 20,
    }
    if summary["meteor"] is None:
        assert summary["meteor_missing_reason"]
    assert set(METRICS) <= set(summary["baseline"])
    assert (
        summary["baseline"]["cider"] > 0
    )  # the most frequent train caption shares words with the references
    assert summary["trainable_parameters"]["frozen"] == 0 and summary["trainable_parameters"]["trainable"] > 0
    attrs = summary["attribute_scores"]
    assert set(attrs["per_attribute"]) == {"colour", "shape", "size", "position", "count"}
    assert {"single_object", "no_false_statement", "hallucination_rate"} <= set(attrs)
    assert summary["empty_captions"] == sum(not c.strip() for c in run.predictions["prediction"])
    # the true captions: the test images' first references, scored the same way
    ceiling = summary["true_captions"]
    assert set(METRICS) <= set(ceiling) and ceiling["n_images"] == N_TEST and ceiling["cider"] > 0
    truth = ceiling["attribute_scores"]
    assert all(truth["per_attribute"][a]["precision"] in (100.0, None) for a in truth["per_attribute"])
    assert truth["per_attribute"]["colour"]["precision"] == 100.0 and truth["hallucination_rate"] == 0.0
    assert run.true_caption_attributes["n_images"] == N_TEST
    for name in ("model/config.json", "model/tokenizer.json", "model/preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert (out / "trainer_state.json").is_file() and (out / "predictions.csv").is_file()

    table = run.predictions
    assert list(table.columns) == ["image_path", "references", "prediction", "cider", "bleu4"]
    assert len(table) == N_TEST and table["image_path"].tolist() == run.test.image_paths
    assert table["references"][0] == " | ".join(run.test.captions[0])
    assert table["cider"].mean() == pytest.approx(summary["cider"], abs=1e-9)

    loaded = stages.load_trained_captioner(out.parent)
    assert loaded.summary == json.loads(json.dumps(run.summary))
    # what the notebook shows: the headline, then tables formatted for reading
    assert list(summary)[0] == "headline" and summary["headline"] == ed.headline(summary)
    assert summary["headline"].startswith("Trained a ViT → GPT-2 captioner for 4 steps in ")
    assert "{" not in run.overview().to_html().split("<tbody>")[1]
    metrics = run.metrics_table().to_html()
    assert ">CIDEr<" in metrics and ">constant caption<" in metrics and "×<" in metrics
    assert ">true captions<" in metrics
    attributes = run.attribute_table().to_html()
    assert ">model<" in attributes and ">true captions<" in attributes and ">precision<" in attributes
    assert loaded.predictions["prediction"].tolist() == table["prediction"].tolist()


def test_saved_folder_works_with_plain_transformers(trained):
    """The original project's "use it directly" code on the saved folder gives the run's greedy captions."""
    run, path = trained.run, trained.output_dir / "model"
    model = VisionEncoderDecoderModel.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = ViTImageProcessor.from_pretrained(path)
    test = run.test
    images = [test.cache.uint8(int(row)) for row in test.rows]
    pixel_values = processor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        ids = model.generate(pixel_values, max_new_tokens=20, num_beams=1, do_sample=False)
    texts = [t.replace(" ", "") for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert texts == [p.replace(" ", "") for p in run.predictions["prediction"]]
    with torch.no_grad():  # the original notebook's call runs too
        original = model.generate(pixel_values, num_beams=4, max_length=16)
    assert original.shape[0] == N_TEST and original.shape[1] <= 16


def _batch(prepared_run, tmp_path, **overrides):
    """(config, bundle, trainer, the first training batch the trainer's dataloader yields)."""
    config = _config(prepared_run, tmp_path / "out", **overrides)
    prepared = stages.load_prepared(prepared_run["run_dir"])
    torch.manual_seed(0)
    bundle, _ = ed.load_bundle(config, prepared, "zh")
    ids = caption_special_ids(bundle.tokenizer)
    collator = ed.CaptionCollator(
        bundle.tokenizer, ids["start"], ids["end"], ids["pad"], config.max_caption_length, config.prompt
    )
    args = ed.job.training_arguments(
        config, tmp_path / "ckpt", learning_rate=1e-3, dataloader_drop_last=False, evaluate=False
    )
    mean, std = prepared.mean_std
    trainer = ed.CaptionTrainer(
        model=bundle.model,
        args=args,
        train_dataset=prepared.dataset("train", sampling="caption"),
        data_collator=collator,
        mean=mean,
        std=std,
        label_smoothing=config.label_smoothing,
        encoder_learning_rate=config.encoder_learning_rate,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    return config, bundle, trainer, batch, ids


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_equals_a_hand_computation(prepared_run, tmp_path, smoothing):
    config, bundle, trainer, batch, ids = _batch(
        prepared_run, tmp_path, label_smoothing=smoothing, prompt="一张图片："
    )
    model = bundle.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        logits = model(
            pixel_values=trainer.normalized_pixels(model, batch),
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
        ).logits
    logp = torch.log_softmax(logits.double(), dim=-1)
    terms = []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            y = int(batch["labels"][b, t])
            if y == -100:
                continue
            terms.append((1 - smoothing) * -logp[b, t, y] - smoothing * logp[b, t].mean())
    assert float(loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)

    # what is in the loss: the caption and its end token; not the prompt, not padding, never the start token
    prompt_ids = bundle.tokenizer(config.prompt, add_special_tokens=False)["input_ids"]
    assert len(prompt_ids) == 5
    for b in range(batch["labels"].shape[0]):
        labels, inputs = batch["labels"][b], batch["decoder_input_ids"][b]
        n = int(batch["decoder_attention_mask"][b].sum())
        assert (labels[: len(prompt_ids)] == -100).all() and (labels[n:] == -100).all()
        assert int(labels[n - 1]) == ids["end"] and (labels[len(prompt_ids) : n] != -100).all()
        assert inputs[: 1 + len(prompt_ids)].tolist() == [ids["start"], *prompt_ids]
        assert ids["start"] not in labels.tolist() and int(inputs[1]) != ids["start"]


def test_encoder_learning_rate_gives_its_own_param_groups(prepared_run, tmp_path):
    _, bundle, trainer, _, _ = _batch(prepared_run, tmp_path, encoder_learning_rate=1e-5)
    optimizer = trainer.create_optimizer()
    assert {g["lr"] for g in optimizer.param_groups} == {1e-5, 1e-3}
    encoder = {id(p) for p in bundle.model.encoder.parameters()}
    for group in optimizer.param_groups:
        in_encoder = {id(p) in encoder for p in group["params"]}
        assert in_encoder == ({True} if group["lr"] == 1e-5 else {False})
    counted = sum(len(g["params"]) for g in optimizer.param_groups)
    assert counted == len(list(bundle.model.parameters()))
    # without it: the Trainer's own two groups (decay / no decay), one rate
    _, _, plain, _, _ = _batch(prepared_run, tmp_path / "plain")
    assert {g["lr"] for g in plain.create_optimizer().param_groups} == {1e-3}


class Snapshot(TrainerCallback):
    """The model's weights at the start and the end of training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_bert_decoder_with_frozen_encoder_prompt_and_smoothing(prepared_run, tmp_path, no_java):
    snapshot = Snapshot()
    run = ed.train_encoder_decoder(
        _config(
            prepared_run,
            tmp_path / "bert",
            decoder="bert",
            freeze_encoder=True,
            prompt="一张图片：",
            label_smoothing=0.1,
            max_steps=3,
            max_new_tokens=6,
        ),
        callbacks=[snapshot],
    )
    summary = run.summary
    assert summary["decoding"]["preset"] == "greedy" and summary["decoding"]["max_new_tokens"] == 6
    # a Chinese BertTokenizer caption is one token per character: at most 6 after the prompt
    assert all(len(p) <= 6 for p in run.predictions["prediction"])
    assert summary["decoder"] == "bert" and summary["steps"] == 3 and summary["n_test_images"] == N_TEST
    assert summary["meteor"] is None and "java" in summary["meteor_missing_reason"]
    assert summary["trainable_parameters"]["frozen"] == sum(
        p.numel() for p in run.bundle.model.encoder.parameters()
    )
    encoder = [n for n in snapshot.before if n.startswith("encoder.")]
    decoder = [n for n in snapshot.before if n.startswith("decoder.")]
    assert encoder and all(torch.equal(snapshot.before[n], snapshot.after[n]) for n in encoder)
    assert any(not torch.equal(snapshot.before[n], snapshot.after[n]) for n in decoder)
    assert len(run.predictions) == N_TEST
    assert not any(p.startswith("一张图片") for p in run.predictions["prediction"])  # the prompt is stripped


class StopAt(TrainerCallback):
    """Simulates an interruption right after the checkpoint at `step`."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _losses(history):
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(prepared_run, tmp_path, no_java):
    settings = dict(max_steps=6, save_steps=3)
    full = ed.train_encoder_decoder(_config(prepared_run, tmp_path / "full", **settings))
    ed.train_encoder_decoder(_config(prepared_run, tmp_path / "cut", **settings), callbacks=[StopAt(3)])
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-3").is_dir()
    resumed = ed.train_encoder_decoder(_config(prepared_run, tmp_path / "cut", **settings, resume="auto"))
    assert resumed.summary["steps"] == full.summary["steps"] == 6
    a, b = _losses(full.log_history), _losses(resumed.log_history)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    for (_, la), (_, lb) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-4, abs=1e-5)
    assert resumed.predictions["prediction"].tolist() == full.predictions["prediction"].tolist()


def test_bad_parameters_name_themselves(prepared_run, tmp_path):
    with pytest.raises(ValueError, match="decoder must be one of"):
        ed.train_encoder_decoder(_config(prepared_run, tmp_path / "a", decoder="t5"))
    missing = str(tmp_path / "no-such-decoder")
    with pytest.raises(ValueError, match="decoder_model=.*no such folder"):
        ed.train_encoder_decoder(
            _config(prepared_run, tmp_path / "b", encoder=str(tmp_path), decoder_model=missing)
        )
    with pytest.raises(ValueError, match='encoder="demo"'):
        ed.train_encoder_decoder(_config(prepared_run, tmp_path / "c", decoder_model=missing))
    with pytest.raises(ValueError, match="unknown decoding preset 'beems'"):
        ed.train_encoder_decoder(_config(prepared_run, tmp_path / "d", decoding="beems"))
    with pytest.raises(ValueError, match="tokenization"):
        ed.train_encoder_decoder(_config(prepared_run, tmp_path / "e", tokenization="words"))
    with pytest.raises(ValueError, match="label_smoothing"):
        ed.train_encoder_decoder(_config(prepared_run, tmp_path / "f", label_smoothing=1.5))
    with pytest.raises(ValueError, match="max_new_tokens"):
        ed.train_encoder_decoder(_config(prepared_run, tmp_path / "g", max_new_tokens=-1))


def test_command_line_options_are_the_config_fields_and_it_runs(prepared_run, tmp_path):
    fields = dataclasses.fields(TrainEncoderDecoderConfig)
    parser = TrainEncoderDecoderConfig.argument_parser("python -m nbutils.train_encoder_decoder")
    assert [a.dest for a in parser._actions if a.dest != "help"] == [f.name for f in fields]
    config = TrainEncoderDecoderConfig.from_arguments(["--run-dir", "r", "--freeze-encoder", "true"])
    assert config.freeze_encoder is True and config.output_dir == os.path.join("r", "train_encoder_decoder")

    # plain `python -m`, java hidden from PATH (METEOR None) to keep it short
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "CUDA_VISIBLE_DEVICES": ""}
    argv = [
        "--run-dir",
        str(prepared_run["run_dir"]),
        "--output-dir",
        str(tmp_path / "cli"),
        "--max-steps",
        "2",
    ]
    for name, value in TINY.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    done = subprocess.run(
        [sys.executable, "-m", "nbutils.train_encoder_decoder", *argv, "--resume", ""],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["n_test_images"] == N_TEST and summary["meteor"] is None


def test_headline_says_what_happened_in_one_sentence():
    summary = {"decoder": "gpt2", "steps": 1300, "train_seconds": 147.2, "cider": 1.6461, "n_test_images": 267,
               "baseline": {"cider": 0.2031}, "empty_captions": 0,
               "true_captions": {"cider": 2.5413, "attribute_scores": {"hallucination_rate": 0.0}},
               "attribute_scores": {"single_object": {"colour": {"precision": 98.6}, "shape": {"precision": 75.68}},
                                    "hallucination_rate": 43.45}}  # fmt: skip
    assert ed.headline(summary) == (
        "Trained a ViT → GPT-2 captioner for 1,300 steps in 2.5 min: CIDEr 1.646 on 267 test images "
        "(true captions 2.541), 8.1× the constant caption's 0.203; single-object precision colour 98.6 %, "
        "shape 75.7 %; hallucinated objects in 43.5 % of captions (true captions 0.0 %)."
    )
    bert = {
        **summary,
        "decoder": "bert",
        "attribute_scores": None,
        "true_captions": None,
        "train_seconds": 42.0,
    }
    assert ed.headline(bert) == (
        "Trained a ViT → BERT captioner for 1,300 steps in 42 s: CIDEr 1.646 on 267 test images, "
        "8.1× the constant caption's 0.203."
    )


def test_torchrun_two_processes_on_cpu(prepared_run, tmp_path):
    """train_encoder_decoder under torchrun (gloo on CPU): each rank trains on other caption rows; both end with
    the same weights (DDP averaged every gradient), and rank 0 alone writes the stage."""
    config = _config(prepared_run, tmp_path / "ddp", max_steps=3, batch_size=4)
    ranks = torchrun.run_ranks(ed.train_encoder_decoder, config, tmp_path)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 8 and summary["steps"] == 3
    torch.manual_seed(config.seed)
    start, _ = ed.load_bundle(config, stages.load_prepared(prepared_run["run_dir"]), "zh")
    # The ViT's pooler is not used: the decoder cross-attends to the encoder's last hidden states.
    torchrun.assert_same_trained_weights(ranks, start.model.state_dict(), unused=("encoder.pooler.",))
