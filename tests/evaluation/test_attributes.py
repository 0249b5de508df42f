"""attribute_scores on the demo set's own (true) captions, and on perturbations and hand-built captions with
known answers."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbutils.demo import scenes
from nbutils.errors import DataError
from nbutils.evaluation.attributes import (
    ATTRIBUTES,
    attribute_errors,
    attribute_scores,
    attribute_table,
    formatted_attribute_table,
)

TEMPLATE_NAMES = ("list", "count", "where_has", "at", "background", "picture", "sizes", "focus", "located")
N = 40  # images of the demo fixture


@pytest.fixture(scope="module", params=["zh", "en"])
def demo(request, tmp_path_factory):
    language = request.param
    folder = tmp_path_factory.mktemp(f"demo-{language}")
    captions = scenes.generate_demo_dataset(
        folder, n_images=N, image_size=32, language=language, seed=0, progress=False
    )
    gt = scenes.load_ground_truth(folder)
    return {
        "language": language,
        "captions": captions,
        "gt": gt,
        "n_single": int((gt["n_objects"] == 1).sum()),
    }


def template(language, name):
    return {t.__name__.split("_", 2)[2]: t for t in scenes.TEMPLATES[language]}[name]


def render(demo, name):
    """{stem: caption} with template `name` rendered for every image of the demo set."""
    t = template(demo["language"], name)
    return {
        Path(row.image_path).stem: t(list(row.objects), np.random.default_rng(i), row.background_style)
        for i, row in enumerate(demo["gt"].itertuples())
    }


def full_captions(demo):
    """Count + where_has + sizes: one caption stating count, every object with its size, every position."""
    sep = "。" if demo["language"] == "zh" else ". "
    parts = [render(demo, name) for name in ("count", "where_has", "sizes")]
    return {stem: sep.join(p[stem] for p in parts) for stem in parts[0]}


def first_references(demo):
    """{image_path: caption}: the first of each image's true captions, as the reports score them."""
    return dict(demo["captions"].groupby("image_path", sort=False)["text"].first())


def stated(result, key="per_attribute"):
    return {a: result[key][a]["stated"] for a in ATTRIBUTES}


def correct(result, key="per_attribute"):
    return {a: result[key][a]["correct"] for a in ATTRIBUTES}


def test_the_template_names_are_the_templates():
    for language in scenes.LANGUAGES:
        assert [t.__name__ for t in scenes.TEMPLATES[language]] == [
            f"_{language}_{n}" for n in TEMPLATE_NAMES
        ]


def test_the_demo_set_has_single_and_multi_object_images(demo):
    assert len(demo["gt"]) == N
    assert demo["n_single"] == 9  # seed 0: the same scenes in both languages


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_each_template_states_only_true_things_and_is_covered_by_what_it_states(demo, name):
    n_single = demo["n_single"]
    result = attribute_scores(render(demo, name), demo["gt"], demo["language"])
    assert result["n_images"] == N and result["n_single_object"] == n_single
    assert result["language"] == demo["language"]
    assert correct(result) == stated(result)  # every statement of a true caption is right
    got = stated(result)
    assert got["colour"] == got["shape"] == N  # every template names objects
    assert got["position"] == (N if name in ("where_has", "at", "located", "focus") else 0)
    assert got["count"] == (N if name == "count" else 0)  # only the count template states the count
    if name == "sizes":  # the only template that always states a size
        assert got["size"] == N
    for a in ATTRIBUTES:
        rates = result["per_attribute"][a]
        assert rates["n"] == N and rates["coverage"] == pytest.approx(100.0 * got[a] / N)
        assert rates["precision"] == 100.0 if got[a] else math.isnan(rates["precision"])
    assert result["no_false_statement"] == {"percent": 100.0, "count": N, "n": N}
    assert result["hallucination_rate"] == {"percent": 0.0, "count": 0, "n": N}
    assert result["hallucinated_objects_per_image"] == 0.0
    single = stated(result, "single_object")
    assert single["colour"] == single["shape"] == n_single
    assert single["position"] == (n_single if name in ("where_has", "at", "located", "focus") else 0)
    assert single["count"] == (n_single if name == "count" else 0)
    assert result["single_object_no_false_statement"]["count"] == n_single


def test_a_caption_stating_everything_is_covered_and_right_everywhere(demo):
    result = attribute_scores(full_captions(demo), demo["gt"], demo["language"])
    assert correct(result) == stated(result) == dict.fromkeys(ATTRIBUTES, N)
    assert correct(result, "single_object") == dict.fromkeys(ATTRIBUTES, demo["n_single"])
    assert all(
        result["per_attribute"][a]["precision"] == result["per_attribute"][a]["coverage"] == 100.0
        for a in ATTRIBUTES
    )
    assert result["no_false_statement"]["percent"] == 100.0
    assert result["hallucination_rate"]["percent"] == 0.0


