"""Contrastive training end to end on the shared tiny prepared demo run (CPU, seconds per test).

The run is `prepared_run` (tests/conftest.py): 60 demo images at 32 px, 39 / 9 / 12 train / val / test
images. It is read-only; every training writes to tmp_path.
"""

import dataclasses
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertModel, TrainerCallback, TrainingArguments, ViTConfig, ViTModel

from nbutils import stages
from nbutils import train_clip as cli
from nbutils.data.datasets import ContrastiveCollator
from nbutils.errors import DataError
from nbutils.evaluation.embeddings import embed, embed_texts
from nbutils.models import clip as clip_models
from nbutils.models.image_processors import load_image_processor
from nbutils.models.tokenizer import train_tokenizer
from nbutils.training import clip as clip_training
from nbutils.training import clip_loss
from nbutils.training.clip import TrainClipConfig
from tests.training import torchrun

TINY = dict(batch_size=8, logging_steps=1, projection_dim=32, epochs=1.0)
N_TRAIN, N_TEST = 39, 12  # images in the shared run's train and test splits


def _config(prepared_run, output_dir, **overrides) -> TrainClipConfig:
    """A TrainClipConfig on the shared prepared run, writing to `output_dir`."""
    return TrainClipConfig(
        run_dir=str(prepared_run["run_dir"]), output_dir=str(output_dir), **{**TINY, **overrides}
    )


@pytest.fixture(scope="module")
def trained(prepared_run, tmp_path_factory):
    """One tiny training (4 steps) shared by the tests that only read its results.

    Written to <tmp>/run/train_clip, so <tmp>/run is a run folder that `stages.load_trained_clip` reads.
    """
    out = tmp_path_factory.mktemp("trained") / "run" / "train_clip"
    run = clip_training.train_clip(_config(prepared_run, out, max_steps=4, resume=""))
    return SimpleNamespace(run=run, output_dir=out, prepared=stages.load_prepared(prepared_run["run_dir"]))


