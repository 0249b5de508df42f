"""Contrastive image–text training (CLIP-style dual encoders) with the Hugging Face Trainer.

The same function runs from the `train_clip` notebook, from the command line, and under
`torchrun --nproc_per_node=N -m nbutils.train_clip ...` / `accelerate launch`: the Trainer sets up
DDP, and `clip_loss` gathers features across ranks with gradients so every rank sees the global
batch of negatives.

Duplicate captions are false negatives. They are handled twice: a training batch holds one caption
per image (a different one each epoch), and rows whose caption text is identical are masked out of
each other's softmax (`text_groups`, see nbutils.clip_loss).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from . import clip_models, prepare, retrieval
from .clip_loss import clamp_logit_scale_, clip_loss
from .image_cache import ImageGeometry, normalize_pixel_values
from .io import DataError, write_json

# Learning rates that work per mode: towers trained from scratch tolerate a large rate; pretrained
# towers are destroyed by it (the original project's 5e-4 on pretrained towers never learned).
DEFAULT_LEARNING_RATE = {"demo": 5e-4, "composed": 5e-5, "pretrained": 1e-5}


# -----------------------------------------------------------------------------
# data

class ImageCaptionDataset(torch.utils.data.Dataset):
    """One item per image with one of its captions: `epoch` and `seed` pick which, deterministically.

    Items are uint8 CHW tensors; normalisation happens on the device (4x less to move).
    """

    def __init__(self, prepared: "prepare.PreparedDataset", split: str, seed: int = 0, fixed_caption: bool = False):
        table = prepared.tables[split]
        if table.empty:
            raise DataError(f"split {split!r} of {prepared.info.get('name')} is empty: nothing to train or evaluate on")
        grouped = table.groupby("image_path", sort=True)["text"].apply(list)
        self.image_paths = list(grouped.index)
        self.captions = list(grouped.values)
        self.rows = prepared.cache.index_of(self.image_paths)
        self.cache, self.seed, self.epoch, self.fixed_caption = prepared.cache, seed, 0, fixed_caption

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> dict:
        captions = self.captions[i]
        pick = 0 if self.fixed_caption else int(np.random.default_rng([self.seed, self.epoch, i]).integers(len(captions)))
        pixels = torch.from_numpy(np.ascontiguousarray(self.cache.uint8(int(self.rows[i])))).permute(2, 0, 1)
        return {"pixel_values": pixels, "text": captions[pick]}


@dataclass
class ContrastiveCollator:
    """Stack uint8 images, tokenize captions, and give identical captions the same `text_groups` id."""

    tokenizer: object
    max_length: int = 64

    def __call__(self, items: list[dict]) -> dict:
        texts = [item["text"] for item in items]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "text_groups": torch.tensor([zlib.crc32(t.encode("utf-8")) for t in texts], dtype=torch.long),
        }


# -----------------------------------------------------------------------------
# the Trainer

class ContrastiveTrainer(Trainer):
    """Trainer whose loss is symmetric InfoNCE, gathered across ranks, with the temperature kept sane."""

    def __init__(self, *args, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), **kwargs):
        super().__init__(*args, **kwargs)
        self.pixel_mean, self.pixel_std = mean, std

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, gather=True):
        pixel_values = normalize_pixel_values(inputs["pixel_values"], self.pixel_mean, self.pixel_std,
                                              dtype=next(model.parameters()).dtype)
        # Through model(...) rather than the towers directly, so DDP's hooks see the forward pass.
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        pixel_values=pixel_values, return_loss=False)
        scale = clip_models.logit_scale_parameter(self.accelerator.unwrap_model(model))
        loss = clip_loss(outputs.image_embeds, outputs.text_embeds, scale, inputs.get("text_groups"), gather=gather)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs, gather=False)  # eval batches may be uneven across ranks
        return loss.detach(), None, None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # transformers 5.23: save_pretrained writes ViT weights under their original names
        # (encoder.layer.N.attention.attention.key) but the Trainer's resume loads the raw state
        # dict without from_pretrained's renaming, so the towers silently stay random. Load through
        # from_pretrained, which applies the conversion, and copy the weights over.
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=next(target.parameters()).dtype)
        missing, unexpected = target.load_state_dict(loaded.state_dict(), strict=False)
        if missing or unexpected:
            raise RuntimeError(f"checkpoint {resume_from_checkpoint} does not fit the model: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")

    def get_decay_parameter_names(self, model) -> list[str]:
        # The temperature is not a weight: decaying it pulls the scale towards 1 (CLIP, open_clip).
        return [n for n in super().get_decay_parameter_names(model) if "logit_scale" not in n]


class TemperatureAndEpochCallback(TrainerCallback):
    """Clamp the learnable scale to <= 100 after each step; tell the dataset which epoch it is."""

    def __init__(self, dataset: ImageCaptionDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(math.floor(state.epoch + 1e-6)))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            clamp_logit_scale_(clip_models.logit_scale_parameter(model))


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def embed(bundle, dataset: ImageCaptionDataset, mean, std, batch_size: int = 256, max_length: int = 64):
    """Normalised embeddings of every image and every caption of `dataset`, plus each caption's image index."""
    model = bundle.model.eval()
    device = next(model.parameters()).device
    images, texts, text_to_image = [], [], []
    for start in range(0, len(dataset), batch_size):
        rows = dataset.rows[start:start + batch_size]
        pixels = torch.from_numpy(dataset.cache.uint8(list(rows))).permute(0, 3, 1, 2).to(device)
        pixels = normalize_pixel_values(pixels, mean, std, dtype=next(model.parameters()).dtype)
        images.append(clip_models.image_features(model, pixels).float().cpu())
    all_captions = [(i, t) for i, caps in enumerate(dataset.captions) for t in caps]
    for start in range(0, len(all_captions), batch_size):
        chunk = all_captions[start:start + batch_size]
        texts.append(embed_texts(bundle, [t for _, t in chunk], max_length))
        text_to_image += [i for i, _ in chunk]
    return torch.nn.functional.normalize(torch.cat(images), dim=-1), torch.cat(texts), np.array(text_to_image)


