"""attribute_accuracy on the demo set's own (true) captions, and on perturbations with known answers."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbutils.demo import scenes
from nbutils.errors import DataError
from nbutils.evaluation.attributes import ATTRIBUTES, attribute_accuracy, attribute_table

TEMPLATE_NAMES = ("list", "count", "where_has", "at", "background", "picture", "sizes", "focus", "located")


@pytest.fixture(scope="module", params=["zh", "en"])
def demo(request, tmp_path_factory):
    language = request.param
    folder = tmp_path_factory.mktemp(f"demo-{language}")
    captions = scenes.generate_demo_dataset(
        folder, n_images=40, image_size=32, language=language, seed=0, progress=False
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


def correct(result, key="per_attribute"):
    return {a: result[key][a]["correct"] for a in ATTRIBUTES}


def test_the_template_names_are_the_templates():
    for language in scenes.LANGUAGES:
        assert [t.__name__ for t in scenes.TEMPLATES[language]] == [
            f"_{language}_{n}" for n in TEMPLATE_NAMES
        ]


def test_the_demo_set_has_single_and_multi_object_images(demo):
    assert len(demo["gt"]) == 40
    assert demo["n_single"] == 9  # seed 0: the same scenes in both languages


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_each_template_is_scored_by_what_it_states(demo, name):
    n, n_single = 40, demo["n_single"]
    result = attribute_accuracy(render(demo, name), demo["gt"], demo["language"])
    assert result["n_images"] == n and result["n_single_object"] == n_single
    assert result["language"] == demo["language"]
    got = correct(result)
    # "focus" describes one random object: its colour set is complete only where all objects share it.
    for a in ("colour", "shape"):
        uniform = sum(len({o[a] for o in objects}) == 1 for objects in demo["gt"]["objects"])
        assert got[a] == (uniform if name == "focus" else n)
    complete = got["colour"]
    assert got["position"] == {"where_has": n, "at": n, "located": n, "focus": n_single}.get(name, 0)
    assert got["count"] == (n if name == "count" else 0)  # only the count template states the count
    if name == "sizes":  # the only template that always states every size
        assert got["size"] == n
    assert all(result["per_attribute"][a]["n"] == n for a in ATTRIBUTES)
    assert result["per_attribute"]["colour"]["accuracy"] == pytest.approx(100.0 * complete / n)
    # No template states count and position together; every true caption names only objects it holds.
    assert result["all_correct"] == {"accuracy": 0.0, "correct": 0, "n": n}
    assert result["hallucination_rate"] == 0.0 and result["n_hallucinated"] == 0
    assert result["hallucinated_objects_per_image"] == 0.0
    single = correct(result, "single_object")
    assert single["colour"] == single["shape"] == n_single
    assert single["position"] == (n_single if name in ("where_has", "at", "located", "focus") else 0)
    assert single["count"] == (n_single if name == "count" else 0)


def test_a_caption_stating_everything_is_all_correct(demo):
    result = attribute_accuracy(full_captions(demo), demo["gt"], demo["language"])
    assert correct(result) == dict.fromkeys(ATTRIBUTES, 40)
    assert correct(result, "single_object") == dict.fromkeys(ATTRIBUTES, demo["n_single"])
    assert result["all_correct"] == {"accuracy": 100.0, "correct": 40, "n": 40}
    assert result["single_object_all_correct"]["correct"] == demo["n_single"]
    assert result["hallucination_rate"] == 0.0


def test_every_caption_of_the_generated_set_is_true(demo):
    captions = demo["captions"].assign(k=lambda d: d.groupby("image_path").cumcount())
    assert captions.groupby("image_path").size().eq(5).all() and captions["image_path"].nunique() == 40
    for _, batch in captions.groupby("k"):
        result = attribute_accuracy(
            dict(zip(batch["image_path"], batch["text"])), demo["gt"], demo["language"]
        )
        assert result["n_images"] == 40
        assert result["hallucination_rate"] == 0.0
        single = correct(result, "single_object")
        assert single["colour"] == single["shape"] == demo["n_single"]


def swap_colour(text, old, new, language):
    if language == "zh":
        return text.replace(scenes.COLOURS[old]["zh"], scenes.COLOURS[new]["zh"])
    return re.sub(rf"\b{old}\b", new, text)


def test_a_wrong_colour_on_single_object_images_costs_exactly_those_images(demo):
    language, gt, n_single = demo["language"], demo["gt"], demo["n_single"]
    colours = list(scenes.COLOURS)
    predictions = full_captions(demo)
    for row in gt[gt["n_objects"] == 1].itertuples():
        old = row.objects[0]["colour"]
        new = colours[(colours.index(old) + 1) % len(colours)]
        stem = Path(row.image_path).stem
        predictions[stem] = swap_colour(predictions[stem], old, new, language)
        assert scenes.COLOURS[old][language] not in predictions[stem]
    result = attribute_accuracy(predictions, gt, language)
    assert correct(result) == {**dict.fromkeys(ATTRIBUTES, 40), "colour": 40 - n_single}
    assert result["single_object"]["colour"] == {"accuracy": 0.0, "correct": 0, "n": n_single}
    assert result["single_object"]["shape"]["correct"] == n_single
    assert result["all_correct"]["correct"] == 40 - n_single
    assert result["n_hallucinated"] == n_single
    assert result["hallucination_rate"] == pytest.approx(100.0 * n_single / 40)
    assert result["hallucinated_objects_per_image"] == pytest.approx(n_single / 40)


def test_an_extra_object_with_swapped_attributes_is_a_hallucination(demo):
    """Colour of one object with the shape of another: every set is still right; only the pairing is not."""
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
    result = attribute_accuracy(predictions, gt, language)
    assert correct(result) == dict.fromkeys(ATTRIBUTES, 40)
    assert result["all_correct"]["correct"] == 40
    assert result["n_hallucinated"] == changed
    assert result["hallucination_rate"] == pytest.approx(100.0 * changed / 40)
    assert result["hallucinated_objects_per_image"] == pytest.approx(changed / 40)


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
    result = attribute_accuracy({stem: caption + " " + caption}, gt, language)  # repeated: still two
    assert result["n_hallucinated"] == 1 and result["hallucination_rate"] == 100.0
    assert result["hallucinated_objects_per_image"] == 2.0


def test_an_empty_caption_gets_everything_wrong_and_hallucinates_nothing(demo):
    predictions = dict.fromkeys(render(demo, "list"), "")
    result = attribute_accuracy(predictions, demo["gt"], demo["language"])
    assert correct(result) == dict.fromkeys(ATTRIBUTES, 0)
    assert all(result["per_attribute"][a] == {"accuracy": 0.0, "correct": 0, "n": 40} for a in ATTRIBUTES)
    assert correct(result, "single_object") == dict.fromkeys(ATTRIBUTES, 0)
    assert result["all_correct"]["correct"] == 0
    assert result["hallucination_rate"] == 0.0 and result["hallucinated_objects_per_image"] == 0.0


def test_paths_and_stems_are_the_same_keys_and_only_predicted_images_count(demo):
    by_stem = render(demo, "where_has")
    by_path = {
        str(demo["gt"]["image_path"][i]): by_stem[Path(demo["gt"]["image_path"][i]).stem] for i in range(40)
    }
    relative = {f"images/{stem}.jpg": text for stem, text in by_stem.items()}
    results = [attribute_accuracy(p, demo["gt"], demo["language"]) for p in (by_stem, by_path, relative)]
    assert results[0] == results[1] == results[2]
    subset = dict(list(by_path.items())[:10])
    result = attribute_accuracy(subset, demo["gt"], demo["language"])
    assert result["n_images"] == 10 and result["per_attribute"]["position"] == {
        "accuracy": 100.0,
        "correct": 10,
        "n": 10,
    }


def test_an_image_missing_from_the_ground_truth_is_a_data_error(demo):
    predictions = {**render(demo, "list"), "/elsewhere/images/999999.jpg": "红色圆形"}
    with pytest.raises(DataError, match="999999"):
        attribute_accuracy(predictions, demo["gt"], demo["language"])
    first = demo["gt"]["image_path"][0]
    with pytest.raises(DataError, match="same image"):
        attribute_accuracy({first: "x", Path(first).stem: "y"}, demo["gt"], demo["language"])
    with pytest.raises(DataError, match="not a string"):
        attribute_accuracy({first: None}, demo["gt"], demo["language"])
    with pytest.raises(ValueError, match="language"):
        attribute_accuracy({first: "x"}, demo["gt"], "fr")


def test_no_single_object_image_gives_nan_rates(demo):
    gt = demo["gt"]
    predictions = {p: "" for p, k in zip(gt["image_path"], gt["n_objects"]) if k > 1}
    result = attribute_accuracy(predictions, gt, demo["language"])
    assert result["n_single_object"] == 0
    assert all(math.isnan(result["single_object"][a]["accuracy"]) for a in ATTRIBUTES)


def test_attribute_table(demo):
    result = attribute_accuracy(full_captions(demo), demo["gt"], demo["language"])
    table = attribute_table(result)
    assert list(table.columns) == [
        "attribute",
        "n",
        "accuracy",
        "n_single_object",
        "single_object_accuracy",
        "chance_single_object",
    ]
    assert table["attribute"].tolist() == [*ATTRIBUTES, "all"]
    assert table["n"].tolist() == [40] * 6
    assert table["n_single_object"].tolist() == [demo["n_single"]] * 6
    assert table["accuracy"].tolist() == [100.0] * 6
    chance = table.set_index("attribute")["chance_single_object"]
    assert chance["colour"] == pytest.approx(100 / 8) and chance["shape"] == pytest.approx(100 / 5)
    assert chance["size"] == pytest.approx(50.0) and chance["position"] == pytest.approx(100 / 9)
    assert math.isnan(chance["count"]) and math.isnan(chance["all"])
    assert isinstance(table, pd.DataFrame)