class StopAt(TrainerCallback):
    """Simulates an interruption right after the checkpoint at `step`."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _losses(history):
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(prepared_run, tmp_path):
    full = clip_training.train_clip(
        _config(prepared_run, tmp_path / "full", max_steps=6, save_steps=3, resume="")
    )
    clip_training.train_clip(
        _config(prepared_run, tmp_path / "cut", max_steps=6, save_steps=3, resume=""), callbacks=[StopAt(3)]
    )
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-3").is_dir()
    resumed = clip_training.train_clip(
        _config(prepared_run, tmp_path / "cut", max_steps=6, save_steps=3, resume="auto")
    )
    assert resumed.summary["steps"] == full.summary["steps"] == 6
    a, b = _losses(full.log_history), _losses(resumed.log_history)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    for (_, la), (_, lb) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-4, abs=1e-5)


def test_summary_and_saved_model(trained):
    run, out = trained.run, trained.output_dir
    summary = json.loads((out / "summary.json").read_text())
    for key in (
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
    ):
        assert key in summary
    assert summary["n_test_images"] == N_TEST and summary["chance_r1"] == pytest.approx(100 / N_TEST)
    assert set(summary["initial"]) >= {"i2t_r1", "t2i_r1", "mean_recall"}
    assert (out / "trainer_state.json").is_file()
    assert (
        set(summary["zero_shot_accuracy"])
        == set(summary["linear_probe_accuracy"])
        == {"colour", "shape", "size"}
    )
    assert summary["zero_shot_chance"] == pytest.approx({"colour": 12.5, "shape": 20.0, "size": 50.0})
    assert all(0 <= v <= 100 for v in summary["linear_probe_accuracy"].values())
    assert summary["hard_negatives"] is None and summary["chance_loss"] == pytest.approx(math.log(8))
    assert summary["train_seconds"] > 0
    assert run.linear_probe["n"].tolist() == run.zero_shot["n"].tolist()  # the same single-object test images
    assert type(run.bundle.model.text_model).__name__ == "CLIPTextModel"  # the demo's default text tower
    assert run.overview().data.loc["training steps"].iloc[0] == "4"
    assert summary["headline"].startswith("Trained 4 steps in ") and "image→text R@1 " in summary["headline"]
    assert "zero-shot colour " in summary["headline"] and summary["headline"] == clip_training.headline(
        summary
    )
    assert run.attribute_table("linear_probe").data.index.name == "attribute"
    assert summary["mode"] == "demo" and summary["learning_rate"] == TrainClipConfig.LEARNING_RATES["demo"]
    assert summary["steps"] == 4

    # save_pretrained folder -> identical embeddings through our loader and through plain transformers
    again = clip_models.load_clip_model(str(out / "model"))
    mean, std = trained.prepared.mean_std
    images, texts, _ = embed(again, run.test, mean, std)
    assert torch.allclose(images, run.test_image_embeds, atol=1e-6)
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(out / "model")
    assert type(plain).__name__ == "VisionTextDualEncoderModel"


def test_hard_negatives_train_through_the_trainer(prepared_run, tmp_path):
    """hard_negatives=True: the table is learned from the train captions, each batch carries negatives, the loss
    equals clip_loss with them (its chance level is higher), and the table is recorded in the summary."""
    strict = _config(prepared_run, tmp_path / "strict", max_steps=2, resume="", hard_negatives=True)
    with pytest.raises(
        ValueError, match="hard_negative_similarity=0.95"
    ):  # 195 captions: too few for the default
        clip_training.train_clip(strict)
    config = dataclasses.replace(strict, output_dir=str(tmp_path / "hn"), hard_negative_similarity=0.6)
    run = clip_training.train_clip(config)
    table = run.summary["hard_negatives"]
    assert table["language"] == "zh" and table["replaceable_words"] > 10
    assert set(table["substitutes"]["红色"]) >= {"蓝色", "绿色"}
    assert "的" not in table["substitutes"] and "一个" not in table["substitutes"]
    assert set(table["substitutes"]["圆形"]) <= {"正方形", "三角形", "星形", "十字形"}
    assert run.summary["chance_loss"] == pytest.approx((math.log(8) + math.log(16)) / 2)
    assert run.summary["steps"] == 2

    # the Trainer's loss on a batch is clip_loss over its captions and their negatives
    from nbutils.data.hard_negatives import HardNegatives
    from nbutils.training.clip_loss import clip_loss

    prepared = stages.load_prepared(prepared_run["run_dir"])
    train = prepared.tables["train"]
    negatives = HardNegatives.from_captions(
        list(train["text"]), list(train["image_path"]), "zh", min_similarity=0.6
    )
    collate = ContrastiveCollator(run.bundle.tokenizer, 64, negatives)
    dataset = prepared.dataset("train")
    batch = collate([dataset[i] for i in range(8)])
    trainer = clip_training.ContrastiveTrainer(
        model=run.bundle.model,
        args=TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none", use_cpu=True),
        mean=prepared.mean_std[0],
        std=prepared.mean_std[1],
    )
    model = run.bundle.model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(model, dict(batch))
        pixels = trainer.normalized_pixels(model, batch)
        want = clip_loss(
            clip_models.image_features(model, pixels),
            clip_models.text_features(model, batch["input_ids"], batch["attention_mask"]),
            model.logit_scale,
            batch["text_groups"],
            negative_features=clip_models.text_features(
                model, batch["negative_input_ids"], batch["negative_attention_mask"]
            ),
            negative_groups=batch["negative_groups"],
        )
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_load_clip_gives_the_trained_bundle_back(trained, tmp_path):
    run, out = trained.run, trained.output_dir
    loaded = stages.load_trained_clip(out.parent)
    assert loaded.model_dir == out / "model"
    assert loaded.summary == json.loads(json.dumps(run.summary))
    assert loaded.bundle.kind == "dual_encoder"
    mean, std = trained.prepared.mean_std
    got = embed(loaded.bundle, run.test, mean, std)
    want = embed(run.bundle, run.test, mean, std)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[0], run.test_image_embeds)
    torch.testing.assert_close(got[1], want[1])
    assert got[2].tolist() == want[2].tolist()
    assert loaded.bundle.tokenizer.get_vocab() == run.bundle.tokenizer.get_vocab()
    # a run folder without a finished train_clip stage says what to run
    with pytest.raises(DataError, match=r"has no finished train_clip .*Run notebooks/train_clip.ipynb"):
        stages.load_trained_clip(tmp_path)


def test_search_examples_return_k_images_per_query_best_first(trained):
    run = trained.run
    examples = run.search_examples(n_queries=4, k=5)
    assert [e["target"] for e in examples] == [0, 3, 6, 9]  # evenly spaced over the 12 test images
    sims = embed_texts(run.bundle, [e["query"] for e in examples]) @ run.test_image_embeds.T
    for example, row in zip(examples, sims):
        assert example["query"] == run.test.captions[example["target"]][0]
        assert len(example["images"]) == len(example["scores"]) == 5
        assert example["scores"] == sorted(example["scores"], reverse=True)
        expected = row.topk(5)
        assert example["images"] == expected.indices.tolist()
        assert example["scores"] == pytest.approx(expected.values.tolist(), abs=1e-5)
    # k larger than the test split: every test image, once
    everything = run.search_examples(n_queries=2, k=50)
    assert len(everything) == 2
    for example in everything:
        assert sorted(example["images"]) == list(range(N_TEST))
        assert example["scores"] == sorted(example["scores"], reverse=True)


def test_temperature_is_clamped_and_not_decayed(prepared_run, tmp_path):
    config = _config(prepared_run, tmp_path / "out", projection_dim=16)
    bundle, mode = clip_training.load_bundle(config, stages.load_prepared(prepared_run["run_dir"]))
    assert mode == "demo"
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = clip_training.ContrastiveTrainer(model=bundle.model, args=args)
    decayed = trainer.get_decay_parameter_names(bundle.model)
    assert "logit_scale" not in decayed and any("weight" in n for n in decayed)

    scale = clip_models.logit_scale_parameter(bundle.model)
    with torch.no_grad():
        scale.fill_(8.0)
    cb = clip_training.TemperatureAndEpochCallback(dataset=None)
    cb.on_step_end(args, None, None, model=bundle.model)
    assert scale.item() == pytest.approx(math.log(100))


def test_collator_groups_identical_captions_and_dataset_varies_captions_by_epoch(prepared_run):
    prepared = stages.load_prepared(prepared_run["run_dir"])
    ds = prepared.dataset("train", seed=0)
    assert len(ds) == N_TRAIN
    picks = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        picks.append(ds[0]["text"])
    assert len(set(picks)) > 1 and set(picks) <= set(ds.captions[0])
    assert ds[0]["pixel_values"].dtype == torch.uint8 and ds[0]["pixel_values"].shape == (3, 32, 32)
    tok = train_tokenizer(["一个红色的圆形", "蓝色方块"])
    texts = ("一个红色的圆形", "蓝色方块", "一个红色的圆形")
    batch = ContrastiveCollator(tok)(
        [
            {"pixel_values": torch.zeros(3, 2, 2, dtype=torch.uint8), "text": t, "image_index": i}
            for i, t in enumerate(texts)
        ]
    )
    groups = batch["text_groups"].tolist()
    assert groups[0] == groups[2] != groups[1]
    assert batch["image_index"].tolist() == [0, 1, 2]


def test_bad_inputs_name_the_parameter(prepared_run, tmp_path):
    with pytest.raises(ValueError, match="^model='.*no-such-model': no such folder"):
        clip_training.train_clip(_config(prepared_run, tmp_path / "a", model=str(tmp_path / "no-such-model")))
    with pytest.raises(ValueError, match="text_model"):
        clip_training.train_clip(_config(prepared_run, tmp_path / "b", model="compose", vision_model="x"))
    with pytest.raises(ValueError, match=f"batch_size=512 is larger than the {N_TRAIN} training images"):
        clip_training.train_clip(_config(prepared_run, tmp_path / "c", batch_size=512))
    with pytest.raises(DataError, match=r"empty-run does not exist. Run notebooks/processdata_03.ipynb"):
        clip_training.train_clip(
            dataclasses.replace(_config(prepared_run, tmp_path / "d"), run_dir=str(tmp_path / "empty-run"))
        )
    # a pretrained tower whose input size differs from the cache: a clear error, not a shape crash
    prepared = stages.load_prepared(prepared_run["run_dir"])
    bundle, _ = clip_training.load_bundle(_config(prepared_run, tmp_path / "x", projection_dim=16), prepared)
    big = clip_models.build_demo_dual_encoder(bundle.tokenizer, image_size=64, projection_dim=16)
    folder = tmp_path / "ckpt64"
    clip_models.save_clip(
        clip_models.ClipBundle(big, bundle.tokenizer, load_image_processor("vit", 64), "dual_encoder"), folder
    )
    with pytest.raises(ValueError, match="image_size"):
        clip_training.train_clip(_config(prepared_run, tmp_path / "e", model=str(folder)))


def test_compose_and_pretrained_modes_train_with_their_learning_rates(prepared_run, trained, tmp_path):
    """model="compose" pairs a ViT and a BERT folder; a saved dual encoder folder is "pretrained"."""
    prepared = trained.prepared
    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    vit = tmp_path / "vit"
    ViTModel(ViTConfig(image_size=32, patch_size=8, **tiny)).save_pretrained(vit)
    prepared.image_processor.save_pretrained(vit)  # exactly the cache's geometry
    bert = tmp_path / "bert"
    tokenizer = train_tokenizer(list(prepared.tables["train"]["text"]))
    BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, **tiny)).save_pretrained(bert)
    tokenizer.save_pretrained(bert)

    composed = clip_training.train_clip(
        _config(
            prepared_run,
            tmp_path / "compose" / "train_clip",
            model="compose",
            vision_model=str(vit),
            text_model=str(bert),
            max_steps=1,
            resume="",
        )
    )
    assert composed.summary["mode"] == "compose" and composed.summary["steps"] == 1
    assert composed.summary["learning_rate"] == TrainClipConfig.LEARNING_RATES["compose"] == 5e-5
    reloaded = stages.load_trained_clip(tmp_path / "compose")
    assert reloaded.bundle.kind == "dual_encoder" and reloaded.summary["mode"] == "compose"

    pretrained = clip_training.train_clip(
        _config(
            prepared_run,
            tmp_path / "pretrained",
            model=str(trained.output_dir / "model"),
            max_steps=1,
            resume="",
        )
    )
    assert pretrained.summary["mode"] == "pretrained"
    assert pretrained.summary["learning_rate"] == TrainClipConfig.LEARNING_RATES["pretrained"] == 1e-5


# -----------------------------------------------------------------------------
# the command line


def test_command_line_entry_trains_and_writes_a_summary(prepared_run, tmp_path):
    assert (
        cli.main(
            [
                "--run-dir",
                str(prepared_run["run_dir"]),
                "--output-dir",
                str(tmp_path / "cli"),
                "--max-steps",
                "2",
                "--batch-size",
                "8",
                "--projection-dim",
                "16",
                "--resume",
                "",
                "--lock-image",
                "true",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainable_parameters"]["frozen"] > 0


def _other_value(value):
    """A value of the same type as `value` that differs from it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 3 if isinstance(value, int) else value + 0.25
    return "other-" + value