@torch.no_grad()
def embed_texts(bundle, texts: list[str], max_length: int = 64) -> torch.Tensor:
    """Normalised embeddings of `texts` (one batch)."""
    model = bundle.model.eval()
    tok = bundle.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    tok = tok.to(next(model.parameters()).device)
    feats = clip_models.text_features(model, tok["input_ids"], tok["attention_mask"]).float().cpu()
    return torch.nn.functional.normalize(feats, dim=-1)


def demo_zero_shot(bundle, dataset: ImageCaptionDataset, image_embeds, ground_truth: str, language: str):
    """Zero-shot colour / shape / size accuracy on the single-object test images of the demo set."""
    from . import demo_data

    gt = demo_data.load_ground_truth(Path(ground_truth).parent)
    gt = gt[gt["n_objects"] == 1].assign(stem=lambda d: d["image_path"].map(lambda p: Path(p).stem))
    stems = pd.Series([Path(p).stem for p in dataset.image_paths])
    keep = stems.isin(set(gt["stem"])).to_numpy()
    if keep.sum() == 0:
        return pd.DataFrame(columns=["attribute", "accuracy", "chance", "n"])
    gt = gt.set_index("stem").loc[stems[keep]]
    prompts, labels, names = {}, {}, {}
    for attribute in ("colour", "shape", "size"):
        classes, texts = demo_data.attribute_prompts(attribute, language)
        prompts[attribute] = embed_texts(bundle, texts)
        labels[attribute] = np.array([classes.index(v) for v in gt[attribute]])
        names[attribute] = classes
    return retrieval.zero_shot_table(image_embeds[torch.from_numpy(keep.copy())], prompts, labels, names)


# -----------------------------------------------------------------------------
# the whole job

@dataclass
class ClipRun:
    """What `train_clip` returns to the notebook."""

    bundle: object
    summary: dict
    log_history: list = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    zero_shot: pd.DataFrame | None = None
    test: ImageCaptionDataset | None = None
    test_image_embeds: torch.Tensor | None = None


def load_bundle(model: str, prepared, vision_model: str = "", text_model: str = "", projection_dim: int = 128):
    """The model to train: "demo" (small towers from configs + a tokenizer trained on the captions),
    "compose" (vision_model + text_model as a VisionTextDualEncoder), or a CLIP / Chinese-CLIP checkpoint."""
    if model == "demo":
        tokenizer = clip_models.train_tokenizer(list(prepared.tables["train"]["text"]))
        size = prepared.cache.geometry.height
        net = clip_models.build_demo_dual_encoder(tokenizer, image_size=size, projection_dim=projection_dim)
        return clip_models.ClipBundle(net, tokenizer, prepared.image_processor, "dual_encoder"), "demo"
    if model == "compose":
        if not vision_model or not text_model:
            raise ValueError("model='compose' needs both vision_model and text_model (hub ids or folders)")
        return clip_models.compose_dual_encoder(vision_model, text_model), "composed"
    return clip_models.load_clip_model(model), "pretrained"


def check_geometry(bundle, prepared) -> None:
    """The cache must hold images exactly as this model's processor would make them."""
    clip_models.check_image_size(bundle.model, prepared.cache.geometry.height, parameter="processdata_03 image_size")
    want = ImageGeometry.from_processor(bundle.image_processor)
    if want != prepared.cache.geometry:
        raise ValueError(f"the image cache was built as {prepared.cache.geometry.to_dict()} but the model's processor "
                         f"wants {want.to_dict()}: rerun processdata_03 with image_processor set to this checkpoint")


