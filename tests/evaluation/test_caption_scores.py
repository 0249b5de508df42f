"""score_test_captions on a small generated demo set: the constant caption, the held-out true captions,
attribute scores of both, empty captions, and the headline built from them."""

import json
import math

import pytest

from nbutils.demo import scenes
from nbutils.evaluation import caption_metrics as caption_metrics_module
from nbutils.evaluation.attributes import attribute_scores
from nbutils.evaluation.caption_metrics import caption_metrics, formatted_metrics_table
from nbutils.evaluation.caption_scores import (
    HELD_OUT,
    METRIC_KEYS,
    attribute_summary,
    caption_headline,
    score_test_captions,
)

N = 30


@pytest.fixture(autouse=True)
def no_java(monkeypatch):
    """METEOR is skipped (None with a reason): no JVM start per scoring."""
    which = caption_metrics_module.shutil.which
    monkeypatch.setattr(
        caption_metrics_module.shutil,
        "which",
        lambda name, *a, **k: None if name == "java" else which(name, *a, **k),
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    captions = scenes.generate_demo_dataset(
        folder, n_images=N, image_size=16, language="en", seed=3, progress=False
    )
    grouped = captions.groupby("image_path", sort=True)["text"].apply(list)
    return {
        "paths": list(grouped.index),
        "references": list(grouped.values),
        "ground_truth": str(folder / "objects.jsonl"),
        "gt": scenes.load_ground_truth(folder),
    }


def score(demo, captions, references=None, ground_truth=True):
    return score_test_captions(
        demo["paths"],
        captions,
        references or demo["references"],
        train_captions=[r for refs in demo["references"] for r in refs],
        language="en",
        tokenization="words",
        ground_truth=demo["ground_truth"] if ground_truth else None,
    )


def test_the_true_captions_are_the_first_reference_scored_against_the_others(demo):
    model = [refs[1] for refs in demo["references"]]  # a model that says another true caption
    scores = score(demo, model)
    ceiling = scores.summary["true_captions"]
    direct = caption_metrics(
        {p: refs[0] for p, refs in zip(demo["paths"], demo["references"])},
        {p: refs[1:] for p, refs in zip(demo["paths"], demo["references"])},
        "en",
        "words",
    )
    assert {k: ceiling[k] for k in METRIC_KEYS} == {k: direct[k] for k in METRIC_KEYS}
    assert ceiling["cider"] > 0.5 and ceiling["meteor"] is None and ceiling["meteor_missing_reason"]
    assert ceiling["held_out"] == HELD_OUT and ceiling["n_images"] == N
    assert scores.true_captions["cider"] == ceiling["cider"]
    # the model is scored against all references, its own caption among them: above the held-out one
    assert scores.summary["cider"] > ceiling["cider"] > scores.summary["baseline"]["cider"]
    # the true captions' attribute scores: the first references, every statement right
    truth = scores.true_caption_attributes
    assert truth == attribute_scores(
        {p: refs[0] for p, refs in zip(demo["paths"], demo["references"])}, demo["gt"], "en"
    )
    assert ceiling["attribute_scores"] == attribute_summary(truth)
    assert all(v["precision"] == 100.0 for v in ceiling["attribute_scores"]["per_attribute"].values())
    assert ceiling["attribute_scores"]["no_false_statement"] == 100.0
    assert ceiling["attribute_scores"]["hallucination_rate"] == 0.0
    assert scores.summary["empty_captions"] == 0


def test_empty_captions_are_counted_and_state_nothing(demo):
    model = [refs[0] for refs in demo["references"]]
    model[0], model[5], model[7] = "", "  ", " \n"
    scores = score(demo, model)
    assert scores.summary["empty_captions"] == 3
    attributes = scores.attributes
    assert attributes["per_attribute"]["colour"]["stated"] == N - 3
    assert attributes["per_attribute"]["colour"]["coverage"] == pytest.approx(100.0 * (N - 3) / N)
    assert attributes["no_false_statement"]["count"] == N  # an empty caption says nothing false
    summary = {**scores.summary, "steps": 10}
    assert caption_headline(summary, "m").endswith("; 3 empty captions")
    assert "empty" not in caption_headline({**summary, "empty_captions": 0}, "m")
    assert caption_headline({**summary, "empty_captions": 1}, "m").endswith("; 1 empty caption")


def test_images_with_one_reference_are_left_out_of_the_true_captions_metrics(demo):
    references = [refs if i % 3 else refs[:1] for i, refs in enumerate(demo["references"])]
    scores = score(demo, [refs[0] for refs in demo["references"]], references, ground_truth=False)
    kept = [i for i in range(N) if i % 3]
    direct = caption_metrics(
        {demo["paths"][i]: references[i][0] for i in kept},
        {demo["paths"][i]: references[i][1:] for i in kept},
        "en",
        "words",
    )
    assert scores.summary["true_captions"]["n_images"] == len(kept) == 20
    assert scores.summary["true_captions"]["cider"] == direct["cider"]
    assert scores.summary["true_captions"]["attribute_scores"] is None
    assert scores.summary["attribute_scores"] is None and scores.attributes is None

    single = score(demo, ["x"] * N, [refs[:1] for refs in demo["references"]], ground_truth=False)
    assert single.summary["true_captions"]["n_images"] == 0
    assert all(single.summary["true_captions"][k] is None for k in METRIC_KEYS)
    assert "true captions" not in caption_headline({**single.summary, "steps": 1}, "m")


def test_summary_is_standard_json_rates_over_no_caption_are_null(demo):
    scores = score(demo, ["a red circle"] * N)  # states no count or position anywhere
    attributes = scores.summary["attribute_scores"]
    assert attributes["per_attribute"]["count"] == {"precision": None, "coverage": 0.0}
    assert math.isnan(scores.attributes["per_attribute"]["count"]["precision"])
    assert attributes["per_attribute"]["colour"]["coverage"] == 100.0
    assert (
        attributes["n_images"] == N and attributes["n_single_object"] == scores.attributes["n_single_object"]
    )
    json.dumps(scores.summary, allow_nan=False)  # raises on NaN


def test_the_metrics_table_shows_the_true_captions_beside_the_constant_caption(demo):
    scores = score(demo, [refs[1] for refs in demo["references"]], ground_truth=False)
    html = formatted_metrics_table(scores.metrics, scores.baseline, scores.true_captions).to_html()
    assert ">true captions<" in html and ">constant caption<" in html
    assert f">{scores.true_captions['cider']:.3f}<" in html


def test_the_headline_gives_precision_hallucination_and_the_true_captions():
    summary = {
        "steps": 1300,
        "train_seconds": 147.2,
        "cider": 1.6461,
        "n_test_images": 267,
        "empty_captions": 2,
        "baseline": {"cider": 0.2031},
        "true_captions": {"cider": 2.5413, "attribute_scores": {"hallucination_rate": 0.0}},
        "attribute_scores": {
            "single_object": {"colour": {"precision": 98.64}, "shape": {"precision": 75.68}},
            "hallucination_rate": 43.45,
        },
    }
    assert caption_headline(summary, "a ViT → GPT-2 captioner") == (
        "Trained a ViT → GPT-2 captioner for 1,300 steps in 2.5 min: CIDEr 1.646 on 267 test images (true "
        "captions 2.541), 8.1× the constant caption's 0.203; single-object precision colour 98.6 %, shape 75.7 %; "
        "hallucinated objects in 43.5 % of captions (true captions 0.0 %); 2 empty captions"
    )
    plain = {**summary, "attribute_scores": None, "true_captions": None, "empty_captions": 0}
    assert caption_headline(plain, "m") == (
        "Trained m for 1,300 steps in 2.5 min: CIDEr 1.646 on 267 test images, 8.1× the constant caption's 0.203"
    )