def test_command_line_options_are_exactly_the_config_fields(monkeypatch, capsys):
    fields = dataclasses.fields(TrainClipConfig)
    parser = TrainClipConfig.argument_parser("python -m nbutils.train_clip")
    actions = [a for a in parser._actions if a.dest != "help"]
    assert [a.dest for a in actions] == [f.name for f in fields]
    assert [a.option_strings for a in actions] == [["--" + f.name.replace("_", "-")] for f in fields]
    assert [a.dest for a in actions if a.required] == ["run_dir"]
    for action, f in zip(actions, fields):
        if f.name not in ("run_dir", "output_dir"):
            assert action.default == f.default, f.name

    # through the real entry point, with training replaced by a recorder
    seen = []

    def record(config, callbacks=()):
        seen.append(config)
        return SimpleNamespace(summary={"ok": 1})

    monkeypatch.setattr(clip_training, "train_clip", record)
    assert cli.main(["--run-dir", "runs/a"]) == 0
    assert seen[-1] == TrainClipConfig(run_dir="runs/a", output_dir=os.path.join("runs/a", "train_clip"))
    assert json.loads(capsys.readouterr().out) == {"ok": 1}

    # every field set away from its default on the command line arrives in the config, typed
    values = {f.name: _other_value(f.default) for f in fields}
    argv = []
    for name, value in values.items():
        argv += ["--" + name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    assert cli.main(argv) == 0
    assert seen[-1] == TrainClipConfig(**values)
    assert all(type(getattr(seen[-1], f.name)) is type(f.default) for f in fields)

    with pytest.raises(SystemExit):
        cli.main(["--run-dir", "r", "--no-such-option", "1"])
    with pytest.raises(SystemExit):
        cli.main(["--output-dir", "o"])  # --run-dir is required
    assert "--run-dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("false", False),
        ("True", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("off", False),
    ],
)
def test_command_line_bools_parse_true_and_false(text, value):
    for option in ("lock_image", "lock_text", "projections_only"):
        config = TrainClipConfig.from_arguments(["--run-dir", "r", "--" + option.replace("_", "-"), text])
        assert getattr(config, option) is value


