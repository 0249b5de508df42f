"""Contrastive image–text training (CLIP-style dual encoders) with the Hugging Face Trainer.

The same function runs from the `train_clip` notebook, from the command line, and under
`torchrun --nproc_per_node=N -m nbutils.train_clip ...` / `accelerate launch`: the Trainer sets up
DDP, and `clip_loss` gathers features across ranks with gradients so every rank sees the global
batch of negatives.

Duplicate captions are false negatives. They are handled twice: a training batch holds one caption
per image (a different one each epoch), and rows whose caption text is identical are masked out of
each other's softmax (`text_groups`, see nbutils.training.clip_loss).

    python -m nbutils.train_clip --run-dir outputs/demo --epochs 20
    torchrun --nproc_per_node=4 -m nbutils.train_clip --run-dir outputs/flickr \\
        --model OFA-Sys/chinese-clip-vit-base-patch16 --batch-size 48

Every field of `TrainClipConfig` is an option (`--lock-image true`). `--batch-size` is per process: the
loss gathers features across processes, so the negatives per step are batch_size x processes.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformers import TrainerCallback

from .. import stages, summaries
from ..config import command_line_main, param
from ..data.caption_words import CaptionWords, caption_word_loss
from ..data.datasets import ContrastiveCollator, ImageTextDataset
from ..data.hard_negatives import MIN_SIMILARITY, HardNegatives
from ..evaluation import retrieval
from ..evaluation.embeddings import embed, embed_images, embed_texts
from ..evaluation.zero_shot import demo_linear_probe, demo_zero_shot
from ..models import clip as clip_models
from ..models.tokenizer import train_tokenizer
from ..reporting.tables import count, duration, formatted, percent
from . import job
from .clip_loss import chance_loss, clamp_logit_scale_, clip_loss

# -----------------------------------------------------------------------------
# the Trainer


class ContrastiveTrainer(job.ImageBatchTrainer):
    """Trainer whose loss is symmetric InfoNCE, gathered across ranks, with the temperature kept sane.

    With `word_targets` ((training images, words) bool, nbutils.data.caption_words) the model carries a
    `word_head` (`attach_word_head`) and each training batch adds `word_loss_weight` x the caption-word loss
    of its images, predicted from the image tower's pooled output.
    """

    def __init__(
        self, *args, word_targets=None, word_loss_weight: float = 0.0, text_buckets: int = 1, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.word_targets, self.word_loss_weight = word_targets, word_loss_weight
        self.text_buckets = text_buckets

    def compute_loss(
        self, model, inputs, return_outputs=False, num_items_in_batch=None, gather=True, caption_words=True
    ):
        pixel_values = self.normalized_pixels(model, inputs)
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        n = len(input_ids)
        if "negative_input_ids" in inputs:  # the collator padded them with the captions
            input_ids = torch.cat([input_ids, inputs["negative_input_ids"]])
            attention_mask = torch.cat([attention_mask, inputs["negative_attention_mask"]])
        # The texts are embedded in length buckets, each padded only to its own longest row (see
        # length_buckets). One bucket goes through model(...) with the images, so that DDP prepares its
        # gradient hooks for this step; once prepared, each parameter's hook fires once, when its gradient
        # summed over every call that used it is ready, so the other buckets and the word head run outside
        # model(...) (with ddp_find_unused_parameters=False, see train_clip; tests/training/test_clip.py
        # checks that two DDP ranks end with the same weights).
        (rows, width), *other_buckets = length_buckets(attention_mask, self.text_buckets)
        outputs = model(
            input_ids=input_ids[rows, :width],
            attention_mask=attention_mask[rows, :width],
            pixel_values=pixel_values,
            return_loss=False,
        )
        unwrapped = self.accelerator.unwrap_model(model)
        parts, order = [outputs.text_embeds], [rows]
        for rows, width in other_buckets:
            parts.append(
                clip_models.text_features(unwrapped, input_ids[rows, :width], attention_mask[rows, :width])
            )
            order.append(rows)
        text_embeds = torch.cat(parts)[torch.argsort(torch.cat(order))]  # back to the batch's row order
        scale = clip_models.logit_scale_parameter(unwrapped)
        texts, negatives = text_embeds[:n], text_embeds[n:]
        loss = clip_loss(
            outputs.image_embeds,
            texts,
            scale,
            inputs.get("text_groups"),
            gather=gather,
            negative_features=negatives if len(negatives) else None,
            negative_groups=inputs.get("negative_groups"),
        )
        if caption_words and self.word_targets is not None:
            head = unwrapped.word_head
            # Index on the CPU so only the batch's rows move to the device, not the whole table.
            targets = self.word_targets[inputs["image_index"].cpu()].to(loss.device)
            logits = head(outputs.vision_model_output.pooler_output)
            loss = loss + self.word_loss_weight * caption_word_loss(logits, targets)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            # Eval batches may be uneven across ranks; the word targets index the training images only.
            loss = self.compute_loss(model, inputs, gather=False, caption_words=False)
        return loss.detach(), None, None

    def get_decay_parameter_names(self, model) -> list[str]:
        # The temperature is not a weight: decaying it pulls the scale towards 1 (CLIP, open_clip).
        return [n for n in super().get_decay_parameter_names(model) if "logit_scale" not in n]


def length_buckets(attention_mask: torch.Tensor, n_buckets: int) -> list[tuple[torch.Tensor, int]]:
    """Split a batch's texts into `n_buckets` groups of similar length: [(row indices, padded width), ...].

    A text tower's cost grows with the padded width, and a batch is padded to its longest text (the demo's
    captions and hard negatives: 23 tokens on average, padded to ~44). Each bucket is cut to the last column
    any of its rows uses, which gives each row the same embedding as the full batch would (padding is masked
    and at the end; with left padding nothing is cut) for ~45 % less text-tower time on the demo.
    The first bucket holds the longest texts.
    """
    lengths = attention_mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    buckets = []
    for rows in order.chunk(max(1, min(n_buckets, len(order)))):
        used = attention_mask[rows].any(0).nonzero()
        buckets.append((rows, int(used.max()) + 1 if len(used) else 1))
    return buckets


class TemperatureAndEpochCallback(TrainerCallback):
    """Clamp the learnable scale to <= 100 after each step; tell the dataset which epoch it is."""

    def __init__(self, dataset: ImageTextDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(math.floor(state.epoch + 1e-6)))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            clamp_logit_scale_(clip_models.logit_scale_parameter(model))


# -----------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class TrainClipConfig(job.TrainingConfig):
    """train_clip's parameters (the notebook's `parameters` cell and the command line).

    The shared training fields come first (nbutils.training.job.TrainingConfig); those re-declared
    here keep their place and change their help.
    """

    # Towers trained from scratch tolerate a large rate; pretrained towers are destroyed by it (the original
    # project's 5e-4 on pretrained towers never learned).
    LEARNING_RATES = {"demo": 5e-4, "compose": 5e-5, "pretrained": 1e-5}

    stage = "train_clip"
    epochs: float = job.reworded("epochs", "passes over the training images")
    batch_size: int = job.reworded(
        "batch_size", "per process; the loss sees batch_size x processes negatives"
    )
    learning_rate: float = job.reworded("learning_rate", job.learning_rate_help(LEARNING_RATES))
    weight_decay: float = job.reworded("weight_decay", "AdamW weight decay (never on the temperature)")
    model: str = param(
        "demo",
        '"demo" (small towers from configs), "compose" (vision_model + text_model), '
        "or a CLIP / Chinese-CLIP checkpoint: hub id or folder",
    )
    vision_model: str = param("", 'with model "compose": e.g. google/vit-base-patch16-224')
    text_model: str = param("", 'with model "compose": e.g. hfl/chinese-roberta-wwm-ext')
    lock_image: bool = param(False, "LiT: freeze the image tower, train the text side")
    lock_text: bool = param(False, "freeze the text tower")
    projections_only: bool = param(False, "freeze both towers, train the projections and the temperature")
    max_text_length: int = param(64, "captions are truncated to this many tokens")
    projection_dim: int = param(128, "demo model only: embedding size")
    vision_tower: str = param(
        "cnn",
        'demo model only: "cnn" (conv / BatchNorm / max-pool stages; learns shape) or "vit" (learns colour '
        "and size, not shape, in a demo's budget; README, train_clip)",
    )
    vision_layers: int = param(4, "demo model only: CNN stages (each halves the grid) or ViT layers")
    vision_width: int = param(256, "demo model only: the CNN's last stage width (the stages double up to it)")
    patch_size: int = param(
        21, "demo model only, vit: patch size (21: one patch per cell of the demo's 3x3 grid)"
    )
    text_tower: str = param(
        "clip",
        'demo model only: "clip" (pre-LayerNorm, causal, pooled at the end token) or "bert" (pooled at [CLS]; '
        "from scratch it sits at chance for hundreds of steps)",
    )
    text_layers: int = param(2, "demo model only: text tower depth")
    hard_negatives: bool = param(
        False,
        "NegCLIP-style: each caption also gets a copy with one grounded word replaced by a word used in "
        "the same contexts (learned from the training captions) as an extra negative",
    )
    negatives_per_caption: int = param(
        1, "with hard_negatives: negatives per caption, each replacing another word"
    )
    hard_negative_similarity: float = param(
        MIN_SIMILARITY,
        "with hard_negatives: how alike (cosine of context counts) two words' uses must be to swap them; "
        "small caption sets need less",
    )
    word_loss_weight: float = param(
        0.0,
        "caption-word loss beside the contrastive one, at this weight (0: off): a linear head on the image "
        "tower predicts each image's grounded caption words, learned from the training captions",
    )
    text_buckets: int = param(
        4,
        "embed each batch's texts in this many length buckets, each padded only to its own longest text: "
        "the same embeddings for less text-tower work (1: one pass padded to the batch's longest)",
    )


# -----------------------------------------------------------------------------
# the whole job


ATTRIBUTE_TABLE_HEADERS = {"n_classes": "classes", "n_train": "train images", "n": "test images"}


def _retrieval_label(key: str) -> str:
    """A retrieval metric's key in words: "i2t_r1" -> "image→text R@1 (%)", "median_rank_t2i" -> "median rank,
    text→image"."""
    direction = {"i2t": "image→text", "t2i": "text→image"}
    if key[:3] in direction and key[3:5] == "_r" and key[5:].isdigit():
        return f"{direction[key[:3]]} R@{key[5:]} (%)"
    if key.startswith("median_rank_") and key[12:] in direction:
        return f"median rank, {direction[key[12:]]}"
    return {"mean_recall": "mean recall (%)"}.get(key, key)


