"""Captioning, shared by both captioners (train_encoder_decoder and train_clipcap): the loss, the Trainer, test
captions in batches, and the result a captioning job returns.

The loss is computed here, not by the model or the Trainer: cross-entropy over the label positions that are not
-100 (the collators mark the caption and its end token; never a prompt, a prefix or padding), with BLIP's
`label_smoothing`. The Trainer's own `label_smoothing_factor` is not used: it pops `labels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F

from .. import summaries
from ..data.datasets import ImageTextDataset
from ..evaluation.attributes import formatted_attribute_table
from ..evaluation.caption_metrics import formatted_metrics_table
from ..models.decoding import generate_captions
from ..reporting.tables import count
from .job import ImageBatchTrainer

GENERATION_BATCH_SIZE = 64  # test images captioned per generate() call


# -----------------------------------------------------------------------------
# the loss and the Trainer


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the positions where `labels` != -100, with `label_smoothing` (BLIP: 0.1).

    `logits` (B, T, V) predict `labels` (B, T) position by position: the collator already aligned them
    (`decoder_input_ids` = [start] + targets[:-1]), so nothing is shifted here.
    """
    return F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, label_smoothing=label_smoothing
    )


class CaptionTrainer(ImageBatchTrainer):
    """Trainer whose loss is `caption_loss` on the decoder's logits, with an optional lower encoder rate.

    Batches carry uint8 `pixel_values` (an encoder-decoder) or `image_embeds` (a prefix captioner, ClipCap).
    """

    def __init__(self, *args, label_smoothing: float = 0.0, encoder_learning_rate: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_smoothing, self.encoder_learning_rate = label_smoothing, encoder_learning_rate
        # The loss is a per-batch mean computed here, so the Trainer must divide it by the accumulation
        # steps itself. (With model_accepts_loss_kwargs it expects a sum over its own token count, which
        # for encoder-decoder heads counts labels[..., 1:] in transformers 5.x: too few tokens.)
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (
            "image_embeds" in inputs
        ):  # a prefix captioner (ClipCap): GPT-2 reads [prefix] + the decoder inputs
            outputs = model(
                input_ids=inputs["decoder_input_ids"],
                attention_mask=inputs["decoder_attention_mask"],
                image_embeds=inputs["image_embeds"],
            )
            logits = outputs.logits[:, -inputs["labels"].shape[1] :]  # the prefix's positions predict nothing
        else:
            outputs = model(
                pixel_values=self.normalized_pixels(model, inputs),
                decoder_input_ids=inputs["decoder_input_ids"],
                decoder_attention_mask=inputs["decoder_attention_mask"],
            )
            logits = outputs.logits
        loss = caption_loss(logits, inputs["labels"], self.label_smoothing)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def create_optimizer(self, model=None):
        if self.optimizer is not None or not self.encoder_learning_rate:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = []
        for in_encoder, lr in ((True, self.encoder_learning_rate), (False, self.args.learning_rate)):
            for decayed in (True, False):
                params = [
                    p
                    for n, p in opt_model.named_parameters()
                    if p.requires_grad and n.startswith("encoder.") == in_encoder and (n in decay) == decayed
                ]
                if params:
                    weight_decay = self.args.weight_decay if decayed else 0.0
                    groups.append({"params": params, "weight_decay": weight_decay, "lr": lr})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


def caption_in_batches(
    bundle, n_images: int, inputs, decoding: str | dict, prompt: str = "", seed: int | None = None
) -> list[list[dict]]:
    """Captions of `n_images` images, GENERATION_BATCH_SIZE at a time, the model in eval mode meanwhile.

    `inputs(rows)` gives `generate_captions`' image argument for a range of rows: {"pixel_values": ...} (an
    encoder-decoder) or {"image_embeds": ...} (a prefix captioner). Per image, its candidates, best first.
    """
    model = bundle.model
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, n_images, GENERATION_BATCH_SIZE):
            rows = range(start, min(start + GENERATION_BATCH_SIZE, n_images))
            results.extend(
                generate_captions(
                    model, bundle.tokenizer, decoding=decoding, prompt=prompt, seed=seed, **inputs(rows)
                )
            )
    finally:
        model.train(was_training)
    return results


# -----------------------------------------------------------------------------
# the result of a captioning job


@dataclass
class CaptionResult:
    """What a captioning job returns to its notebook (train_encoder_decoder; train_clipcap extends it)."""

    bundle: object
    summary: dict
    log_history: list = field(default_factory=list)
    predictions: pd.DataFrame | None = None  # image_path, references, prediction, cider, bleu4
    metrics: dict = field(default_factory=dict)  # caption_metrics of the model (per_image included)
    baseline: dict = field(default_factory=dict)  # caption_metrics of the constant caption
    attributes: dict | None = None  # attribute_scores of the model's captions (demo), else None
    test: ImageTextDataset | None = None
    baseline_caption: str = ""
    true_captions: dict = field(default_factory=dict)  # caption_metrics of held-out references
    true_caption_attributes: dict | None = None  # attribute_scores of the held-out references (demo)

    @classmethod
    def from_scores(cls, bundle, summary: dict, log_history: list, scores, test, **extra):
        """A result from its scored test captions (`nbutils.evaluation.caption_scores.CaptionScores`)."""
        return cls(
            bundle,
            summary,
            log_history,
            predictions=scores.predictions,
            metrics=scores.metrics,
            baseline=scores.baseline,
            attributes=scores.attributes,
            test=test,
            baseline_caption=scores.baseline_caption,
            true_captions=scores.true_captions,
            true_caption_attributes=scores.true_caption_attributes,
            **extra,
        )

    def overview(self):
        """The run in one small table, formatted for reading: model, steps, time, loss, settings."""
        s, stage = self.summary, ("train_encoder_decoder" if "decoder" in self.summary else "train_clipcap")
        keys = [
            "decoder" if "decoder" in s else "mapping",
            "mode",
            "steps",
            "train_seconds",
            "final_train_loss",
        ]
        params, preset = s["trainable_parameters"], str(s["decoding"]["preset"])
        return summaries.facts(
            stage,
            s,
            [*keys, "learning_rate", "batch_size"],
            trainable_parameters=f"{count(params['trainable'])} of {count(params['total'])}",
            test_captions_decoded_with="custom settings" if preset.strip().startswith("{") else preset,
            metrics_tokenisation=s["tokenization"],
        )

    def metrics_table(self):
        """Caption metrics of the model beside the constant caption's and the true captions', for reading."""
        return formatted_metrics_table(self.metrics, self.baseline, self.true_captions)

    def attribute_table(self):
        """What the captions state about the demo images, the model's beside the true captions', formatted
        for reading (`formatted_attribute_table`); None without ground truth."""
        if not self.attributes:
            return None
        return formatted_attribute_table({"model": self.attributes}, self.true_caption_attributes)