def test_the_demo_sets_own_captions_are_the_ceiling_100_percent_precision_and_no_hallucination(demo):
    """Every one of the five true captions per image, scored like a model's: nothing stated is false."""
    captions = demo["captions"].assign(k=lambda d: d.groupby("image_path").cumcount())
    assert captions.groupby("image_path").size().eq(5).all() and captions["image_path"].nunique() == N
    for _, batch in captions.groupby("k"):
        result = attribute_scores(dict(zip(batch["image_path"], batch["text"])), demo["gt"], demo["language"])
        for key in ("per_attribute", "single_object"):
            assert correct(result, key) == stated(result, key)
            assert all(result[key][a]["precision"] == 100.0 for a in ATTRIBUTES if result[key][a]["stated"])
        assert all(result["per_attribute"][a]["stated"] > 0 for a in ATTRIBUTES)  # 100 %, never NaN
        assert result["no_false_statement"] == {"percent": 100.0, "count": N, "n": N}
        assert result["single_object_no_false_statement"]["percent"] == 100.0
        assert result["hallucination_rate"]["percent"] == 0.0
        assert result["single_object_hallucination_rate"]["percent"] == 0.0
        # a true caption names an object, but rarely states a count: coverage measures completeness
        assert (
            result["per_attribute"]["colour"]["coverage"]
            == result["per_attribute"]["shape"]["coverage"]
            == 100
        )
        assert 0 < result["per_attribute"]["count"]["coverage"] < 50
    errors = attribute_errors(first_references(demo), demo["gt"], demo["language"])
    assert len(errors) == N and all(e == [] for e in errors.values())


def swap_colour(text, old, new, language):
    if language == "zh":
        return text.replace(scenes.COLOURS[old]["zh"], scenes.COLOURS[new]["zh"])
    return re.sub(rf"\b{old}\b", new, text)


def next_colour(colour):
    colours = list(scenes.COLOURS)
    return colours[(colours.index(colour) + 1) % len(colours)]


def test_one_wrong_colour_costs_exactly_one_caption_of_colour_precision(demo):
    language, gt = demo["language"], demo["gt"]
    references = first_references(demo)
    before = attribute_scores(references, gt, language)
    row = gt[gt["n_objects"] == 1].iloc[0]
    old = row["objects"][0]["colour"]
    wrong = {
        **references,
        row["image_path"]: swap_colour(references[row["image_path"]], old, next_colour(old), language),
    }
    after = attribute_scores(wrong, gt, language)
    n = before["per_attribute"]["colour"]["stated"]
    assert n == N and after["per_attribute"]["colour"]["stated"] == n  # still stated, now wrongly
    assert after["per_attribute"]["colour"]["precision"] == pytest.approx(100.0 - 100.0 / n)
    assert after["per_attribute"]["colour"]["coverage"] == 100.0
    for a in ATTRIBUTES[1:]:
        assert after["per_attribute"][a] == before["per_attribute"][a]
    single = after["single_object"]["colour"]
    assert single["correct"] == demo["n_single"] - 1 and single["stated"] == demo["n_single"]
    # the recoloured object is not in the image: one false statement, one hallucination
    assert after["no_false_statement"] == {"percent": 100.0 * (N - 1) / N, "count": N - 1, "n": N}
    assert after["hallucination_rate"] == {"percent": 100.0 / N, "count": 1, "n": N}
    errors = attribute_errors(wrong, gt, language)
    assert errors[row["image_path"]] == ["colour", "hallucination"]
    assert sum(bool(e) for e in errors.values()) == 1


def test_a_wrong_colour_on_every_single_object_image_costs_exactly_those_images(demo):
    language, gt, n_single = demo["language"], demo["gt"], demo["n_single"]
    predictions = full_captions(demo)
    for row in gt[gt["n_objects"] == 1].itertuples():
        old = row.objects[0]["colour"]
        stem = Path(row.image_path).stem
        predictions[stem] = swap_colour(predictions[stem], old, next_colour(old), language)
        assert scenes.COLOURS[old][language] not in predictions[stem]
    result = attribute_scores(predictions, gt, language)
    assert correct(result) == {**dict.fromkeys(ATTRIBUTES, N), "colour": N - n_single}
    assert result["per_attribute"]["colour"]["precision"] == pytest.approx(100.0 * (N - n_single) / N)
    assert result["single_object"]["colour"]["precision"] == 0.0
    assert result["single_object"]["shape"]["correct"] == n_single
    assert result["no_false_statement"]["count"] == N - n_single
    assert result["hallucination_rate"]["count"] == n_single
    assert result["hallucinated_objects_per_image"] == pytest.approx(n_single / N)


