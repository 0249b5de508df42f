"""Contrastive training end to end on a tiny prepared demo run (CPU, seconds per test)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from nbutils import clip_models, clip_training, demo_data, prepare, train_clip as cli
from nbutils.io import DataError

TINY = dict(batch_size=8, logging_steps=1, projection_dim=32, epochs=1.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """processdata_03's output for 60 demo images at 32 px."""
    tmp = tmp_path_factory.mktemp("clip")
    table = demo_data.generate_demo_dataset(tmp / "demo", n_images=60, image_size=32, progress=False)
    prepare.prepare_dataset(table, tmp / "run" / "processdata_03", dataset_name="tiny", image_size=32,
                            data_dir=tmp / "data", val_fraction=0.15, test_fraction=0.2, num_workers=1,
                            ground_truth=str(tmp / "demo" / "objects.jsonl"))
    return tmp / "run"


class StopAt(TrainerCallback):
    """Simulates an interruption right after the checkpoint at `step`."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _losses(history):
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(run_dir, tmp_path):
    full = clip_training.train_clip(run_dir, tmp_path / "full", max_steps=6, save_steps=3, resume="", **TINY)
    clip_training.train_clip(run_dir, tmp_path / "cut", max_steps=6, save_steps=3, resume="",
                             callbacks=[StopAt(3)], **TINY)
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-3").is_dir()
    resumed = clip_training.train_clip(run_dir, tmp_path / "cut", max_steps=6, save_steps=3, resume="auto", **TINY)
    assert resumed.summary["steps"] == full.summary["steps"] == 6
    a, b = _losses(full.log_history), _losses(resumed.log_history)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    for (_, la), (_, lb) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-4, abs=1e-5)


def test_summary_and_saved_model(run_dir, tmp_path):
    run = clip_training.train_clip(run_dir, tmp_path / "out", max_steps=4, resume="", **TINY)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean_recall", "median_rank_i2t",
                "median_rank_t2i", "chance_r1", "n_test_images", "initial", "final_train_loss", "batch_size"):
        assert key in summary
    assert summary["n_test_images"] == 12 and summary["chance_r1"] == pytest.approx(100 / 12)
    assert set(summary["initial"]) >= {"i2t_r1", "t2i_r1", "mean_recall"}
    assert (tmp_path / "out" / "trainer_state.json").is_file()
    assert set(summary["zero_shot_accuracy"]) == {"colour", "shape", "size"}

    # save_pretrained folder -> identical embeddings through our loader and through plain transformers
    again = clip_models.load_clip_model(str(tmp_path / "out" / "model"))
    prepared = prepare.load_prepared(run_dir)
    mean, std = prepared.mean_std
    images, texts, _ = clip_training.embed(again, run.test, mean, std)
    assert torch.allclose(images, run.test_image_embeds, atol=1e-6)
    from transformers import AutoModel
    plain = AutoModel.from_pretrained(tmp_path / "out" / "model")
    assert type(plain).__name__ == "VisionTextDualEncoderModel"


def test_temperature_is_clamped_and_not_decayed(run_dir, tmp_path):
    bundle, _ = clip_training.load_bundle("demo", prepare.load_prepared(run_dir), projection_dim=16)
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


def test_collator_groups_identical_captions_and_dataset_varies_captions_by_epoch(run_dir):
    prepared = prepare.load_prepared(run_dir)
    ds = clip_training.ImageCaptionDataset(prepared, "train", seed=0)
    picks = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        picks.append(ds[0]["text"])
    assert len(set(picks)) > 1 and set(picks) <= set(ds.captions[0])
    assert ds[0]["pixel_values"].dtype == torch.uint8 and ds[0]["pixel_values"].shape == (3, 32, 32)
    tok = clip_models.train_tokenizer(["一个红色的圆形", "蓝色方块"])
    batch = clip_training.ContrastiveCollator(tok)([{"pixel_values": torch.zeros(3, 2, 2, dtype=torch.uint8),
                                                     "text": t} for t in ("一个红色的圆形", "蓝色方块", "一个红色的圆形")])
    groups = batch["text_groups"].tolist()
    assert groups[0] == groups[2] != groups[1]


def test_bad_inputs_name_the_parameter(run_dir, tmp_path):
    with pytest.raises(ValueError, match="model_name_or_path"):
        clip_training.train_clip(run_dir, tmp_path / "a", model=str(tmp_path / "no-such-model"), **TINY)
    with pytest.raises(ValueError, match="text_model"):
        clip_training.train_clip(run_dir, tmp_path / "b", model="compose", vision_model="x", **TINY)
    with pytest.raises(ValueError, match="batch_size=512"):
        clip_training.train_clip(run_dir, tmp_path / "c", **{**TINY, "batch_size": 512})
    with pytest.raises(DataError, match="run processdata_03"):
        clip_training.train_clip(tmp_path / "empty-run", tmp_path / "d", **TINY)
    # a pretrained tower whose input size differs from the cache: a clear error, not a shape crash
    bundle, _ = clip_training.load_bundle("demo", prepare.load_prepared(run_dir), projection_dim=16)
    big = clip_models.build_demo_dual_encoder(bundle.tokenizer, image_size=64, projection_dim=16)
    folder = tmp_path / "ckpt64"
    from nbutils.image_processors import load_image_processor
    clip_models.save_clip(clip_models.ClipBundle(big, bundle.tokenizer, load_image_processor("vit", 64),
                                                 "dual_encoder"), folder)
    with pytest.raises(ValueError, match="image_size"):
        clip_training.train_clip(run_dir, tmp_path / "e", model=str(folder), **TINY)


def test_command_line_entry_trains_and_writes_a_summary(run_dir, tmp_path):
    assert cli.main(["--run-dir", str(run_dir), "--output-dir", str(tmp_path / "cli"), "--max-steps", "2",
                     "--batch-size", "8", "--projection-dim", "16", "--resume", "", "--lock-image", "true"]) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainable_parameters"]["frozen"] > 0


def test_torchrun_two_processes_on_cpu(run_dir, tmp_path):
    """The same entry point under torchrun (gloo on CPU): DDP plus the gathered loss, end to end."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [torchrun, "--nproc_per_node=2", "--standalone", "-m", "nbutils.train_clip",
           "--run-dir", str(run_dir), "--output-dir", str(tmp_path / "ddp"), "--max-steps", "2",
           "--batch-size", "4", "--projection-dim", "16", "--resume", ""]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["global_batch_size"] == 8 and summary["steps"] == 2