def train_clip(run_dir, output_dir, *, model: str = "demo", vision_model: str = "", text_model: str = "",
               lock_image: bool = False, lock_text: bool = False, projections_only: bool = False,
               epochs: float = 10.0, max_steps: int = -1, batch_size: int = 64, learning_rate: float = 0.0,
               weight_decay: float = 0.1, warmup_ratio: float = 0.1, gradient_accumulation_steps: int = 1,
               max_grad_norm: float = 1.0, eval_steps: int = 0, save_steps: int = 0, logging_steps: int = 10,
               seed: int = 0, max_text_length: int = 64, num_workers: int = 0, resume: str = "auto",
               projection_dim: int = 128, report_to: str = "none", callbacks=()) -> ClipRun:
    """Train a dual encoder on `run_dir`'s processdata_03 splits and evaluate retrieval before and after."""
    output_dir = Path(output_dir)
    prepared = prepare.load_prepared(run_dir)
    torch.manual_seed(seed)
    bundle, mode = load_bundle(model, prepared, vision_model, text_model, projection_dim)
    if mode != "demo":
        check_geometry(bundle, prepared)
    frozen = clip_models.apply_freezing(bundle.model, lock_image=lock_image, lock_text=lock_text,
                                        projections_only=projections_only)
    mean, std = prepared.mean_std
    train = ImageCaptionDataset(prepared, "train", seed=seed)
    val = ImageCaptionDataset(prepared, "val", seed=seed, fixed_caption=True)
    test = ImageCaptionDataset(prepared, "test", seed=seed, fixed_caption=True)
    if len(train) < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the {len(train)} training images")
    lr = learning_rate or DEFAULT_LEARNING_RATE[mode]
    # Batches are dropped when ragged (see dataloader_drop_last), so a tiny val split has none.
    evaluate = len(val) >= batch_size
    if not evaluate:
        print(f"note: the val split has {len(val)} images, fewer than batch_size={batch_size}: no validation loss")
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"), num_train_epochs=epochs, max_steps=max_steps,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=lr, weight_decay=weight_decay,
        # transformers 5: a float below 1 in warmup_steps is a ratio of the total steps.
        warmup_steps=warmup_ratio, lr_scheduler_type="cosine", max_grad_norm=max_grad_norm,
        # Every rank needs the same batch size for the gathered loss; a ragged last batch is dropped.
        dataloader_drop_last=True, dataloader_num_workers=num_workers, remove_unused_columns=False,
        eval_strategy="no" if not evaluate else "steps" if eval_steps else "epoch", eval_steps=eval_steps or None,
        save_strategy="steps" if save_steps else "epoch", save_steps=save_steps or None, save_total_limit=2,
        logging_steps=logging_steps, seed=seed, data_seed=seed, bf16=cuda and torch.cuda.is_bf16_supported(),
        report_to=report_to, disable_tqdm=False, use_cpu=not cuda,
    )
    trainer = ContrastiveTrainer(model=bundle.model, args=args, train_dataset=train, eval_dataset=val,
                                 data_collator=ContrastiveCollator(bundle.tokenizer, max_text_length),
                                 callbacks=[TemperatureAndEpochCallback(train), *callbacks], mean=mean, std=std)

    before = retrieval.retrieval_metrics(*embed(bundle, test, mean, std, max_length=max_text_length))
    checkpoint = _resume_checkpoint(args.output_dir, resume)
    trainer.train(resume_from_checkpoint=checkpoint)
    image_embeds, text_embeds, text_to_image = embed(bundle, test, mean, std, max_length=max_text_length)
    after = retrieval.retrieval_metrics(image_embeds, text_embeds, text_to_image)

    zero_shot = None
    if prepared.info.get("ground_truth"):
        zero_shot = demo_zero_shot(bundle, test, image_embeds, prepared.info["ground_truth"],
                                   prepared.info.get("language") or "zh")
    if trainer.is_world_process_zero():
        clip_models.save_clip(bundle, output_dir / "model")
        trainer.state.save_to_json(str(output_dir / "trainer_state.json"))

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {key: after[key] for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
                                           "mean_recall", "median_rank_i2t", "median_rank_t2i", "chance_r1",
                                           "n_test_images")}
    summary.update({
        "initial": {k: before[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
                                           "mean_recall", "median_rank_i2t", "median_rank_t2i")},
        "final_train_loss": losses[-1] if losses else None, "chance_loss": math.log(batch_size),
        "batch_size": batch_size, "global_batch_size": batch_size * args.world_size * gradient_accumulation_steps,
        "learning_rate": lr, "steps": trainer.state.global_step, "mode": mode, "trainable_parameters": frozen,
    })
    if zero_shot is not None and len(zero_shot):
        summary["zero_shot_accuracy"] = {r.attribute: r.accuracy for r in zero_shot.itertuples()}
    if trainer.is_world_process_zero():
        write_json(output_dir / "summary.json", summary)
    return ClipRun(bundle, summary, trainer.state.log_history, before, after, zero_shot, test, image_embeds)


def _resume_checkpoint(checkpoint_dir: str, resume: str):
    """"auto": the newest checkpoint if one exists; "" : start fresh; otherwise a checkpoint path."""
    if resume != "auto":
        return resume or None
    found = sorted(Path(checkpoint_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(found[-1]) if found else None