def test_an_extra_object_with_swapped_attributes_is_a_hallucination_only(demo):
    """Colour of one object with the shape of another: every colour and shape named is the image's; only
    the pairing is not."""
    language, gt = demo["language"], demo["gt"]
    predictions, changed = full_captions(demo), 0
    for row in gt[gt["n_objects"] > 1].itertuples():
        colour, shape = row.objects[0]["colour"], row.objects[1]["shape"]
        if (colour, shape) in {(o["colour"], o["shape"]) for o in row.objects}:
            continue
        c, s = scenes.COLOURS[colour][language], scenes.SHAPES[shape][language]
        stem = Path(row.image_path).stem
        predictions[stem] += f"，还有一个{c}{s}" if language == "zh" else f" and a {c} {s}"
        changed += 1
    assert changed > 20
    result = attribute_scores(predictions, gt, language)
    assert correct(result) == stated(result) == dict.fromkeys(ATTRIBUTES, N)
    assert result["hallucination_rate"] == {"percent": 100.0 * changed / N, "count": changed, "n": N}
    assert result["no_false_statement"]["count"] == N - changed
    assert result["hallucinated_objects_per_image"] == pytest.approx(changed / N)


def test_two_invented_objects_count_twice(demo):
    language, gt = demo["language"], demo["gt"]
    row = gt.iloc[0]
    held = {(o["colour"], o["shape"]) for o in row["objects"]}
    invented = [(c, s) for c in scenes.COLOURS for s in scenes.SHAPES if (c, s) not in held][:2]
    words = [
        f"{scenes.COLOURS[c][language]}{'' if language == 'zh' else ' '}{scenes.SHAPES[s][language]}"
        for c, s in invented
    ]
    stem = Path(row["image_path"]).stem
    caption = full_captions(demo)[stem] + ("，" if language == "zh" else " and ") + " and ".join(words)
    result = attribute_scores({stem: caption + " " + caption}, gt, language)  # repeated: still two
    assert result["hallucination_rate"] == {"percent": 100.0, "count": 1, "n": 1}
    assert result["hallucinated_objects_per_image"] == 2.0


def test_an_empty_caption_states_nothing_so_nothing_false(demo):
    predictions = dict.fromkeys(render(demo, "list"), "")
    result = attribute_scores(predictions, demo["gt"], demo["language"])
    for key in ("per_attribute", "single_object"):
        for a in ATTRIBUTES:
            rates = result[key][a]
            assert rates["stated"] == rates["correct"] == 0 and rates["coverage"] == 0.0
            assert math.isnan(rates["precision"])  # precision over no caption: undefined
    assert result["no_false_statement"] == {"percent": 100.0, "count": N, "n": N}
    assert result["hallucination_rate"]["percent"] == 0.0 and result["hallucinated_objects_per_image"] == 0.0
    assert set(map(tuple, attribute_errors(predictions, demo["gt"], demo["language"]).values())) == {()}


def hand_built_truth():
    """One image of two objects: a big red circle top left, a small blue square in the centre."""
    objects = [
        {"colour": "red", "shape": "circle", "size": "big", "position": "top-left"},
        {"colour": "blue", "shape": "square", "size": "small", "position": "centre"},
    ]
    return pd.DataFrame({"image_path": ["/demo/images/000000.jpg"], "objects": [objects]})


@pytest.mark.parametrize(
    "caption, judged, errors",
    [
        ("a red circle", {"colour": True, "shape": True}, []),  # one of two objects: true, incomplete
        ("a big red circle and a small blue square", {"colour": True, "shape": True, "size": True}, []),
        # "small" is a size the image holds, but not the red circle's
        ("a small red circle", {"colour": True, "shape": True, "size": False}, ["size"]),
        # an absent object: its colour and shape are false and it is a hallucination; its size is some
        # object's size, so not a size error
        (
            "a big green star",
            {"colour": False, "shape": False, "size": True},
            ["colour", "shape", "hallucination"],
        ),
        # right words, wrong pairing: only the hallucination is false
        ("a red square", {"colour": True, "shape": True}, ["hallucination"]),
        ("a red circle in the top left corner", {"colour": True, "shape": True, "position": True}, []),
        ("a red circle at the top", {"colour": True, "shape": True, "position": False}, ["position"]),
        (
            "there are two shapes: a red circle and a blue square",
            {"colour": True, "shape": True, "count": True},
            [],
        ),
        ("there are three shapes", {"count": False}, ["count"]),
        ("something", {}, []),
    ],
)
def test_hand_built_captions_are_judged_as_defined(caption, judged, errors):
    truth = hand_built_truth()
    result = attribute_scores({"000000": caption}, truth, "en")
    for a in ATTRIBUTES:
        rates = result["per_attribute"][a]
        assert rates["stated"] == (a in judged), a
        assert rates["correct"] == (judged.get(a) is True), a
    assert result["hallucination_rate"]["count"] == ("hallucination" in errors)
    assert result["no_false_statement"]["count"] == (not errors)
    assert attribute_errors({"000000": caption}, truth, "en") == {"000000": errors}


