"""A captioner's test captions scored the one way every captioning notebook reports them.

`score_test_captions` takes the best caption per test image and returns the metrics against all references
(`caption_metrics`), the constant caption and the true captions scored the same way, attribute scores on
the demo set, a per-image predictions table and the summary.json keys the captioning stages share:

- the caption metrics (`bleu1`..`bleu4`, `meteor`, `meteor_missing_reason`, `rouge_l`, `cider`),
  `tokenization`, `n_test_images`;
- `empty_captions`: how many of the model's captions are empty (blank after decoding);
- `baseline`: the same metrics for the constant caption (the most frequent training caption), and `caption`;
- `true_captions`: the same metrics for one true caption per image, the first reference, held out and
  scored against the image's other references (leave-one-out, the usual estimate of human performance),
  with `held_out`, `n_images` (images with at least two references) and `attribute_scores`;
- `attribute_scores` (demo set, else null): `attribute_summary` of the model's captions: `per_attribute`
  and `single_object` ({attribute: {precision, coverage}}), `no_false_statement`, `hallucination_rate`
  and their `single_object_` twins (percent; null where no caption states the attribute), `n_images`,
  `n_single_object` (definitions: nbutils.evaluation.attributes).

The true captions' metrics are a reference point, not an upper bound: the model is scored against all
references and a held-out true caption against one fewer (which lowers its scores somewhat), and a caption
phrased the way most references are scores higher than a single true caption (captioning models exceed
human CIDEr on COCO). On the demo set the attribute scores say what is actually true: there the true
captions are the ceiling (100 % precision, no hallucination). No torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..demo import scenes
from ..reporting.tables import count, duration, number, percent
from .attributes import ATTRIBUTES, attribute_scores
from .caption_metrics import METRIC_KEYS as SCORE_KEYS
from .caption_metrics import caption_metrics, constant_baseline

# caption_metrics' scores, plus why METEOR is null where Java is missing
METRIC_KEYS = (*SCORE_KEYS, "meteor_missing_reason")
HELD_OUT = "the first reference of each image"  # summary.json's true_captions.held_out


@dataclass
class CaptionScores:
    """The scores of one set of test captions (see `score_test_captions`)."""

    summary: dict  # the summary.json keys of the module docstring
    predictions: pd.DataFrame  # image_path, references, prediction, cider, bleu4
    metrics: dict = field(default_factory=dict)  # caption_metrics of the model (per_image included)
    baseline: dict = field(default_factory=dict)  # caption_metrics of the constant caption
    attributes: dict | None = None  # attribute_scores of the model's captions (demo), else None
    baseline_caption: str = ""
    true_captions: dict = field(default_factory=dict)  # caption_metrics of the held-out references
    true_caption_attributes: dict | None = None  # attribute_scores of the held-out references (demo)


def _percent_or_none(value: float) -> float | None:
    """NaN (a rate over no captions) as None: summary.json stays standard JSON."""
    return None if math.isnan(value) else value


def attribute_summary(result: dict) -> dict:
    """summary.json's attribute_scores: precision and coverage (percent, null where no caption states the
    attribute) per attribute on all images and on single-object ones, no false statement, hallucination."""
    summary = {
        group: {
            a: {rate: _percent_or_none(result[group][a][rate]) for rate in ("precision", "coverage")}
            for a in ATTRIBUTES
        }
        for group in ("per_attribute", "single_object")
    }
    for key in (
        "no_false_statement",
        "single_object_no_false_statement",
        "hallucination_rate",
        "single_object_hallucination_rate",
    ):
        summary[key] = _percent_or_none(result[key]["percent"])
    summary.update(n_images=result["n_images"], n_single_object=result["n_single_object"])
    return summary


@dataclass
class ReferenceScores:
    """What test captions are compared with: the same for every captioner on the same images."""

    baseline: dict  # caption_metrics of the constant caption
    baseline_caption: str
    true_captions: dict  # caption_metrics of the held-out references ({} when no image has two)
    n_held_out: int  # images with at least two references
    truth: pd.DataFrame | None = None  # the demo's ground truth (scenes.load_ground_truth), else None
    true_caption_attributes: dict | None = None  # attribute_scores of the first references (demo)


def score_references(
    image_paths: list[str],
    references: list[list[str]],
    train_captions: list[str],
    language: str,
    tokenization: str,
    ground_truth: str | None = None,
) -> ReferenceScores:
    """The constant caption (the most frequent of `train_captions`) and the true captions (each image's first
    reference, scored against its other references; images with one reference are left out) with the same
    `caption_metrics` call as the model's; with `ground_truth` (the demo's objects.jsonl) the attribute scores
    of every image's first reference."""
    by_image = dict(zip(image_paths, references))
    constant = constant_baseline(train_captions, image_paths)
    baseline = caption_metrics(constant, by_image, language, tokenization)
    held_out = {p: refs[0] for p, refs in by_image.items() if len(refs) > 1}
    true_captions = (
        caption_metrics(held_out, {p: by_image[p][1:] for p in held_out}, language, tokenization)
        if held_out
        else {}
    )
    truth = true_attributes = None
    if ground_truth:
        truth = scenes.load_ground_truth(Path(ground_truth).parent)
        true_attributes = attribute_scores({p: refs[0] for p, refs in by_image.items()}, truth, language)
    return ReferenceScores(
        baseline, next(iter(constant.values())), true_captions, len(held_out), truth, true_attributes
    )


