"""The training job skeleton the three training stages share (train_clip, train_encoder_decoder, train_clipcap).

Each job runs the same steps, in this order; the shared ones live here:

    config     `TrainingConfig`: the training fields every training notebook has (epochs ... report_to), declared
               once; a job's config subclasses it and re-declares a field only to change its default or its help
               (`reworded` keeps the default here). `learning_rate` 0 means the rate for the model's mode, which
               the job's config lists in `LEARNING_RATES`: `config.learning_rate_for(mode)`.
    data       `stages.load_prepared(config.run_dir)`, then `check_image_cache` for a checkpoint's processor
    model      the job's own `load_bundle` (mode "demo" from configs, else checkpoints)
    train      `build_trainer(TrainerClass, config, mode, ...)` (TrainingArguments from the config), then
               `fit(trainer, config)`: resumes as `config.resume` says, returns what every training summary records
    evaluate   the job's own
    save       `save_on_main_process(trainer, output_dir, save)`: the stage's files and trainer_state.json

Parts:
- `ImageBatchTrainer`: a `Trainer` whose batches carry uint8 `pixel_values` (straight from the image
  cache) that it normalises on the device, in the model's dtype, with the processor's mean / std; plus
  the transformers 5 resume fix (`_load_from_checkpoint` through `from_pretrained`).
- `training_arguments(config, ...)`: the `TrainingArguments` of a `TrainingConfig` (cosine schedule with
  warm-up, accumulation, clipping, precision, TF32, compilation, pinned memory, eval / save strategies, seeds).
- `resume_checkpoint(checkpoint_dir, resume, settings)`: what `resume: "auto"` means (only checkpoints of the
  same settings).
- The speed options (`TrainingConfig.precision` ... `gradient_checkpointing`): `resolved_precision` (bf16 or fp32
  here), `set_attention` (attention kernel of a model and its sub-models), `checkpoint_activations` (recompute in
  the backward pass, in a dual encoder's towers too); `build_trainer` applies them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer_utils import TrainOutput

from .. import progress
from ..config import StageConfig, param
from ..data.cache import ImageGeometry
from ..data.datasets import normalize_pixel_values
from ..files import read_json, write_json


@dataclass(frozen=True)
class TrainingConfig(StageConfig):
    """The training fields shared by the training stages (subclasses set `stage` and add their own)."""

    # learning_rate=0: the rate for the model's mode ("demo", "pretrained", ...); each job lists its own.
    LEARNING_RATES: ClassVar[dict[str, float]] = {}

    epochs: float = param(10.0, "passes over the training data")
    max_steps: int = param(-1, "stop after this many steps (-1: run all epochs)")
    batch_size: int = param(64, "per process")
    learning_rate: float = param(0.0, "0 picks the mode's default (the job's LEARNING_RATES)")
    weight_decay: float = param(0.1, "AdamW weight decay")
    warmup_ratio: float = param(0.1, "share of the steps spent warming up the learning rate")
    min_lr_ratio: float = param(0.0, "the cosine schedule ends at this share of the peak learning rate")
    gradient_accumulation_steps: int = param(1, "batches per optimiser step")
    max_grad_norm: float = param(1.0, "gradient clipping")
    eval_steps: int = param(0, "validate every N steps (0: every epoch)")
    save_steps: int = param(0, "checkpoint every N steps (0: every epoch)")
    logging_steps: int = param(10, "log the loss every N steps")
    num_workers: int = param(
        0, "DataLoader workers (processes decoding and collating batches beside training)"
    )
    pin_memory: bool = param(
        True, "page-locked batches, copied to a CUDA GPU while it computes; no effect without one"
    )
    precision: str = param(
        "auto",
        '"auto": bf16 on a CUDA GPU that supports it, else fp32; "bf16" (on CPU too, by autocast) or "fp32"',
    )
    tf32: bool = param(
        True, "TF32 matrix products for the fp32 work on CUDA GPUs from Ampere on; no effect elsewhere"
    )
    attn_implementation: str = param(
        "sdpa",
        'attention kernel: "sdpa" (PyTorch fused attention), "eager", or "flash_attention_2" where installed',
    )
    torch_compile: bool = param(
        False, "compile the model with torch.compile: faster steps after slower first ones"
    )
    gradient_checkpointing: bool = param(
        False,
        "recompute activations in the backward pass: far less activation memory for 20-30 % more compute",
    )
    resume: str = param(
        "auto",
        '"auto" continues from the newest checkpoint in output_dir, "" starts fresh, or a checkpoint folder',
    )
    report_to: str = param("none", 'Trainer loggers: "none", "tensorboard", "wandb", ...')

    def learning_rate_for(self, mode: str) -> float:
        """The learning rate training uses: `learning_rate`, or for 0 the rate `LEARNING_RATES` gives `mode`."""
        return self.learning_rate or self.LEARNING_RATES[mode]


PRECISIONS = ("auto", "bf16", "fp32")


def resolved_precision(precision: str) -> str:
    """What `precision` means on this machine: "bf16" or "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f'precision="bf16": {torch.cuda.get_device_name()} has no bf16; use "auto" or "fp32" (fp32 on this GPU)'
        )
    return precision