@dataclass
class ClipResult:
    """What `train_clip` returns to the notebook."""

    bundle: object
    summary: dict
    log_history: list = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    zero_shot: pd.DataFrame | None = None
    test: ImageTextDataset | None = None
    test_image_embeds: torch.Tensor | None = None
    linear_probe: pd.DataFrame | None = None

    def overview(self):
        """The run in one small table, formatted for reading: steps, time, losses against chance, R@1 against
        chance, the learning rate and batch it trained with."""
        keys = ["steps", "train_seconds", "final_train_loss", "chance_loss", "i2t_r1", "t2i_r1", "chance_r1"]
        return summaries.facts("train_clip", self.summary, [*keys, "learning_rate", "batch_size"])

    def retrieval_table(self):
        """Retrieval before and after training (recall in %, median ranks), formatted for reading."""
        table = retrieval.metrics_table(self.before, self.after)
        return formatted(table.rename(index=_retrieval_label), readable_headers=True)

    def attribute_table(self, which: str = "zero_shot"):
        """The zero-shot (`which="zero_shot"`) or linear-probe ("linear_probe") attribute table, formatted for
        reading (accuracy and chance as percentages); None when the run has none."""
        table = {"zero_shot": self.zero_shot, "linear_probe": self.linear_probe}[which]
        if table is None or not len(table):
            return None
        table = table.set_index("attribute").rename(columns=ATTRIBUTE_TABLE_HEADERS)
        return formatted(table, percent_columns=["accuracy", "chance"], readable_headers=True)

    def search_examples(self, n_queries: int = 4, k: int = 5) -> list[dict]:
        """Text→image search on the test split for the first caption of `n_queries` evenly spaced images.

        Each result: {"query", "target" (the query's own image), "scores", "images"} (top k, best first),
        for `nbutils.reporting.grids.search_results_html`.
        """
        step = max(1, len(self.test.captions) // n_queries)
        targets = list(range(0, len(self.test.captions), step))[:n_queries]
        queries = [self.test.captions[i][0] for i in targets]
        scores, top = retrieval.search(embed_texts(self.bundle, queries), self.test_image_embeds, k=k)
        return [
            {"query": q, "target": t, "scores": s.tolist(), "images": i.tolist()}
            for q, t, s, i in zip(queries, targets, scores, top)
        ]


def load_bundle(config: TrainClipConfig, prepared: stages.PreparedDataset):
    """The model to train and its mode: "demo" (small towers from configs + a tokenizer trained on the
    captions), "compose" (vision_model + text_model as a VisionTextDualEncoder), or "pretrained"."""
    if config.model == "demo":
        tokenizer = train_tokenizer(list(prepared.tables["train"]["text"]))
        size = prepared.cache.geometry.height
        net = clip_models.build_demo_dual_encoder(
            tokenizer,
            image_size=size,
            projection_dim=config.projection_dim,
            vision_tower=config.vision_tower,
            patch_size=config.patch_size,
            num_layers=config.vision_layers,
            vision_width=config.vision_width,
            text_tower=config.text_tower,
            text_layers=config.text_layers,
        )
        return clip_models.ClipBundle(net, tokenizer, prepared.image_processor, "dual_encoder"), "demo"
    if config.model == "compose":
        if not config.vision_model or not config.text_model:
            raise ValueError("model='compose' needs both vision_model and text_model (hub ids or folders)")
        return clip_models.compose_dual_encoder(config.vision_model, config.text_model), "compose"
    return clip_models.load_clip_model(config.model, parameter="model"), "pretrained"


def attach_word_head(model, n_words: int) -> None:
    """Give `model` a `word_head`: a linear layer from its image tower's pooled output to `n_words` logits.

    It lives on the model so DDP synchronises its gradients and checkpoints save it; `train_clip` removes
    it before the final save.
    """
    model.add_module("word_head", torch.nn.Linear(model.config.vision_config.hidden_size, n_words))


SUMMARY_METRICS = (
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "mean_recall",
    "median_rank_i2t",
    "median_rank_t2i",
)


def train_clip(config: TrainClipConfig, callbacks=()) -> ClipResult:
    """Train a dual encoder on `config.run_dir`'s processdata_03 splits; evaluate retrieval before and after."""
    if config.text_buckets < 1:
        raise ValueError(f"text_buckets must be at least 1, got {config.text_buckets}")
    output_dir = Path(config.output_dir)
    prepared = stages.load_prepared(config.run_dir)
    torch.manual_seed(config.seed)
    bundle, mode = load_bundle(config, prepared)
    if mode != "demo":
        clip_models.check_image_size(
            bundle.model, prepared.cache.geometry.height, "processdata_03 image_size"
        )
        job.check_image_cache(prepared, bundle.image_processor, "this checkpoint")
    frozen = clip_models.apply_freezing(
        bundle.model,
        lock_image=config.lock_image,
        lock_text=config.lock_text,
        projections_only=config.projections_only,
    )
    mean, std = prepared.mean_std
    train = prepared.dataset("train", seed=config.seed)
    val = prepared.dataset("val", seed=config.seed, fixed_caption=True)
    test = prepared.dataset("test", seed=config.seed, fixed_caption=True)
    if len(train) < config.batch_size:
        raise ValueError(f"batch_size={config.batch_size} is larger than the {len(train)} training images")
    # Batches are dropped when ragged (see dataloader_drop_last), so a tiny val split has none.
    evaluate = len(val) >= config.batch_size
    if not evaluate:
        print(
            f"note: the val split has {len(val)} images, fewer than batch_size={config.batch_size}: no validation loss"
        )
    hard_negatives = None
    if config.hard_negatives:
        table = prepared.tables["train"]
        hard_negatives = HardNegatives.from_captions(
            list(table["text"]),
            list(table["image_path"]),
            prepared.language,
            min_similarity=config.hard_negative_similarity,
        )
        if not hard_negatives.substitute_table:
            raise ValueError(
                "hard_negatives=True, but no word of the training captions qualifies (grounded, with a "
                f"substitute used in the same contexts at hard_negative_similarity="
                f"{config.hard_negative_similarity}); lower it or set hard_negatives=False for this data"
            )
    caption_words = word_targets = None
    if config.word_loss_weight:
        table = prepared.tables["train"]
        caption_words = (
            CaptionWords.from_lift(hard_negatives.lift, prepared.language)  # the same statistics, once
            if hard_negatives
            else CaptionWords.from_captions(list(table["text"]), list(table["image_path"]), prepared.language)
        )
        word_targets = caption_words.targets(train.captions)
        attach_word_head(bundle.model, len(caption_words.words))
    # Every rank needs the same batch size for the gathered loss; a ragged last batch is dropped.
    # Every trainable parameter of a dual encoder gets a gradient each step, so DDP need not search the
    # graph for unused ones. It must not: that search starts from model(...)'s outputs, so it would take the
    # caption-word head and text buckets run beside that call (ContrastiveTrainer.compute_loss) for unused
    # and mark them ready before their gradients exist.
    trainer = job.build_trainer(
        ContrastiveTrainer,
        config,
        mode,
        bundle.model,
        train,
        val,
        ContrastiveCollator(
            bundle.tokenizer, config.max_text_length, hard_negatives, config.negatives_per_caption
        ),
        [TemperatureAndEpochCallback(train), *callbacks],
        drop_last=True,
        evaluate=evaluate,
        ddp_find_unused_parameters=False,
        mean=mean,
        std=std,
        word_targets=word_targets,
        word_loss_weight=config.word_loss_weight,
        text_buckets=config.text_buckets,
    )

    before = retrieval.retrieval_metrics(*embed(bundle, test, mean, std, max_length=config.max_text_length))
    training = job.fit(trainer, config)
    if caption_words is not None:
        del bundle.model.word_head  # a training aid: the saved model is a plain dual encoder
    image_embeds, text_embeds, text_to_image = embed(
        bundle, test, mean, std, max_length=config.max_text_length
    )
    after = retrieval.retrieval_metrics(image_embeds, text_embeds, text_to_image)

    zero_shot = linear_probe = None
    if prepared.origin.ground_truth:
        zero_shot = demo_zero_shot(
            bundle, test, image_embeds, prepared.origin.ground_truth, prepared.language
        )
        train_embeds = embed_images(bundle, train, mean, std)
        linear_probe = demo_linear_probe(
            train, train_embeds, test, image_embeds, prepared.origin.ground_truth
        )

    negatives = config.negatives_per_caption if hard_negatives else 0
    summary = {key: after[key] for key in (*SUMMARY_METRICS, "chance_r1", "n_test_images")}
    summary.update(
        {
            "initial": {k: before[k] for k in SUMMARY_METRICS},
            **training,
            "negatives_per_caption": negatives,
            # Evaluation scores each process's own batch; training the batches gathered from every process.
            "chance_loss": chance_loss(config.batch_size, negatives),
            "chance_train_loss": chance_loss(config.batch_size * training["world_size"], negatives),
            "mode": mode,
            "trainable_parameters": frozen,
            "hard_negatives": hard_negatives.summary() if hard_negatives else None,
            "caption_words": caption_words.summary() if caption_words else None,
            "word_loss_weight": config.word_loss_weight,
        }
    )
    if zero_shot is not None and len(zero_shot):
        summary["zero_shot_accuracy"] = {r.attribute: r.accuracy for r in zero_shot.itertuples()}
        summary["zero_shot_chance"] = {r.attribute: r.chance for r in zero_shot.itertuples()}
    if linear_probe is not None and len(linear_probe):
        summary["linear_probe_accuracy"] = {r.attribute: r.accuracy for r in linear_probe.itertuples()}
    summary = {"headline": headline(summary), **summary}
    job.save_on_main_process(
        trainer, output_dir, lambda: stages.save_trained_clip(output_dir, bundle, summary)
    )
    return ClipResult(
        bundle, summary, trainer.state.log_history, before, after, zero_shot, test, image_embeds, linear_probe
    )


def headline(summary: dict) -> str:
    """One sentence of what training achieved, from train_clip's summary: "Trained 440 steps in 3.5 min:
    image→text R@1 81.3 %, text→image R@1 68.6 % (chance 0.4 %); zero-shot colour 98.6 %, shape 94.6 %,
    size 98.6 %."."""
    took = f" in {duration(summary['train_seconds'])}" if summary.get("train_seconds") else ""
    text = (
        f"Trained {count(summary['steps'])} steps{took}: image→text R@1 {percent(summary['i2t_r1'])}, "
        f"text→image R@1 {percent(summary['t2i_r1'])} (chance {percent(summary['chance_r1'])})"
    )
    zero_shot = summary.get("zero_shot_accuracy")
    if zero_shot:
        text += "; zero-shot " + ", ".join(f"{a} {percent(v)}" for a, v in zero_shot.items())
    return text + "."


def main(argv=None) -> int:
    """`python -m nbutils.train_clip`: every TrainClipConfig field is an option."""
    return command_line_main(TrainClipConfig, train_clip, "nbutils.train_clip", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