def test_paths_and_stems_are_the_same_keys_and_only_predicted_images_count(demo):
    by_stem = render(demo, "where_has")
    by_path = {
        str(demo["gt"]["image_path"][i]): by_stem[Path(demo["gt"]["image_path"][i]).stem] for i in range(N)
    }
    relative = {f"images/{stem}.jpg": text for stem, text in by_stem.items()}
    results = [attribute_scores(p, demo["gt"], demo["language"]) for p in (by_stem, by_path, relative)]
    assert results[0] == results[1] == results[2]
    subset = dict(list(by_path.items())[:10])
    result = attribute_scores(subset, demo["gt"], demo["language"])
    assert result["n_images"] == 10
    assert result["per_attribute"]["position"] == {
        "precision": 100.0,
        "coverage": 100.0,
        "correct": 10,
        "stated": 10,
        "n": 10,
    }


def test_an_image_missing_from_the_ground_truth_is_a_data_error(demo):
    predictions = {**render(demo, "list"), "/elsewhere/images/999999.jpg": "红色圆形"}
    with pytest.raises(DataError, match="999999"):
        attribute_scores(predictions, demo["gt"], demo["language"])
    first = demo["gt"]["image_path"][0]
    with pytest.raises(DataError, match="same image"):
        attribute_scores({first: "x", Path(first).stem: "y"}, demo["gt"], demo["language"])
    with pytest.raises(DataError, match="not a string"):
        attribute_scores({first: None}, demo["gt"], demo["language"])
    with pytest.raises(ValueError, match="language"):
        attribute_scores({first: "x"}, demo["gt"], "fr")


def test_no_single_object_image_gives_nan_rates(demo):
    gt = demo["gt"]
    predictions = {p: "" for p, k in zip(gt["image_path"], gt["n_objects"]) if k > 1}
    result = attribute_scores(predictions, gt, demo["language"])
    assert result["n_single_object"] == 0
    assert all(math.isnan(result["single_object"][a]["coverage"]) for a in ATTRIBUTES)
    assert math.isnan(result["single_object_no_false_statement"]["percent"])


def test_the_attribute_table_puts_the_true_captions_beside_the_models(demo):
    language, gt = demo["language"], demo["gt"]
    model = attribute_scores(render(demo, "list"), gt, language)
    references = attribute_scores(first_references(demo), gt, language)
    table = attribute_table({"model": model}, references)
    assert table.index.tolist() == [
        ("model", "all images"),
        ("model", "single-object"),
        ("true captions", "all images"),
        ("true captions", "single-object"),
        ("uniform guess", "single-object"),
    ]
    assert table.columns.tolist() == [
        ("", "images"),
        *[(a, m) for a in ATTRIBUTES for m in ("precision", "coverage")],
        ("", "no false statement"),
        ("", "hallucination"),
    ]
    assert table[("", "images")].tolist()[:4] == [N, demo["n_single"], N, demo["n_single"]]
    truth = table.loc[("true captions", "all images")]
    assert all(truth[(a, "precision")] == 100.0 for a in ATTRIBUTES)
    assert truth[("", "no false statement")] == 100.0 and truth[("", "hallucination")] == 0.0
    assert table.loc[("model", "all images"), ("position", "coverage")] == 0.0  # "list" names no position
    assert math.isnan(table.loc[("model", "all images"), ("position", "precision")])
    chance = table.loc[("uniform guess", "single-object")]
    assert chance[("colour", "precision")] == pytest.approx(100 / 8)
    assert chance[("shape", "precision")] == pytest.approx(100 / 5)
    assert chance[("size", "precision")] == pytest.approx(50.0)
    assert chance[("position", "precision")] == pytest.approx(100 / 9)
    assert math.isnan(chance[("count", "precision")]) and math.isnan(chance[("", "hallucination")])

    html = formatted_attribute_table({"model": model}, references).to_html()
    assert ">true captions<" in html and ">uniform guess<" in html and ">no false statement<" in html
    assert ">100.0 %<" in html and ">12.5 %<" in html and f">{N}<" in html
    without = attribute_table({"a": model, "b": model})
    assert [name for name, _ in without.index] == ["a", "a", "b", "b", "uniform guess"]
