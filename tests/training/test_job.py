"""The training job skeleton the three training stages share (nbutils.training.job)."""

import dataclasses

import pytest
import torch
from transformers import TrainingArguments

from nbutils.training import job
from nbutils.training.clip import TrainClipConfig
from nbutils.training.encoder_decoder import TrainEncoderDecoderConfig

SHARED = [f.name for f in dataclasses.fields(job.TrainingConfig)]


def test_resume_checkpoint_auto_picks_the_newest_by_step(tmp_path):
    assert job.resume_checkpoint(tmp_path, "auto") is None
    assert job.resume_checkpoint(tmp_path / "missing", "auto") is None
    for step in (3, 12, 9):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert job.resume_checkpoint(tmp_path, "auto") == str(tmp_path / "checkpoint-12")
    assert job.resume_checkpoint(tmp_path, "") is None
    assert job.resume_checkpoint(tmp_path, "some/checkpoint-3") == "some/checkpoint-3"


@pytest.mark.parametrize("config_class", [TrainClipConfig, TrainEncoderDecoderConfig])
def test_both_jobs_declare_the_shared_fields_first(config_class):
    names = [f.name for f in dataclasses.fields(config_class)]
    assert names[: len(SHARED)] == SHARED
    assert SHARED[:3] == ["run_dir", "output_dir", "seed"] and "report_to" in SHARED and "resume" in SHARED


def test_training_arguments_from_the_shared_fields(tmp_path):
    config = TrainEncoderDecoderConfig(
        run_dir="r",
        epochs=3.0,
        max_steps=7,
        batch_size=5,
        weight_decay=0.2,
        warmup_ratio=0.25,
        gradient_accumulation_steps=2,
        max_grad_norm=0.5,
        eval_steps=4,
        save_steps=0,
        logging_steps=2,
        num_workers=1,
        seed=11,
    )
    args = job.training_arguments(config, tmp_path / "ckpt", learning_rate=3e-4, dataloader_drop_last=True)
    assert isinstance(args, TrainingArguments)
    assert args.output_dir == str(tmp_path / "ckpt") and args.learning_rate == 3e-4
    assert (args.num_train_epochs, args.max_steps, args.per_device_train_batch_size) == (3.0, 7, 5)
    assert args.per_device_eval_batch_size == 5 and args.gradient_accumulation_steps == 2
    assert (args.weight_decay, args.warmup_steps, args.max_grad_norm) == (0.2, 0.25, 0.5)
    assert args.lr_scheduler_type == "cosine" and args.dataloader_drop_last is True
    assert args.eval_strategy == "steps" and args.eval_steps == 4 and args.save_strategy == "epoch"
    assert (args.logging_steps, args.dataloader_num_workers, args.seed, args.data_seed) == (2, 1, 11, 11)
    assert args.remove_unused_columns is False and args.bf16 == (
        torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )
    off = job.training_arguments(
        config, tmp_path, learning_rate=1e-3, dataloader_drop_last=False, evaluate=False
    )
    assert off.eval_strategy == "no" and off.dataloader_drop_last is False


def test_image_batch_trainer_normalises_uint8_in_the_model_dtype(tmp_path):
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = job.ImageBatchTrainer(model=model, args=args, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    pixels = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    out = trainer.normalized_pixels(model, {"pixel_values": pixels})
    assert out.dtype == torch.bfloat16 and pixels.dtype == torch.uint8
    expected = torch.tensor([[-2.0, 2.0], [-1.0, 1.0], [-0.5, 0.5]])
    torch.testing.assert_close(out.float().view(3, 2), expected, atol=1e-2, rtol=0)


def test_min_lr_ratio_puts_a_floor_under_the_cosine_schedule(tmp_path):
    from transformers.optimization import get_scheduler

    config = TrainEncoderDecoderConfig(run_dir="r", max_steps=100, warmup_ratio=0.1, min_lr_ratio=0.5)
    args = job.training_arguments(config, tmp_path, learning_rate=1e-3, dataloader_drop_last=False)
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 0.5}
    # the schedule the Trainer builds from these arguments: warm-up to the peak, then cosine down to half of it
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=10,
        num_training_steps=100,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    rates = []
    for _ in range(100):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[10] == pytest.approx(1e-3) and rates[-1] == pytest.approx(5e-4, rel=0.01)
    assert min(rates[10:]) >= 5e-4 - 1e-12
    with pytest.raises(ValueError, match="min_lr_ratio"):
        job.training_arguments(
            dataclasses.replace(config, min_lr_ratio=1.0),
            tmp_path,
            learning_rate=1e-3,
            dataloader_drop_last=False,
        )


def test_resume_checkpoint_resumes_only_checkpoints_of_the_same_settings(tmp_path, capsys):
    settings = {"epochs": 2.0, "patch_size": 21, "resume": "auto"}
    assert job.resume_checkpoint(tmp_path, "", settings) is None  # a fresh run records its settings
    assert job.read_json(tmp_path / job.SETTINGS_FILE) == {"epochs": 2.0, "patch_size": 21}
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    # Same settings ("resume" aside): the newest checkpoint, nothing deleted.
    assert job.resume_checkpoint(tmp_path, "auto", {**settings, "resume": ""}) == str(
        tmp_path / "checkpoint-6"
    )
    assert (tmp_path / "checkpoint-3").is_dir()
    # One parameter changed: a fresh start, the old checkpoints gone, the new settings recorded.
    assert job.resume_checkpoint(tmp_path, "auto", {**settings, "patch_size": 8}) is None
    assert "patch_size" in capsys.readouterr().out
    assert not list(tmp_path.glob("checkpoint-*"))
    assert job.read_json(tmp_path / job.SETTINGS_FILE)["patch_size"] == 8


def test_resume_checkpoint_fresh_start_and_unrecorded_checkpoints_are_not_resumed(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()  # written before settings were recorded
    assert job.resume_checkpoint(tmp_path, "auto", {"epochs": 1.0}) is None
    assert not (tmp_path / "checkpoint-4").exists()
    (tmp_path / "checkpoint-2").mkdir()
    assert job.resume_checkpoint(tmp_path, "", {"epochs": 1.0}) is None
    assert not (tmp_path / "checkpoint-2").exists()