def learning_rate_help(rates: dict[str, float]) -> str:
    """The help of a job's `learning_rate`, from its LEARNING_RATES: "0 picks the mode's default: 5e-4 demo, ..."."""
    return "0 picks the mode's default: " + ", ".join(
        f"{_short_float(rate)} {mode}" for mode, rate in rates.items()
    )


def _short_float(x: float) -> str:
    """5e-4 rather than 0.0005 (as learning rates are written)."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def reworded(name: str, help: str):
    """`TrainingConfig`'s field `name` re-declared with another help and the same default (which stays there)."""
    default = next(f.default for f in dataclasses.fields(TrainingConfig) if f.name == name)
    return param(default, help)


def training_arguments(
    config: TrainingConfig,
    checkpoint_dir: str | Path,
    learning_rate: float,
    dataloader_drop_last: bool,
    evaluate: bool = True,
    ddp_find_unused_parameters: bool | None = None,
) -> TrainingArguments:
    """TrainingArguments from `config`'s shared training fields.

    `learning_rate` is the resolved rate (the job picks its default for 0); `dataloader_drop_last` drops a
    ragged last batch (the gathered contrastive loss needs equal batches on every rank; captioning does
    not); `evaluate=False` turns validation off (e.g. a val split smaller than one batch);
    `ddp_find_unused_parameters` is passed on (None: the Trainer's choice, True for most models).
    """
    if not 0.0 <= config.min_lr_ratio < 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1), got {config.min_lr_ratio}")
    cuda = torch.cuda.is_available()
    # TrainingArguments refuses tf32 before Ampere.
    ampere = cuda and torch.cuda.get_device_capability()[0] >= 8
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        # transformers 5: a float below 1 in warmup_steps is a ratio of the total steps.
        warmup_steps=config.warmup_ratio,
        # A floor keeps a short run learning to its last step (the demo captioner learns shape late).
        lr_scheduler_type="cosine_with_min_lr" if config.min_lr_ratio else "cosine",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio} if config.min_lr_ratio else {},
        max_grad_norm=config.max_grad_norm,
        dataloader_drop_last=dataloader_drop_last,
        dataloader_num_workers=config.num_workers,
        remove_unused_columns=False,
        eval_strategy="no" if not evaluate else "steps" if config.eval_steps else "epoch",
        eval_steps=config.eval_steps or None,
        save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or None,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=resolved_precision(config.precision) == "bf16",  # autocast: the weights stay fp32
        tf32=config.tf32 if ampere else None,
        torch_compile=config.torch_compile,
        dataloader_pin_memory=config.pin_memory and cuda,
        report_to=config.report_to,
        disable_tqdm=False,
        use_cpu=not cuda,
        ddp_find_unused_parameters=ddp_find_unused_parameters,
    )


def check_image_cache(prepared, image_processor, model_name: str) -> None:
    """The image cache must hold images exactly as `image_processor` makes them (size, crop, resampling); else a
    ValueError saying to rebuild it with the processor of `model_name` ("this checkpoint", "the encoder")."""
    want = ImageGeometry.from_processor(image_processor)
    if want != prepared.cache.geometry:
        raise ValueError(
            f"the image cache was built as {prepared.cache.geometry.to_dict()} but {model_name}'s processor "
            f"wants {want.to_dict()}: rerun processdata_03 with image_processor set to {model_name}"
        )


