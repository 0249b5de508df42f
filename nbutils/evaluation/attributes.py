"""Does a generated caption state the demo image's content correctly? Attribute accuracy of captions.

Captioning models trained on the demo set generate one caption per test image; this module parses each
caption with the demo's own vocabulary (`scenes.caption_attributes`) and compares what it claims with the
ground truth (`scenes.load_ground_truth`). No torch.

Definitions (per image; the image's objects are its ground-truth `objects`):

- colour: the caption's set of colour words (every colour word, also outside an object phrase) equals the
  set of the image's object colours. For a single-object image: the caption names exactly that colour.
- shape: the same with shape words.
- size: the set of sizes stated in the caption's object phrases ("big red circle") equals the set of the
  image's object sizes. A caption that states no size gets it wrong. Scored only on images whose object
  sizes are all in `scenes.SIZES` (in the demo set: every image).
- position: the caption's set of positions equals the set of the image's object positions.
- count: the caption's stated count equals the number of objects; no stated count is wrong.
- all_correct: colour, shape, size, position and count all correct (size only where it is scored, see
  above).
- hallucination: the caption names an object, a colour-shape pair from `caption_attributes(...)["objects"]`,
  that the image does not hold (size is ignored here: a wrong size is a size error). An image's
  hallucinated objects are the distinct such pairs; `hallucinated_objects_per_image` is their mean number.

For multi-object images colour/shape/size/position are compared as sets, so they do not check which colour
goes with which shape; hallucination does ("blue circle" for a blue square and a red circle).
Rates are percentages of the images scored, each reported with its `correct` and `n`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..demo import scenes
from ..errors import DataError
from ..reporting.tables import formatted

ATTRIBUTES = ("colour", "shape", "size", "position", "count")


def _rate(correct: int, n: int) -> dict:
    return {"accuracy": 100.0 * correct / n if n else math.nan, "correct": int(correct), "n": int(n)}


def _score(caption: str, objects: list[dict], language: str) -> dict:
    """Per-attribute correctness (True/False, or None for not scored) and hallucinated pairs of one image."""
    claims = scenes.caption_attributes(caption, language)
    sizes = {o["size"] for o in objects}
    scored = {
        "colour": claims["colours"] == {o["colour"] for o in objects},
        "shape": claims["shapes"] == {o["shape"] for o in objects},
        "size": claims["sizes"] == sizes if sizes <= set(scenes.SIZES) else None,
        "position": claims["positions"] == {o["position"] for o in objects},
        "count": claims["count"] == len(objects),
    }
    held = {(o["colour"], o["shape"]) for o in objects}
    named = {(o["colour"], o["shape"]) for o in claims["objects"]}
    scored["hallucinated"] = len(named - held)
    return scored


def _rates(scores: list[dict]) -> dict:
    return {
        a: _rate(sum(s[a] is True for s in scores), sum(s[a] is not None for s in scores)) for a in ATTRIBUTES
    }


def _match(predictions: Mapping[str, str], ground_truth: pd.DataFrame) -> list[tuple[str, str, list[dict]]]:
    """(stem, caption, objects) per prediction, matched to the ground truth by file stem."""
    missing = [c for c in ("image_path", "objects") if c not in ground_truth.columns]
    if missing:
        raise DataError(f"ground truth: no column {missing[0]!r} (expected scenes.load_ground_truth's table)")
    by_stem = {
        Path(p).stem: objects for p, objects in zip(ground_truth["image_path"], ground_truth["objects"])
    }
    rows, seen = [], {}
    for key, caption in predictions.items():
        stem = Path(str(key)).stem
        if stem not in by_stem:
            raise DataError(
                f"predictions: image {key!r} is not in the ground truth (matched by file stem {stem!r})"
            )
        if stem in seen:
            raise DataError(
                f"predictions: {seen[stem]!r} and {key!r} are the same image (file stem {stem!r})"
            )
        if not isinstance(caption, str):
            raise DataError(f"predictions: the caption of {key!r} is not a string: {caption!r}")
        seen[stem] = key
        rows.append((stem, caption, by_stem[stem]))
    return rows


def attribute_accuracy(predictions: Mapping[str, str], ground_truth: pd.DataFrame, language: str) -> dict:
    """Score generated captions against the demo ground truth (definitions in the module docstring).

    `predictions` maps an image path or file stem to its caption; `ground_truth` is
    `scenes.load_ground_truth(demo_dir)`. Only the predicted images are scored; one that is not in the
    ground truth is a DataError. Returns {"per_attribute": {attribute: {accuracy (percent), correct, n}},
    "single_object": the same on single-object images, "all_correct" and "single_object_all_correct":
    {accuracy, correct, n},
    "hallucination_rate" (percent of images), "n_hallucinated", "hallucinated_objects_per_image",
    "n_images", "n_single_object", "language"}.
    """
    if language not in scenes.LANGUAGES:
        raise ValueError(f"language must be one of {scenes.LANGUAGES}; got {language!r}")
    rows = _match(predictions, ground_truth)
    scores = [_score(caption, objects, language) for _, caption, objects in rows]
    single = [s for s, (_, _, objects) in zip(scores, rows) if len(objects) == 1]
    n = len(scores)
    all_correct = lambda scored: _rate(
        sum(all(s[a] is not False for a in ATTRIBUTES) for s in scored), len(scored)
    )
    hallucinated = sum(s["hallucinated"] > 0 for s in scores)
    return {
        "per_attribute": _rates(scores),
        "single_object": _rates(single),
        "all_correct": all_correct(scores),
        "single_object_all_correct": all_correct(single),
        "hallucination_rate": 100.0 * hallucinated / n if n else math.nan,
        "n_hallucinated": int(hallucinated),
        "hallucinated_objects_per_image": sum(s["hallucinated"] for s in scores) / n if n else math.nan,
        "n_images": n,
        "n_single_object": len(single),
        "language": language,
    }


def chance_rates() -> dict:
    """Percent correct of a uniform random guess on a single-object image, where that is well defined.

    Colour, shape, size and position are drawn uniformly by the generator, so 1/len(vocabulary) is both a
    random guess's and the best constant guess's rate. Count has no such rate (saying "one" is always right
    on a single object): NaN.
    """
    vocab = {
        "colour": scenes.COLOURS,
        "shape": scenes.SHAPES,
        "size": scenes.SIZES,
        "position": scenes.POSITIONS,
    }
    return {a: 100.0 / len(vocab[a]) if a in vocab else math.nan for a in ATTRIBUTES}


def attribute_table(result: dict) -> pd.DataFrame:
    """One row per attribute (and "all" for all_correct): n, accuracy, single-object n and accuracy, and
    the single-object chance rate (percent; NaN where not defined)."""
    chance = chance_rates()
    rows = [
        {
            "attribute": a,
            "n": result["per_attribute"][a]["n"],
            "accuracy": result["per_attribute"][a]["accuracy"],
            "n_single_object": result["single_object"][a]["n"],
            "single_object_accuracy": result["single_object"][a]["accuracy"],
            "chance_single_object": chance[a],
        }
        for a in ATTRIBUTES
    ]
    rows.append(
        {
            "attribute": "all",
            "n": result["all_correct"]["n"],
            "accuracy": result["all_correct"]["accuracy"],
            "n_single_object": result["single_object_all_correct"]["n"],
            "single_object_accuracy": result["single_object_all_correct"]["accuracy"],
            "chance_single_object": math.nan,
        }
    )
    return pd.DataFrame(rows)


ATTRIBUTE_TABLE_HEADERS = {
    "n": "images",
    "accuracy": "accuracy",
    "n_single_object": "single-object images",
    "single_object_accuracy": "single-object accuracy",
    "chance_single_object": "single-object chance",
}


def formatted_attribute_table(result: dict):
    """`attribute_table(result)` for reading: counts with separators, accuracies and chance as "98.6 %"."""
    table = attribute_table(result).set_index("attribute").rename(columns=ATTRIBUTE_TABLE_HEADERS)
    return formatted(
        table,
        percent_columns=["accuracy", "single-object accuracy", "single-object chance"],
        count_columns=["images", "single-object images"],
    )


def attribute_errors(
    predictions: Mapping[str, str], ground_truth: pd.DataFrame, language: str, attributes=ATTRIBUTES
) -> dict[str, list[str]]:
    """Per prediction key, the `attributes` its caption gets wrong (the module's definitions; [] when all right).

    What a caption browser filters on ("attribute errors only").
    """
    rows = _match(predictions, ground_truth)
    out = {}
    for key, (_, caption, objects) in zip(predictions, rows):
        scored = _score(caption, objects, language)
        out[key] = [a for a in attributes if scored[a] is False]
    return out
