"""What a generated caption states about a demo image, and whether it is true: attribute scores of captions.

Captioning models trained on the demo set generate one caption per test image; this module parses each
caption with the demo's own vocabulary (`scenes.caption_attributes`) and compares what it claims with the
ground truth (`scenes.load_ground_truth`). No torch.

A caption need not state everything: the demo's own true captions mention one object, or no size, or no
count. So what a caption states correctly (precision) is scored apart from how much it states (coverage).
Definitions, per caption (the image's objects are its ground-truth `objects`):

- colour: the caption states a colour when it holds a colour word (also outside an object phrase,
  "一个红色的物体"); it states it correctly when every colour it names is the colour of an object the
  image holds. Naming some of the image's colours is correct, naming a colour the image lacks is not.
- shape: the same with shape words.
- size: stated when an object phrase carries a size ("big red circle"); correct when every size stated is
  the size of an object the image holds and a sized phrase naming a held object (its colour and shape)
  gives that object's size. Scored only on images whose object sizes are all in `scenes.SIZES` (in the
  demo set: every image).
- position: stated when the caption names a grid position; correct when every position named holds an
  object. Positions are not tied to objects here (the parser does not pair them).
- count: stated when the caption gives a number of objects ("两个物体", "three shapes"); correct when it
  is the number of objects.
- hallucination: the caption names an object, a colour-shape pair from `caption_attributes(...)["objects"]`,
  that the image does not hold (size is ignored here: a wrong size is a size error). An image's
  hallucinated objects are the distinct such pairs; `hallucinated_objects_per_image` is their mean number.
- no false statement: every attribute the caption states is correct and it names no hallucinated object.
  A caption stating nothing (an empty one included) makes no false statement; coverage shows what it
  left out.

Rates, in percent: per attribute, `precision` = correct / stated (NaN when no caption states it) and
`coverage` = stated / n, with the counts `correct`, `stated` and `n`; `no_false_statement` and
`hallucination_rate` as {percent, count, n}. Each on all images and on single-object images.
Every caption of the demo set is true, so its captions score 100 % precision, 100 % no false statement
and 0 % hallucination: the ceiling a model's figures compare with (`attribute_table`'s "true captions").
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
TRUE_CAPTIONS = "true captions"  # the row of the reference captions in attribute tables


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else math.nan


def _share(count: int, n: int) -> dict:
    return {"percent": _percent(count, n), "count": int(count), "n": int(n)}


def _sizes_right(sized: list[dict], objects: list[dict]) -> bool:
    """Whether the sizes of `sized` object phrases are true: a phrase naming a held object (colour and
    shape) gives that object's size; one naming an absent object (a hallucination) a size some object has."""
    size_of = {(o["colour"], o["shape"]): o["size"] for o in objects}
    for o in sized:
        pair = (o["colour"], o["shape"])
        possible = {size_of[pair]} if pair in size_of else set(size_of.values())
        if o["size"] not in possible:
            return False
    return True


def _score(caption: str, objects: list[dict], language: str) -> dict:
    """One caption: per attribute None (not stated, or size not scored) / True / False, whether size is
    scored on this image, and the number of distinct objects it names that the image does not hold."""
    claims = scenes.caption_attributes(caption, language)
    size_scored = {o["size"] for o in objects} <= set(scenes.SIZES)
    sized = [o for o in claims["objects"] if o["size"]]
    held = {(o["colour"], o["shape"]) for o in objects}
    named = {(o["colour"], o["shape"]) for o in claims["objects"]}
    return {
        "colour": claims["colours"] <= {o["colour"] for o in objects} if claims["colours"] else None,
        "shape": claims["shapes"] <= {o["shape"] for o in objects} if claims["shapes"] else None,
        "size": _sizes_right(sized, objects) if sized and size_scored else None,
        "position": claims["positions"] <= {o["position"] for o in objects} if claims["positions"] else None,
        "count": claims["count"] == len(objects) if claims["count"] is not None else None,
        "size_scored": size_scored,
        "hallucinated": len(named - held),
    }


def _rates(scores: list[dict]) -> dict:
    """Precision and coverage per attribute, with their counts (size: on the images where it is scored)."""
    out = {}
    for a in ATTRIBUTES:
        n = sum(s["size_scored"] for s in scores) if a == "size" else len(scores)
        stated = sum(s[a] is not None for s in scores)
        correct = sum(s[a] is True for s in scores)
        out[a] = {
            "precision": _percent(correct, stated),
            "coverage": _percent(stated, n),
            "correct": int(correct),
            "stated": int(stated),
            "n": int(n),
        }
    return out


def _no_false_statement(scores: list[dict]) -> dict:
    return _share(
        sum(all(s[a] is not False for a in ATTRIBUTES) and not s["hallucinated"] for s in scores), len(scores)
    )