def build_trainer(
    trainer_class,
    config: TrainingConfig,
    mode: str,
    model,
    train_dataset,
    eval_dataset,
    data_collator,
    callbacks=(),
    drop_last: bool = False,
    evaluate: bool = True,
    ddp_find_unused_parameters: bool | None = None,
    **trainer_kwargs,
) -> Trainer:
    """A `trainer_class` (a Trainer subclass) with `training_arguments(config, ...)`: checkpoints in
    `<output_dir>/checkpoints`, the learning rate for `mode`; `trainer_kwargs` go to the trainer (mean, std, ...).
    The model gets `config.attn_implementation` here, so the whole job (training, embedding, captioning) uses it."""
    set_attention(model, config.attn_implementation)
    if config.gradient_checkpointing:
        checkpoint_activations(model)
    args = training_arguments(
        config,
        Path(config.output_dir) / "checkpoints",
        learning_rate=config.learning_rate_for(mode),
        dataloader_drop_last=drop_last,
        evaluate=evaluate,
        ddp_find_unused_parameters=ddp_find_unused_parameters,
    )
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        callbacks=list(callbacks),
        **trainer_kwargs,
    )


def set_attention(model, attn_implementation: str) -> None:
    """Switch every attention layer of `model` (and its sub-models) to `attn_implementation`; a ValueError names
    the parameter when the model or this machine cannot run it (flash_attention_2 without its package, ...)."""
    if getattr(model.config, "_attn_implementation", None) == attn_implementation:
        return
    try:
        model.set_attn_implementation(attn_implementation)
    except (ValueError, ImportError) as e:
        raise ValueError(f"attn_implementation={attn_implementation!r}: {e}") from None


def checkpoint_activations(model) -> list[str]:
    """Recompute each transformer block's activations in the backward pass, in `model` or, for a model that cannot
    (a dual encoder), in each of its towers that can; returns the classes switched. Set here rather than through
    TrainingArguments, which asks it of the top-level model only."""
    targets = [model] if model.supports_gradient_checkpointing else []
    targets = targets or [m for m in model.children() if getattr(m, "supports_gradient_checkpointing", False)]
    if not targets:
        raise ValueError(
            f"gradient_checkpointing=True: {type(model).__name__} has no part that supports it; set it to False"
        )
    for target in targets:
        # Non-reentrant: gradients also flow through the checkpointed blocks of a frozen tower.
        target.activation_checkpointing_enable({"use_reentrant": False})
    return [type(t).__name__ for t in targets]


def fit(trainer: Trainer, config: TrainingConfig) -> dict:
    """Run `trainer`, resuming as `config.resume` says; return what every training summary records.

    {"steps", "train_seconds" (None when a finished run was resumed), "final_train_loss", "learning_rate" (the
    rate used), "batch_size" (per process), "world_size" (processes), "global_batch_size" (rows per optimiser
    step over every process), "precision" ("bf16" or "fp32")}.
    """
    args = trainer.args
    output = trainer.train(
        resume_from_checkpoint=resume_checkpoint(args.output_dir, config.resume, config.to_dict())
    )
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": trainer.state.global_step,
        "train_seconds": output.metrics.get("train_runtime"),
        "final_train_loss": losses[-1] if losses else output.training_loss,
        "learning_rate": args.learning_rate,
        "batch_size": config.batch_size,
        "world_size": args.world_size,
        "global_batch_size": config.batch_size * args.world_size * config.gradient_accumulation_steps,
        "precision": "bf16" if args.bf16 else "fp32",
    }


def save_on_main_process(trainer: Trainer, output_dir: str | Path, save=None) -> None:
    """On the main process only: `save()` (the stage's files), then trainer_state.json (which analyze_loss reads)."""
    if trainer.is_world_process_zero():
        if save is not None:
            save()
        trainer.state.save_to_json(str(Path(output_dir) / "trainer_state.json"))


SETTINGS_FILE = "settings.json"  # beside the checkpoints: the job settings they were written with


