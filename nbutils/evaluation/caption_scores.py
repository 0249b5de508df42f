"""A captioner's test captions scored the one way every captioning notebook reports them.

`score_test_captions` takes the best caption per test image and returns the metrics against all references
(`caption_metrics`), the constant-caption baseline scored the same way, attribute accuracy on the demo set,
a per-image predictions table and the summary.json keys the captioning stages share. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..demo import scenes
from ..reporting.tables import count, duration, number, percent
from .attributes import attribute_accuracy
from .caption_metrics import METRIC_KEYS as SCORE_KEYS
from .caption_metrics import caption_metrics, constant_baseline

# caption_metrics' scores, plus why METEOR is null where Java is missing
METRIC_KEYS = (*SCORE_KEYS, "meteor_missing_reason")


@dataclass
class CaptionScores:
    """The scores of one set of test captions (see `score_test_captions`)."""

    summary: dict  # the metrics, tokenization, n_test_images, baseline, attribute_accuracy
    predictions: pd.DataFrame  # image_path, references, prediction, cider, bleu4
    metrics: dict = field(default_factory=dict)  # caption_metrics of the model (per_image included)
    baseline: dict = field(default_factory=dict)  # caption_metrics of the constant caption
    attributes: dict | None = None  # attribute_accuracy (demo), else None
    baseline_caption: str = ""


def attribute_summary(result: dict) -> dict:
    """summary.json's attribute_accuracy: accuracies (percent) per attribute, overall and single-object."""
    return {
        "per_attribute": {a: r["accuracy"] for a, r in result["per_attribute"].items()},
        "single_object": {a: r["accuracy"] for a, r in result["single_object"].items()},
        "all_correct": result["all_correct"]["accuracy"],
        "single_object_all_correct": result["single_object_all_correct"]["accuracy"],
        "hallucination_rate": result["hallucination_rate"],
        "n_images": result["n_images"],
        "n_single_object": result["n_single_object"],
    }


def score_test_captions(
    image_paths: list[str],
    captions: list[str],
    references: list[list[str]],
    train_captions: list[str],
    language: str,
    tokenization: str,
    ground_truth: str | None = None,
) -> CaptionScores:
    """Score one caption per image (`captions[i]` for `image_paths[i]`) against `references[i]`.

    The baseline captions every image with the most frequent of `train_captions`. `ground_truth` (the demo's
    objects.jsonl, `prepared.origin.ground_truth`) adds attribute accuracy.
    """
    predicted = dict(zip(image_paths, captions))
    metrics = caption_metrics(
        predicted, dict(zip(image_paths, references)), language, tokenization, per_image=True
    )
    constant = constant_baseline(train_captions, image_paths)
    baseline = caption_metrics(constant, dict(zip(image_paths, references)), language, tokenization)
    attributes = None
    if ground_truth:
        attributes = attribute_accuracy(
            predicted, scenes.load_ground_truth(Path(ground_truth).parent), language
        )
    per_image = metrics["per_image"]
    predictions = pd.DataFrame(
        {
            "image_path": image_paths,
            "references": [" | ".join(refs) for refs in references],
            "prediction": captions,
            "cider": [per_image[k]["cider"] for k in image_paths],
            "bleu4": [per_image[k]["bleu4"] for k in image_paths],
        }
    )
    baseline_caption = next(iter(constant.values()))
    summary = {key: metrics[key] for key in METRIC_KEYS}
    summary.update(
        {
            "tokenization": tokenization,
            "n_test_images": metrics["n_images"],
            "baseline": {**{key: baseline[key] for key in METRIC_KEYS}, "caption": baseline_caption},
            "attribute_accuracy": attribute_summary(attributes) if attributes else None,
        }
    )
    return CaptionScores(summary, predictions, metrics, baseline, attributes, baseline_caption)


def caption_headline(summary: dict, model: str) -> str:
    """One sentence of what a captioning stage achieved, from its summary (`model` names what was trained):
    "Trained a ViT → GPT-2 captioner for 1,300 steps in 2.5 min: CIDEr 1.646 on 267 test images, 8.1× the
    constant caption's 0.203; single-object colour 98.6 %, shape 75.7 %"."""
    took = f" in {duration(summary['train_seconds'])}" if summary.get("train_seconds") else ""
    text = (
        f"Trained {model} for {count(summary['steps'])} steps{took}: CIDEr {number(summary['cider'], 3)} "
        f"on {count(summary['n_test_images'])} test images"
    )
    base = (summary.get("baseline") or {}).get("cider")
    if base:
        text += f", {summary['cider'] / base:,.1f}× the constant caption's {number(base, 3)}"
    attributes = summary.get("attribute_accuracy")
    if attributes:
        single = attributes["single_object"]
        text += "; single-object " + ", ".join(f"{a} {percent(single[a])}" for a in ("colour", "shape"))
    return text
