"""The synthetic demo set: deterministic, truthful captions, learnable pixels, atomic and idempotent writes."""

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocoevalcap.bleu.bleu import Bleu

from nbutils.demo import scenes
from nbutils.demo.scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    attribute_prompts,
    caption_attributes,
    describe_objects,
    generate_demo_dataset,
    load_ground_truth,
)
from nbutils.errors import DataError


@pytest.fixture(scope="module")
def zh_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("zh") / "demo"
    return out, generate_demo_dataset(out, n_images=300, image_size=32, language="zh", seed=3, progress=False)


@pytest.fixture(scope="module")
def en_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("en") / "demo"
    return out, generate_demo_dataset(out, n_images=300, image_size=32, language="en", seed=3, progress=False)


def files_bytes(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def captions_by_image(df: pd.DataFrame) -> pd.Series:
    return df.groupby("image_path", sort=True)["text"].apply(list)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    kw = dict(n_images=40, image_size=32, captions_per_image=4, progress=False)
    generate_demo_dataset(tmp_path / "a", seed=7, **kw)
    generate_demo_dataset(tmp_path / "b", seed=7, **kw)
    generate_demo_dataset(tmp_path / "c", seed=8, **kw)
    a, b, c = (files_bytes(tmp_path / n) for n in "abc")
    assert len(a) == 40 + 3 and a == b
    assert a["captions.csv"] != c["captions.csv"]
    assert all(a[k] != c[k] for k in a if k.startswith("images/"))


def test_scenes_do_not_depend_on_language_and_captions_do_not_depend_on_size(tmp_path):
    generate_demo_dataset(tmp_path / "zh32", n_images=20, image_size=32, language="zh", progress=False)
    generate_demo_dataset(tmp_path / "en32", n_images=20, image_size=32, language="en", progress=False)
    generate_demo_dataset(tmp_path / "zh48", n_images=20, image_size=48, language="zh", progress=False)
    zh32, en32, zh48 = (files_bytes(tmp_path / n) for n in ("zh32", "en32", "zh48"))
    # Same pictures in both languages, so zh and en results are comparable image for image.
    assert all(zh32[k] == en32[k] for k in zh32 if k.startswith("images/"))
    assert zh32["objects.jsonl"] == en32["objects.jsonl"] and zh32["captions.csv"] != en32["captions.csv"]
    assert zh32["captions.csv"] == zh48["captions.csv"]


def test_parallel_and_serial_paths_write_the_same_files(tmp_path, monkeypatch):
    kw = dict(n_images=30, image_size=16, seed=2, captions_per_image=4, progress=False)
    monkeypatch.setattr(scenes, "CHUNK", 7)
    generate_demo_dataset(tmp_path / "serial", **kw)
    monkeypatch.setattr(scenes, "PARALLEL_MIN_IMAGES", 1)  # force the process pool
    generate_demo_dataset(tmp_path / "pool", **kw)
    assert files_bytes(tmp_path / "serial") == files_bytes(tmp_path / "pool")


# ----------------------------------------------------------------------------- files and counts


def test_files_counts_and_tables_are_consistent(zh_set):
    out, df = zh_set
    assert list(df.columns) == ["image_path", "text"] and len(df) == 300 * 5
    images = sorted((out / "images").glob("*.jpg"))
    assert [p.name for p in images] == [f"{i:06d}.jpg" for i in range(300)]
    for p in images:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
            im.load()

    per_image = captions_by_image(df)
    assert len(per_image) == 300 and all(len(c) == len(set(c)) == 5 for c in per_image)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in per_image.index)

    csv = pd.read_csv(out / "captions.csv", encoding="utf-8", dtype=str, keep_default_na=False)
    assert list(csv.columns) == ["text", "image_path"]
    assert (csv["text"] == df["text"]).all()
    assert ((out / csv["image_path"]).map(str) == df["image_path"]).all()

    records = [json.loads(line) for line in (out / "objects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["image_path"] for r in records] == [f"images/{i:06d}.jpg" for i in range(300)]
    for r in records:
        assert 1 <= len(r["objects"]) <= 3 and len(r["background"]) == 3
        cells = [(o["row"], o["col"]) for o in r["objects"]]
        assert len(set(cells)) == len(cells)  # one object per grid cell: no overlap
        for o in r["objects"]:
            assert o["shape"] in SHAPES and o["colour"] in COLOURS and o["size"] in SIZES
            assert POSITIONS[o["position"]]["row"] == o["row"] and POSITIONS[o["position"]]["col"] == o["col"]
    assert {len(r["objects"]) for r in records} == {1, 2, 3}

    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["format_version"] == scenes.FORMAT_VERSION and meta["n_captions"] == 1500
    assert meta["params"] == {
        "n_images": 300,
        "image_size": 32,
        "language": "zh",
        "seed": 3,
        "captions_per_image": 5,
    }

    gt = load_ground_truth(out)
    assert list(gt["image_path"]) == list(per_image.index)
    assert list(gt["n_objects"]) == [len(r["objects"]) for r in records]
    for row in gt.itertuples():
        main = next((o for o in row.objects if o["size"] == "big"), row.objects[0])
        assert (row.colour, row.shape, row.size, row.position) == (
            main["colour"],
            main["shape"],
            main["size"],
            main["position"],
        )


def test_load_ground_truth_reports_missing_and_broken_files(tmp_path):
    with pytest.raises(DataError, match="objects.jsonl"):
        load_ground_truth(tmp_path)
    (tmp_path / "objects.jsonl").write_text(
        '{"image_path": "images/000000.jpg", "objects": []}\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match="line 1"):
        load_ground_truth(tmp_path)


# ----------------------------------------------------------------------------- truthful captions

# Written out here, independently of the module, so a vocabulary slip in the module cannot hide itself.
COUNT_WORDS = {
    "zh": {1: "一个物体|一个图形", 2: "两个物体|两个图形", 3: "三个物体|三个图形"},
    "en": {1: "one object|one shape", 2: "two objects|two shapes", 3: "three objects|three shapes"},
}


def test_vocabulary_is_natural_chinese_and_english():
    assert [
        COLOURS[c]["zh"] for c in ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
    ] == ["红色", "绿色", "蓝色", "黄色", "紫色", "橙色", "白色", "黑色"]
    assert [SHAPES[s]["zh"] for s in ("circle", "square", "triangle", "star", "cross")] == [
        "圆形",
        "正方形",
        "三角形",
        "星形",
        "十字形",
    ]
    assert POSITIONS["top-left"]["zh"] == "左上角" and POSITIONS["right"]["en_phrase"] == "on the right"
    assert all(v["en"] == k for table in (COLOURS, SHAPES, SIZES) for k, v in table.items())


def check_truthful(df, gt, language):
    by_path = gt.set_index("image_path")
    named_all = seen_counts = 0
    seen = {"count": set(), "positions": set(), "background": set(), "sizes": set()}
    for path, text in zip(df["image_path"], df["text"]):
        objects, style = by_path.at[path, "objects"], by_path.at[path, "background_style"]
        said = caption_attributes(text, language)
        truth = {(o["colour"], o["shape"]) for o in objects}
        assert said["objects"], f"names no object: {text}"
        for o in said["objects"]:
            matches = [g for g in objects if (g["colour"], g["shape"]) == (o["colour"], o["shape"])]
            assert matches, f"{text}: no {o['colour']} {o['shape']} in {truth}"
            assert o["size"] in (None, matches[0]["size"]), f"{text}: wrong size"
        assert said["colours"] <= {o["colour"] for o in objects}, text
        assert said["shapes"] <= {o["shape"] for o in objects}, text
        assert said["positions"] <= {o["position"] for o in objects}, text
        assert said["count"] in (None, len(objects)), text
        for n, words in COUNT_WORDS[language].items():
            if n != len(objects):
                assert not re.search(words, text), f"{text}: says {n} objects, has {len(objects)}"
        assert said["background"] in (None, style), text
        named_all += {(o["colour"], o["shape"]) for o in said["objects"]} == truth
        seen["count"].add(said["count"])
        seen["positions"] |= said["positions"]
        seen["background"].add(said["background"])
        seen["sizes"] |= said["sizes"]
        seen_counts += said["count"] is not None
    # The checks above were exercised, not skipped: every kind of claim occurs.
    assert seen["count"] == {None, 1, 2, 3} and seen["positions"] == set(POSITIONS)
    assert seen["background"] == {None, "plain", "gradient"} and seen["sizes"] == set(SIZES)
    assert named_all / len(df) >= 0.8  # most captions name every object


def test_chinese_captions_are_true(zh_set):
    out, df = zh_set
    check_truthful(df, load_ground_truth(out), "zh")
    assert not df["text"].str.contains(r"\s").any()  # natural Chinese: no spaces
    assert df["text"].str.contains("红色").any() and df["text"].str.contains("十字形").any()


def test_english_captions_are_true(en_set):
    out, df = en_set
    check_truthful(df, load_ground_truth(out), "en")
    assert df["text"].str.fullmatch(r"[a-z ,:]+").all()
    assert not df["text"].str.contains(r"\ba [aeiou]").any()  # "an orange", never "a orange"


@pytest.mark.parametrize("language", ["zh", "en"])
def test_single_object_captions_name_its_position_only(language):
    rng = np.random.default_rng(0)
    for name, pos in POSITIONS.items():
        obj = {
            "shape": "star",
            "colour": "orange",
            "size": "small",
            "row": pos["row"],
            "col": pos["col"],
            "position": name,
        }
        captions = describe_objects([obj], language, rng, background_style="gradient")
        assert len(captions) == len(set(captions)) == scenes.MAX_CAPTIONS_PER_IMAGE
        said = [caption_attributes(c, language) for c in captions]
        assert all(s["positions"] in (set(), {name}) for s in said)
        assert sum(s["positions"] == {name} for s in said) >= 3
        assert all(
            s["objects"] == [{"colour": "orange", "shape": "star", "size": s["objects"][0]["size"]}]
            for s in said
        )


def test_describe_objects_is_a_pure_function_of_its_rng():
    objs = [
        {"shape": "circle", "colour": "red", "size": "big", "row": 0, "col": 0, "position": "top-left"},
        {"shape": "cross", "colour": "blue", "size": "small", "row": 2, "col": 1, "position": "bottom"},
    ]
    first = describe_objects(objs, "zh", np.random.default_rng(5), n_captions=4)
    assert first == describe_objects(objs, "zh", np.random.default_rng(5), n_captions=4)
    assert len(set(first)) == 4
    # Without a background style the background template is not available.
    assert len(describe_objects(objs, "en", np.random.default_rng(5))) == scenes.MAX_CAPTIONS_PER_IMAGE - 1
    with pytest.raises(ValueError, match="objects"):
        describe_objects([], "zh", np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_captions"):
        describe_objects(objs, "zh", np.random.default_rng(0), n_captions=9)


def test_caption_attributes_parses_free_text():
    said = caption_attributes("一 个 大 的 红 色 圆 形 在 左 上 角 ， 还 有 一 个 蓝 色 的 物 体", "zh")
    assert said["objects"] == [{"colour": "red", "shape": "circle", "size": "big"}]
    assert said["colours"] == {"red", "blue"} and said["positions"] == {"top-left"} and said["count"] is None
    said = caption_attributes("There are TWO shapes: a little green star and a white cross", "en")
    assert said["count"] == 2 and said["sizes"] == {"small"} and said["shapes"] == {"star", "cross"}
    assert caption_attributes("a cat on a sofa", "en")["objects"] == []


@pytest.mark.parametrize("language", ["zh", "en"])
def test_attribute_prompts_are_ensembles_that_state_their_class(language):
    others = {
        "colour": 5 * 3,
        "shape": 8 * 3,
        "size": 8 * 5,
        "position": 8 * 5 * 3,
    }  # sizes: big, small, none
    for attribute, key in [
        ("colour", "colours"),
        ("shape", "shapes"),
        ("size", "sizes"),
        ("position", "positions"),
    ]:
        names, ensembles = attribute_prompts(attribute, language)
        assert len(names) == len(ensembles)
        for name, ensemble in zip(names, ensembles):
            assert len(ensemble) == len(set(ensemble)) == others[attribute]
            # every prompt parses back to its class, with the demo's own caption parser
            assert all(caption_attributes(p, language)[key] == {name} for p in ensemble)
    names, ensembles = attribute_prompts("color", language)
    assert names[0] == "red" and ensembles[0][0] == (
        "一个大的红色圆形" if language == "zh" else "a big red circle"
    )
    assert ("一个红色的圆形" if language == "zh" else "a red circle") in ensembles[
        0
    ]  # without a size word too
    with pytest.raises(ValueError, match="attribute"):
        attribute_prompts("texture", language)


# ----------------------------------------------------------------------------- learnable pixels


def test_colour_and_size_can_be_read_from_the_pixels(zh_set):
    out, _ = zh_set
    gt = load_ground_truth(out)
    palette = np.array([c["rgb"] for c in COLOURS.values()], dtype=float)
    right, sizes = [], {}
    for row in gt.itertuples():
        px = np.asarray(Image.open(row.image_path).convert("RGB"), dtype=float)
        s = px.shape[0]
        yy, xx = np.mgrid[:s, :s] + 0.5
        for o in row.objects:
            (cx, cy), r = o["centre_xy"], o["radius_px"]
            centre = (xx - cx) ** 2 + (yy - cy) ** 2 <= max(0.3 * r, 1.0) ** 2
            nearest = list(COLOURS)[np.argmin(((palette - px[centre].mean(0)) ** 2).sum(1))]
            right.append(nearest == o["colour"])
            cell = px[
                o["row"] * s // 3 : (o["row"] + 1) * s // 3, o["col"] * s // 3 : (o["col"] + 1) * s // 3
            ]
            covered = (np.linalg.norm(cell - COLOURS[o["colour"]]["rgb"], axis=-1) < 60).mean()
            sizes.setdefault(o["shape"], []).append((covered, o["size"] == "big"))
    assert len(right) > 500 and np.mean(right) >= 0.95
    # Size: per shape, one threshold on the object's pixel area separates big from small.
    for shape, pairs in sizes.items():
        area, big = np.array(pairs).T
        threshold = (area[big == 1].mean() + area[big == 0].mean()) / 2
        assert ((area > threshold) == big).mean() >= 0.95, shape


# ----------------------------------------------------------------------------- informative captions


def bleu4(refs: dict, hyps: dict) -> float:
    with contextlib.redirect_stdout(io.StringIO()):  # the scorer prints its internals
        score, _ = Bleu(4).compute_score(refs, {k: [h] for k, h in hyps.items()})
    return score[3]


@pytest.mark.parametrize("which", ["zh", "en"])
def test_captions_need_the_image(which, zh_set, en_set):
    _, df = zh_set if which == "zh" else en_set
    tok = (lambda t: " ".join(t)) if which == "zh" else (lambda t: t)  # character-tokenised Chinese
    per_image = list(captions_by_image(df))
    ids = range(len(per_image))
    refs = {i: [tok(t) for t in per_image[i][1:]] for i in ids}  # caption 0 is held out
    oracle = bleu4(refs, {i: tok(per_image[i][0]) for i in ids})
    frequent = df["text"].value_counts().index[:20]
    constants = [bleu4(refs, {i: tok(text) for i in ids}) for text in frequent]
    shift = np.random.default_rng(0).integers(1, len(per_image), len(per_image))
    other = bleu4(refs, {i: tok(per_image[(i + shift[i]) % len(per_image)][0]) for i in ids})
    print(
        f"\n{which}: BLEU-4 same-image held-out {oracle:.3f}, other image {other:.3f}, "
        f"most frequent caption {constants[0]:.3f} ({frequent[0]!r}), "
        f"best of the 20 most frequent {max(constants):.3f} ({frequent[int(np.argmax(constants))]!r})"
    )
    assert oracle >= 2 * constants[0]
    # Even the constant chosen with hindsight from the frequent captions stays well below.
    assert oracle >= 1.5 * max(constants)
    assert other <= 0.7 * oracle


# ----------------------------------------------------------------------------- idempotent, atomic, validated


def test_rerun_with_same_parameters_rewrites_nothing(tmp_path):
    out = tmp_path / "demo"
    first = generate_demo_dataset(out, n_images=12, image_size=16, captions_per_image=4, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = generate_demo_dataset(out, n_images=12, image_size=16, captions_per_image=4, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    # Other parameters replace the set.
    bigger = generate_demo_dataset(out, n_images=15, image_size=16, captions_per_image=4, progress=False)
    assert len(bigger) == 60 and len(list((out / "images").iterdir())) == 15
    assert json.loads((out / "meta.json").read_text())["params"]["n_images"] == 15


def test_meta_json_names_the_generator_module_and_sets_with_the_other_id_are_reused(tmp_path):
    assert scenes.GENERATOR == "nbutils.demo.scenes" == scenes.__name__
    assert scenes.GENERATOR_IDS == ("nbutils.demo.scenes", "nbutils.demo_data")
    out = tmp_path / "demo"
    first = generate_demo_dataset(out, n_images=6, image_size=16, captions_per_image=4, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generator"] == "nbutils.demo.scenes"
    # A set already on disk under the id "nbutils.demo_data": recognised, so reused as it is.
    (out / "meta.json").write_text(json.dumps({**meta, "generator": "nbutils.demo_data"}))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = generate_demo_dataset(out, n_images=6, image_size=16, captions_per_image=4, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    # ... and replaced like any demo set when other parameters are asked for.
    generate_demo_dataset(out, n_images=7, image_size=16, captions_per_image=4, progress=False)
    assert json.loads((out / "meta.json").read_text())["generator"] == "nbutils.demo.scenes"
    # Any other id is not a demo set: refused.
    (out / "meta.json").write_text(json.dumps({**meta, "generator": "someone.else"}))
    with pytest.raises(DataError, match="is not a demo data set"):
        generate_demo_dataset(out, n_images=6, image_size=16, captions_per_image=4, progress=False)


def test_failure_leaves_nothing_behind_and_keeps_the_old_set(tmp_path, monkeypatch):
    real = scenes._make_image

    def flaky(index, *args):
        if index == 7:
            raise RuntimeError("disk on fire")
        return real(index, *args)

    monkeypatch.setattr(scenes, "_make_image", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_demo_dataset(tmp_path / "demo", n_images=10, image_size=16, progress=False)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(scenes, "_make_image", real)
    generate_demo_dataset(tmp_path / "demo", n_images=5, image_size=16, progress=False)
    before = files_bytes(tmp_path / "demo")
    monkeypatch.setattr(scenes, "_make_image", flaky)
    with pytest.raises(RuntimeError):
        generate_demo_dataset(tmp_path / "demo", n_images=10, image_size=16, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["demo"] and files_bytes(tmp_path / "demo") == before


def test_refuses_to_replace_a_folder_that_is_not_a_demo_set(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a demo data set"):
        generate_demo_dataset(tmp_path, n_images=2, image_size=16, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_images": 0}, "n_images"),
        ({"n_images": 2.5}, "n_images"),
        ({"language": "fr"}, "language"),
        ({"captions_per_image": 3}, "captions_per_image"),
        ({"captions_per_image": scenes.MAX_CAPTIONS_PER_IMAGE + 1}, "captions_per_image"),
        ({"image_size": 15}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_parameters_are_named(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_demo_dataset(tmp_path / "demo", **{"n_images": 3, "progress": False, **kwargs})
    assert not (tmp_path / "demo").exists()