def score_test_captions(
    image_paths: list[str],
    captions: list[str],
    references: list[list[str]],
    train_captions: list[str],
    language: str,
    tokenization: str,
    ground_truth: str | None = None,
    reference_scores: ReferenceScores | None = None,
) -> CaptionScores:
    """Score one caption per image (`captions[i]` for `image_paths[i]`) against `references[i]`.

    Beside them, `score_references(image_paths, references, train_captions, language, tokenization,
    ground_truth)`: the constant caption, the true captions and, with `ground_truth` (the demo's
    objects.jsonl, `prepared.origin.ground_truth`), attribute scores. A caller that scores several captioners
    on the same images passes those `reference_scores` once computed (train_captions and ground_truth are
    then not read again).
    """
    compared = reference_scores or score_references(
        image_paths, references, train_captions, language, tokenization, ground_truth
    )
    predicted = dict(zip(image_paths, captions))
    metrics = caption_metrics(
        predicted, dict(zip(image_paths, references)), language, tokenization, per_image=True
    )
    attributes = None
    if compared.truth is not None:
        attributes = attribute_scores(predicted, compared.truth, language)
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
    true_attributes = compared.true_caption_attributes
    summary = {key: metrics[key] for key in METRIC_KEYS}
    summary.update(
        {
            "tokenization": tokenization,
            "n_test_images": metrics["n_images"],
            "empty_captions": sum(not caption.strip() for caption in captions),
            "baseline": {
                **{key: compared.baseline[key] for key in METRIC_KEYS},
                "caption": compared.baseline_caption,
            },
            "true_captions": {
                **{key: compared.true_captions.get(key) for key in METRIC_KEYS},
                "held_out": HELD_OUT,
                "n_images": compared.n_held_out,
                "attribute_scores": attribute_summary(true_attributes) if true_attributes else None,
            },
            "attribute_scores": attribute_summary(attributes) if attributes else None,
        }
    )
    return CaptionScores(
        summary,
        predictions,
        metrics,
        compared.baseline,
        attributes,
        compared.baseline_caption,
        compared.true_captions,
        true_attributes,
    )


def caption_headline(summary: dict, model: str) -> str:
    """One sentence of what a captioning stage achieved, from its summary (`model` names what was trained):
    "Trained a ViT → GPT-2 captioner for 1,300 steps in 2.5 min: CIDEr 1.646 on 267 test images (true
    captions 2.541), 8.1× the constant caption's 0.203; single-object precision colour 98.6 %, shape 75.7 %;
    hallucinated objects in 43.4 % of captions (true captions 0.0 %); 2 empty captions". The empty
    captions only where there are some."""
    took = f" in {duration(summary['train_seconds'])}" if summary.get("train_seconds") else ""
    text = (
        f"Trained {model} for {count(summary['steps'])} steps{took}: CIDEr {number(summary['cider'], 3)} "
        f"on {count(summary['n_test_images'])} test images"
    )
    true_captions = summary.get("true_captions") or {}
    if true_captions.get("cider") is not None:
        text += f" (true captions {number(true_captions['cider'], 3)})"
    base = (summary.get("baseline") or {}).get("cider")
    if base:
        text += f", {summary['cider'] / base:,.1f}× the constant caption's {number(base, 3)}"
    attributes = summary.get("attribute_scores")
    if attributes:
        single = attributes["single_object"]
        text += "; single-object precision " + ", ".join(
            f"{a} {percent(single[a]['precision'])}" for a in ("colour", "shape")
        )
        text += f"; hallucinated objects in {percent(attributes['hallucination_rate'])} of captions"
        reference = true_captions.get("attribute_scores")
        if reference:
            text += f" (true captions {percent(reference['hallucination_rate'])})"
    empty = summary.get("empty_captions")
    if empty:
        text += f"; {count(empty)} empty caption{'s' if empty != 1 else ''}"
    return text