def test_command_line_rejects_a_bool_that_is_neither(capsys):
    with pytest.raises(SystemExit):
        TrainClipConfig.from_arguments(["--run-dir", "r", "--lock-image", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_torchrun_two_processes_on_cpu(prepared_run, tmp_path):
    """train_clip under torchrun (gloo on CPU): DDP plus the gathered loss, end to end. Each rank trains on
    other images; both end with the same weights, so every parameter's gradient was averaged across ranks,
    including those of the text buckets and the caption-word head that run outside DDP's forward."""
    config = _config(
        prepared_run,
        tmp_path / "ddp",
        max_steps=3,
        batch_size=4,
        projection_dim=16,
        hard_negatives=True,
        hard_negative_similarity=0.1,
        word_loss_weight=1.0,
        text_buckets=2,
        resume="",
    )
    ranks = torchrun.run_ranks(clip_training.train_clip, config, tmp_path)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["global_batch_size"] == 8 and summary["steps"] == 3 and summary["world_size"] == 2
    assert summary["chance_train_loss"] == pytest.approx(clip_loss.chance_loss(8, 1))  # the gathered batch
    assert summary["chance_loss"] == pytest.approx(clip_loss.chance_loss(4, 1))  # one process's, as evaluated
    assert any(k.startswith("word_head") for k in ranks[0])
    start = clip_training.load_bundle(
        _config(prepared_run, tmp_path / "x", projection_dim=16),
        stages.load_prepared(prepared_run["run_dir"]),
    )[0].model.state_dict()
    torchrun.assert_same_trained_weights(ranks, start)


def test_two_nodes_train_as_one_process_on_the_whole_batch(shard_run, tmp_path):
    """Two torchrun agents on 127.0.0.1 (the multi-node launch: --nnodes 2, one process each, gloo) reading a
    shard cache with 4 images per process end with the weights of one process trained on batches of 8: the
    gathered loss and DDP's averaging give the single-process gradient of the whole batch, step after step.
    (ViT tower: a CNN's BatchNorm statistics are per process, so its forward pass differs with the batch split.)"""
    assert stages.load_prepared(shard_run["run_dir"]).summary()["cache_format"] == "shards-jpeg"
    settings = dict(max_steps=2, projection_dim=16, vision_tower="vit", text_buckets=1, resume="")
    two = torchrun.run_ranks(
        clip_training.train_clip,
        _config(shard_run, tmp_path / "two" / "out", batch_size=4, **settings),
        tmp_path / "two",
        processes=2,
        nodes=2,
    )
    one = torchrun.run_ranks(
        clip_training.train_clip,
        _config(shard_run, tmp_path / "one" / "out", batch_size=8, **settings),
        tmp_path / "one",
        processes=1,
    )
    assert two[0].keys() == one[0].keys()
    # A key projection's bias gets no gradient (a softmax ignores what is added to all of a query's logits):
    # AdamW turns its rounding-level gradient into full steps, which differ with the order of the sums.
    for name in (n for n in one[0] if not n.endswith("k_proj.bias")):
        torch.testing.assert_close(two[0][name], one[0][name], rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(two[1][name], one[0][name], rtol=1e-4, atol=1e-5, msg=name)
    summary = json.loads((tmp_path / "two" / "out" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 8


def test_length_buckets_partition_the_rows_and_cut_only_padding():
    torch.manual_seed(0)
    lengths = torch.randint(1, 30, (37,))
    right = (torch.arange(32)[None, :] < lengths[:, None]).long()
    buckets = clip_training.length_buckets(right, 4)
    assert len(buckets) == 4
    assert sorted(torch.cat([rows for rows, _ in buckets]).tolist()) == list(range(37))
    for rows, width in buckets:
        assert width == int(lengths[rows].max())
    widths = [w for _, w in buckets]
    assert widths == sorted(widths, reverse=True) and widths[0] == int(lengths.max())
    # left padding: the used columns end at the last one, so nothing is cut
    left = right.flip(1)
    assert [w for _, w in clip_training.length_buckets(left, 4)] == [32] * 4
    # more buckets than rows: one row each
    assert len(clip_training.length_buckets(right[:3], 8)) == 3


def test_text_buckets_give_the_same_loss_and_gradients(trained, tmp_path):
    """The bucketed text pass is an optimisation only: loss and every gradient as with one padded pass."""
    from nbutils.data.hard_negatives import HardNegatives

    prepared, bundle = trained.prepared, trained.run.bundle
    table, dataset = prepared.tables["train"], prepared.dataset("train")
    negatives = HardNegatives.from_captions(
        list(table["text"]), list(table["image_path"]), "zh", min_similarity=0.1
    )
    batch = ContrastiveCollator(bundle.tokenizer, 64, negatives, 2)([dataset[i] for i in range(8)])
    widths = batch["attention_mask"].sum(1)
    assert widths.min() < widths.max()  # there is padding to cut
    model = bundle.model.eval()
    results = []
    for buckets in (1, 3):
        trainer = clip_training.ContrastiveTrainer(
            model=model,
            args=TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none", use_cpu=True),
            mean=prepared.mean_std[0],
            std=prepared.mean_std[1],
            text_buckets=buckets,
        )
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append(
            (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (loss1, grads1), (loss3, grads3) = results
    assert loss3 == pytest.approx(loss1, rel=1e-5)
    assert grads1.keys() == grads3.keys() and any(k.startswith("text_model") for k in grads1)
    for name in grads1:
        torch.testing.assert_close(grads3[name], grads1[name], rtol=1e-4, atol=1e-6, msg=name)
    model.zero_grad()


def test_text_buckets_must_be_positive(prepared_run, tmp_path):
    with pytest.raises(ValueError, match="text_buckets must be at least 1, got 0"):
        clip_training.train_clip(_config(prepared_run, tmp_path, text_buckets=0))


def test_caption_word_loss_trains_resumes_and_leaves_a_plain_model(prepared_run, tmp_path):
    """word_loss_weight > 0: a head on the image tower predicts each image's grounded caption words. The
    Trainer's loss is clip_loss + weight x caption_word_loss; a resumed run restores the head from the
    checkpoint (same losses as an uninterrupted run); the saved model has no head."""
    from safetensors.torch import load_file

    from nbutils.data.caption_words import CaptionWords, caption_word_loss
    from nbutils.training.clip_loss import clip_loss

    words = dict(max_steps=6, save_steps=3, word_loss_weight=2.0)
    full = clip_training.train_clip(_config(prepared_run, tmp_path / "full", resume="", **words))
    summary = full.summary
    assert summary["word_loss_weight"] == 2.0 and summary["caption_words"]["language"] == "zh"
    assert {"红色", "圆形"} <= set(summary["caption_words"]["words"])
    assert "的" not in summary["caption_words"]["words"]
    assert not hasattr(full.bundle.model, "word_head")
    saved = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    assert saved and not any(k.startswith("word_head") for k in saved)
    checkpoint = load_file(str(tmp_path / "full" / "checkpoints" / "checkpoint-6" / "model.safetensors"))
    pooled_size = full.bundle.model.config.vision_config.hidden_size
    assert checkpoint["word_head.weight"].shape == (summary["caption_words"]["n_words"], pooled_size)

    clip_training.train_clip(
        _config(prepared_run, tmp_path / "cut", resume="", **words), callbacks=[StopAt(3)]
    )
    resumed = clip_training.train_clip(_config(prepared_run, tmp_path / "cut", resume="auto", **words))
    a, b = _losses(full.log_history), _losses(resumed.log_history)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    for (_, la), (_, lb) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-4, abs=1e-5)

    # the Trainer's loss on a batch, against the two losses computed by hand
    prepared = stages.load_prepared(prepared_run["run_dir"])
    table, dataset = prepared.tables["train"], prepared.dataset("train")
    vocabulary = CaptionWords.from_captions(list(table["text"]), list(table["image_path"]), "zh")
    targets = vocabulary.targets(dataset.captions)
    model = full.bundle.model
    clip_training.attach_word_head(model, len(vocabulary.words))
    model.eval()
    trainer = clip_training.ContrastiveTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none", use_cpu=True),
        mean=prepared.mean_std[0],
        std=prepared.mean_std[1],
        word_targets=targets,
        word_loss_weight=2.0,
    )
    batch = ContrastiveCollator(full.bundle.tokenizer, 64)([dataset[i] for i in (5, 0, 7, 2)])
    with torch.no_grad():
        got = trainer.compute_loss(model, dict(batch))
        pixels = trainer.normalized_pixels(model, batch)
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        want = clip_loss(
            clip_models.image_features(model, pixels),
            clip_models.text_features(model, batch["input_ids"], batch["attention_mask"]),
            model.logit_scale,
            batch["text_groups"],
        ) + 2.0 * caption_word_loss(model.word_head(pooled), targets[[5, 0, 7, 2]])
        without = trainer.compute_loss(model, dict(batch), caption_words=False)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert without.item() < got.item()


def test_a_finished_run_run_again_is_not_trained_further(prepared_run, tmp_path, capsys):
    """resume="auto" on a run whose last checkpoint is at max_steps: its weights, no extra step (transformers
    alone would resume mid-epoch and end at max_steps + 1)."""
    from safetensors.torch import load_file

    first = clip_training.train_clip(_config(prepared_run, tmp_path / "run", max_steps=3, resume=""))
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    again = clip_training.train_clip(_config(prepared_run, tmp_path / "run", max_steps=3, resume="auto"))
    assert "is the finished run (step 3 of 3)" in capsys.readouterr().out
    assert again.summary["steps"] == first.summary["steps"] == 3
    assert _losses(again.log_history) == _losses(first.log_history)
    assert again.summary["train_seconds"] is None
    assert again.summary["i2t_r1"] == first.summary["i2t_r1"]
    rerun = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert rerun.keys() == weights.keys() and all(torch.equal(rerun[k], weights[k]) for k in weights)


def test_headline_says_what_happened_in_one_sentence():
    summary = {"steps": 440, "train_seconds": 209.4, "i2t_r1": 81.27, "t2i_r1": 68.6, "chance_r1": 100 / 267,
               "zero_shot_accuracy": {"colour": 98.6, "shape": 94.59, "size": 98.6}}  # fmt: skip
    assert clip_training.headline(summary) == (
        "Trained 440 steps in 3.5 min: image→text R@1 81.3 %, text→image R@1 68.6 % (chance 0.4 %); "
        "zero-shot colour 98.6 %, shape 94.6 %, size 98.6 %."
    )
    plain = {**summary, "train_seconds": None, "zero_shot_accuracy": None}
    assert clip_training.headline(plain) == (
        "Trained 440 steps: image→text R@1 81.3 %, text→image R@1 68.6 % (chance 0.4 %)."
    )