def _hallucination(scores: list[dict]) -> dict:
    return _share(sum(s["hallucinated"] > 0 for s in scores), len(scores))


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


def attribute_scores(predictions: Mapping[str, str], ground_truth: pd.DataFrame, language: str) -> dict:
    """Score captions against the demo ground truth (definitions in the module docstring).

    `predictions` maps an image path or file stem to its caption; `ground_truth` is
    `scenes.load_ground_truth(demo_dir)`. Only the predicted images are scored; one that is not in the
    ground truth is a DataError. Returns {"per_attribute": {attribute: {precision, coverage (percent),
    correct, stated, n}}, "single_object": the same on single-object images, "no_false_statement",
    "single_object_no_false_statement", "hallucination_rate", "single_object_hallucination_rate":
    {percent, count, n}, "hallucinated_objects_per_image", "n_images", "n_single_object", "language"}.
    """
    if language not in scenes.LANGUAGES:
        raise ValueError(f"language must be one of {scenes.LANGUAGES}; got {language!r}")
    rows = _match(predictions, ground_truth)
    scores = [_score(caption, objects, language) for _, caption, objects in rows]
    single = [s for s, (_, _, objects) in zip(scores, rows) if len(objects) == 1]
    n = len(scores)
    return {
        "per_attribute": _rates(scores),
        "single_object": _rates(single),
        "no_false_statement": _no_false_statement(scores),
        "single_object_no_false_statement": _no_false_statement(single),
        "hallucination_rate": _hallucination(scores),
        "single_object_hallucination_rate": _hallucination(single),
        "hallucinated_objects_per_image": sum(s["hallucinated"] for s in scores) / n if n else math.nan,
        "n_images": n,
        "n_single_object": len(single),
        "language": language,
    }


def chance_rates() -> dict:
    """Precision of a uniform random guess on a single-object image, where that is well defined (percent).

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


CHANCE = "uniform guess"  # the row of chance_rates in attribute tables
IMAGE_SETS = {  # row label -> the keys of its figures in attribute_scores' result
    "all images": ("per_attribute", "n_images", "no_false_statement", "hallucination_rate"),
    "single-object": (
        "single_object",
        "n_single_object",
        "single_object_no_false_statement",
        "single_object_hallucination_rate",
    ),
}


def attribute_table(models: Mapping[str, dict], true_captions: dict | None = None) -> pd.DataFrame:
    """The captions of each of `models` (name -> `attribute_scores` result), then the true captions'
    (`true_captions`: the same scoring of one reference per image), then a uniform guess's precision.

    Rows: (captions, images), images "all images" and "single-object"; columns: ("", "images") the
    number scored, (attribute, "precision") and (attribute, "coverage") per attribute, ("", "no false
    statement") and ("", "hallucination"), all percent (NaN where not defined).
    """
    named = dict(models)
    if true_captions is not None:
        named[TRUE_CAPTIONS] = true_captions
    rows, index = [], []
    for name, result in named.items():
        for images, (per_attribute, n, no_false, hallucination) in IMAGE_SETS.items():
            row = {("", "images"): result[n]}
            for a in ATTRIBUTES:
                row[(a, "precision")] = result[per_attribute][a]["precision"]
                row[(a, "coverage")] = result[per_attribute][a]["coverage"]
            row[("", "no false statement")] = result[no_false]["percent"]
            row[("", "hallucination")] = result[hallucination]["percent"]
            rows.append(row)
            index.append((name, images))
    chance = chance_rates()
    rows.append({(a, "precision"): chance[a] for a in ATTRIBUTES})
    index.append((CHANCE, "single-object"))
    table = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["captions", "images"]))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def formatted_attribute_table(models: Mapping[str, dict], true_captions: dict | None = None):
    """`attribute_table(models, true_captions)` for reading: rates as "98.6 %", counts with separators, no
    header row for the index names (the row labels say what they are)."""
    table = attribute_table(models, true_captions).rename_axis(index=[None, None])
    counts = [("", "images")]
    return formatted(
        table,
        percent_columns=[c for c in table.columns if c not in counts],
        count_columns=counts,
    )


def attribute_errors(
    predictions: Mapping[str, str], ground_truth: pd.DataFrame, language: str
) -> dict[str, list[str]]:
    """Per prediction key, what its caption states wrongly: the attributes stated incorrectly, then
    "hallucination" when it names an object the image does not hold ([] when it states nothing false;
    an attribute left out is not an error).

    What a caption browser filters on ("attribute errors only").
    """
    rows = _match(predictions, ground_truth)
    out = {}
    for key, (_, caption, objects) in zip(predictions, rows):
        scored = _score(caption, objects, language)
        out[key] = [a for a in ATTRIBUTES if scored[a] is False]
        if scored["hallucinated"]:
            out[key].append("hallucination")
    return out