def resume_checkpoint(checkpoint_dir: str | Path, resume: str, settings: dict | None = None) -> str | None:
    """ "auto": the newest checkpoint-N in `checkpoint_dir` if one exists; "": start fresh; else that path.

    With `settings` (the job's parameters, e.g. `config.to_dict()`), "auto" resumes only checkpoints written
    with the same settings: after a parameter change (a different model, schedule or data) the old
    checkpoints are deleted with a note and training starts fresh, instead of failing to load into a
    model of another shape or silently continuing another run's schedule. Starting fresh ("") deletes
    them too, since the new run writes its own checkpoints into the same folder. The settings are
    recorded in `checkpoint_dir/settings.json`; only the main process deletes or writes.
    """
    checkpoint_dir = Path(checkpoint_dir)
    found = sorted(checkpoint_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if settings is not None:
        found = _drop_stale_checkpoints(checkpoint_dir, found, resume, settings)
    if resume != "auto":
        return resume or None
    return str(found[-1]) if found else None


def _drop_stale_checkpoints(
    checkpoint_dir: Path, found: list[Path], resume: str, settings: dict
) -> list[Path]:
    """Delete `found` when they are not to be resumed under `settings`; record `settings`. Returns what is left."""
    settings = {k: v for k, v in json.loads(json.dumps(settings, default=str)).items() if k != "resume"}
    settings_file = checkpoint_dir / SETTINGS_FILE
    recorded = read_json(settings_file) if settings_file.exists() else None
    main_process = int(os.environ.get("RANK", "0")) == 0
    if found and (resume == "" or (resume == "auto" and recorded != settings)):
        if resume == "auto":
            changed = sorted(k for k in settings if (recorded or {}).get(k, object()) != settings[k])
            why = f"were written with other settings ({', '.join(changed) or 'not recorded'})"
        else:
            why = 'are not resumed (resume="")'
        print(
            f"note: the {len(found)} checkpoints in {checkpoint_dir} {why}; deleting them and starting fresh"
        )
        if main_process:
            for path in found:
                shutil.rmtree(path)
        found = []
    if main_process:
        write_json(settings_file, settings)
    return found


class ProgressReportCallback(TrainerCallback):
    """Steps, latest loss and epoch to the runner's terminal line (`nbutils.progress.report`), main process only."""

    def __init__(self):
        self.loss = None
        self.started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = None  # set at the first step: the time to start (and resume) is not training speed

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.started is None:
            self.started = (time.time(), state.global_step)
        progress.report(
            "training",
            state.global_step,
            state.max_steps,
            unit="steps",
            loss=self.loss,
            epoch=state.epoch,
            started=self.started[0],
            start_n=self.started[1],
            force=state.global_step >= state.max_steps,
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics and "eval_loss" in metrics:
            progress.report(
                "evaluating", state.global_step, state.max_steps, unit="steps", eval_loss=metrics["eval_loss"]
            )


class ImageBatchTrainer(Trainer):
    """A Trainer for batches of uint8 images: `normalized_pixels` makes the model's input on the device."""

    def __init__(self, *args, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), **kwargs):
        super().__init__(*args, **kwargs)
        self.pixel_mean, self.pixel_std = mean, std
        if progress.enabled():
            self.add_callback(ProgressReportCallback())

    def normalized_pixels(self, model, inputs) -> torch.Tensor:
        """The batch's uint8 `pixel_values` normalised where they are, in the model's dtype (bf16 under bf16)."""
        return normalize_pixel_values(
            inputs["pixel_values"], self.pixel_mean, self.pixel_std, dtype=next(model.parameters()).dtype
        )

    def train(self, resume_from_checkpoint=None, **kwargs):
        """`Trainer.train`, except that a checkpoint written at the last step is not trained one step further.

        transformers 5.24 resumes such a checkpoint mid-epoch and takes a step before it checks max_steps, so a
        finished job run again (resume "auto") would end at max_steps + 1 and overwrite its results. Here the
        finished checkpoint's weights and state are loaded and nothing is trained (train_runtime None).
        """
        if resume_from_checkpoint:
            state_file = Path(resume_from_checkpoint) / "trainer_state.json"
            state = TrainerState.load_from_json(str(state_file)) if state_file.is_file() else None
            if state is not None and 0 < state.max_steps <= state.global_step:
                print(
                    f"note: {resume_from_checkpoint} is the finished run (step {state.global_step} of "
                    f"{state.max_steps}): its weights are used, nothing is left to train"
                )
                self._load_from_checkpoint(resume_from_checkpoint)
                self.state = state
                losses = [h["loss"] for h in state.log_history if "loss" in h]
                return TrainOutput(state.global_step, losses[-1] if losses else None, {"train_runtime": None})
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # transformers 5.23/5.24: save_pretrained writes ViT weights under their original names
        # (encoder.layer.N.attention.attention.key) but the Trainer's resume loads the raw state
        # dict without from_pretrained's renaming, so the towers silently stay random. Load through
        # from_pretrained, which applies the conversion, and copy the weights over.
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=next(target.parameters()).dtype)
        missing, unexpected = target.load_state_dict(loaded.state_dict(), strict=False)
        if missing:
            # Modules trained beside the model (train_clip's caption-word head) are not part of its class, so
            # from_pretrained drops them: read them from the checkpoint's weights file by name.
            from safetensors.torch import load_file

            weights = Path(resume_from_checkpoint) / "model.safetensors"
            saved = load_file(str(weights)) if weights.is_file() else {}
            target.load_state_dict({k: saved[k] for k in missing if k in saved}, strict=False)
            missing = [k for k in missing if k not in saved]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint {resume_from_checkpoint} does not fit the model: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
