"""The caption browser's logic and its widget wiring, without a kernel."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from nbutils.models.decoding import PRESETS, resolve_decoding
from nbutils.reporting.browser import CaptionBrowser

LENGTHS = {"max_new_tokens", "max_length", "min_new_tokens", "min_length", "num_return_sequences"}


def preset_of(decoding) -> str:
    """The preset whose search `decoding` is (its settings less the lengths): how the fakes name a caption."""
    search = {k: v for k, v in resolve_decoding(decoding).items() if k not in LENGTHS}
    return next(p for p, s in PRESETS.items() if {k: v for k, v in s.items() if k not in LENGTHS} == search)


class FakeCaptioner:
    """Captions an image with its preset and the image's mean value, so a re-caption is visible and checkable;
    records (image shape, decoding, seed) of every call."""

    def __init__(self, name):
        self.name, self.calls = name, []

    def caption(self, images, decoding, seed=None):
        self.calls.append((tuple(images.shape), decoding, seed))
        return [
            [{"caption": f"{self.name}/{preset_of(decoding)}/{int(images[i].float().mean())}"}]
            for i in range(len(images))
        ]


def _browser(**kwargs):
    paths = ["a.jpg", "b.jpg", "c.jpg"]
    per_image = pd.DataFrame(
        {
            "image_path": paths * 2,
            "model": ["m1"] * 3 + ["m2"] * 3,
            "caption": ["a1", "b1", "c1", "a2", "b2", "c2"],
            "cider": [1.0, 0.2, 0.5, 0.9, 0.8, 0.1],
            "clipscore": [0.7, 0.6, 0.9, 0.8, 0.4, 0.95],
            "attribute_errors": ["", "shape", "", "", "", "colour, size"],
        }
    )
    pixels = {p: np.full((4, 4, 3), 10 * (i + 1), dtype=np.uint8) for i, p in enumerate(paths)}
    references = {"a.jpg": ["ref a"], "b.jpg": ["ref b"], "c.jpg": ["ref c"]}
    captioners = {"m1": FakeCaptioner("m1"), "m2": FakeCaptioner("m2")}
    return CaptionBrowser(per_image, pixels, references, captioners, **{"decoding": "beam", **kwargs})


def _captions(shown) -> list[str]:
    return [row["caption"] for row in shown["rows"]]


def test_stepping_stays_inside_the_order():
    b = _browser()
    assert b.current()["image_path"] == "a.jpg" and b.current()["count"] == 3
    b.previous()
    assert b.position == 0
    b.next(), b.next(), b.next()
    assert b.current_path() == "c.jpg"
    b.go(1)
    shown = b.current()
    assert shown["image_path"] == "b.jpg" and shown["references"] == ["ref b"]
    assert shown["position"] == 1 and shown["number"] == 2
    assert _captions(shown) == ["b1", "b2"]


def test_sorting_puts_the_worst_first_and_shows_the_first_of_the_new_order():
    b = _browser()
    b.go(2)  # c.jpg
    b.set_view(sort="cider")  # worst cider over the models: b 0.2, c 0.1, a 0.9 -> c, b, a
    assert b.order == ["c.jpg", "b.jpg", "a.jpg"] and b.position == 0 and b.current_path() == "c.jpg"
    b.go(2)  # a.jpg, which the next order holds too: it is not kept
    b.set_view(sort="clipscore")  # b 0.4, a 0.7, c 0.9
    assert b.order == ["b.jpg", "a.jpg", "c.jpg"] and b.current_path() == "b.jpg"
    assert "<b>1 / 3</b> b.jpg" in b.caption_html()
    b.go(1)
    b.set_view(sort="order")
    assert b.order == ["a.jpg", "b.jpg", "c.jpg"] and b.current_path() == "a.jpg"
    with pytest.raises(ValueError, match="sort must be one of"):
        b.set_view(sort="bleu")


def test_filtering_to_attribute_errors_shows_the_first_match():
    b = _browser()
    b.go(2)  # c.jpg, which has an error: still the first match, b.jpg, is shown
    b.set_view(errors_only=True)
    assert b.order == ["b.jpg", "c.jpg"] and b.current_path() == "b.jpg"
    b.next()
    b.set_view(errors_only=False)
    assert b.order == ["a.jpg", "b.jpg", "c.jpg"] and b.current_path() == "a.jpg"
    plain = CaptionBrowser(pd.DataFrame({"image_path": ["a"], "model": ["m"], "caption": ["x"]}), {"a": None})
    with pytest.raises(ValueError, match="no attribute_errors"):
        plain.set_view(errors_only=True)


def test_rows_name_the_decoding_that_made_their_caption():
    assert [r["preset"] for r in _browser().current()["rows"]] == ["beam", "beam"]
    assert "<b>✎ m1</b> [beam]: a1" in _browser().caption_html()
    unknown = _browser(decoding="")
    assert unknown.run_preset == "as run" and unknown.presets() == ["as run", *sorted(PRESETS)]
    assert "[as run]: a1" in unknown.caption_html()
    custom = _browser(decoding='{"preset": "beam", "num_beams": 5}')
    assert custom.preset == "custom" and custom.presets()[0] == "custom"
    assert "[custom]: a1" in custom.caption_html()
    assert _browser().presets() == sorted(PRESETS)


def test_a_chosen_preset_stays_chosen_while_browsing_and_recaptions_lazily():
    b = _browser()
    b.go(1)
    shown = b.recaption("greedy")
    assert _captions(shown) == ["m1/greedy/20", "m2/greedy/20"]
    assert [r["preset"] for r in shown["rows"]] == ["greedy", "greedy"]
    assert [shape for shape, _, _ in b.captioners["m1"].calls] == [(1, 3, 4, 4)]
    b.recaption("greedy")  # cached: no second call
    assert len(b.captioners["m1"].calls) == 1
    b.next()
    assert len(b.captioners["m1"].calls) == 1  # an image is captioned when shown, not before
    assert _captions(b.current()) == ["m1/greedy/30", "m2/greedy/30"]
    assert b.preset == "greedy" and len(b.captioners["m1"].calls) == 2
    b.previous()
    assert _captions(b.current()) == ["m1/greedy/20", "m2/greedy/20"]
    assert len(b.captioners["m1"].calls) == 2  # back to an image already captioned: the cache
    b.set_view(sort="cider")  # c, b, a: the new first image is re-captioned too
    assert _captions(b.current()) == ["m1/greedy/30", "m2/greedy/30"]
    shown = b.recaption("beam")  # the run's own decoding: the run's captions, no captioning
    assert _captions(shown) == ["c1", "c2"] and [r["preset"] for r in shown["rows"]] == ["beam", "beam"]
    assert len(b.captioners["m1"].calls) == 2
    with pytest.raises(ValueError, match="unknown decoding preset 'fastest'"):
        b.recaption("fastest")
    with pytest.raises(ValueError, match="unknown decoding preset 'fastest'"):
        _browser(preset="fastest")


def test_a_preset_chosen_at_the_start_recaptions_the_first_image():
    b = _browser(preset="sample")
    assert _captions(b.current()) == ["m1/sample/10", "m2/sample/10"]


def test_a_model_without_a_captioner_keeps_its_run_caption():
    b = _browser()
    del b.captioners["m2"]
    shown = b.recaption("greedy")
    assert _captions(shown) == ["m1/greedy/10", "a2"]
    assert [r["preset"] for r in shown["rows"]] == ["greedy", "beam"]


def test_a_preset_changes_the_search_not_the_caption_budget():
    notebook = _browser(max_new_tokens=48)
    greedy = notebook.decoding_for("greedy")
    assert greedy == {"num_beams": 1, "do_sample": False, "max_new_tokens": 48, "num_return_sequences": 1}
    # BLIP's whole-sequence max_length gives way to the notebook's limit; its search and min_length stay
    assert notebook.decoding_for("blip_beam") == {
        "num_beams": 3, "do_sample": False, "min_length": 5, "repetition_penalty": 1.0, "max_new_tokens": 48,
        "num_return_sequences": 1,
    }  # fmt: skip
    notebook.recaption("greedy")
    assert notebook.captioners["m1"].calls == [((1, 3, 4, 4), greedy, 0)]
    # max_new_tokens 0: each preset's own limit, as in infer
    own = _browser(max_new_tokens=0, seed=3)
    assert own.decoding_for("greedy") == "greedy" and own.decoding_for("beam") == "beam"
    own.recaption("greedy")
    assert own.captioners["m1"].calls == [((1, 3, 4, 4), "greedy", 3)]
    # candidates as the run asked for, where the search can give them (the best is shown)
    three = _browser(num_return_sequences=3)
    assert three.decoding_for("beam") == {**PRESETS["beam"], "num_return_sequences": 3}
    assert three.decoding_for("sample") == {**PRESETS["sample"], "num_return_sequences": 3}
    assert three.decoding_for("greedy") == "greedy"  # one candidate: greedy search has one


def test_a_recaptioned_caption_without_a_scorer_is_marked_not_scored():
    b = _browser()
    b.go(1)
    b.recaption("greedy")
    rows = b.current()["rows"]
    assert rows[0]["cider"] is None and rows[0]["clipscore"] is None and rows[0]["attribute_errors"] is None
    assert rows[0]["not_scored"] == ["cider", "clipscore", "attribute_errors"]
    text = b.caption_html()
    assert "[greedy]: m1/greedy/20 <small>(not scored)</small>" in text
    assert "0.20" not in text and "wrong: shape" not in text  # the run caption's scores are not shown
    b.recaption("beam")
    assert "[beam]: b1 <small>(cider 0.20, clipscore 0.60 · wrong: shape)</small>" in b.caption_html()


def test_the_widget_buttons_slider_and_controls_drive_the_browser():
    b = _browser()
    box = b.widget(thumb_px=32)
    c = box.controls
    first_image, first_text = c["image"].value, c["text"].value
    assert (c["slider"].min, c["slider"].max, c["slider"].value) == (1, 3, 1)
    assert "<b>1 / 3</b> a.jpg" in first_text and "a1" in first_text and first_image
    c["next"].click()
    assert b.current_path() == "b.jpg" and c["slider"].value == 2 and "<b>2 / 3</b> b.jpg" in c["text"].value
    assert "b1" in c["text"].value and c["image"].value != first_image
    c["slider"].value = 3
    assert b.current_path() == "c.jpg" and "<b>3 / 3</b> c.jpg" in c["text"].value and "c2" in c["text"].value
    assert c["preset"].value == "beam" and c["preset"].options == tuple(sorted(PRESETS))
    c["preset"].value = "greedy"
    assert "[greedy]: m1/greedy/30" in c["text"].value
    c["previous"].click()  # the preset stays chosen: b.jpg is re-captioned with it
    assert c["preset"].value == "greedy" and "[greedy]: m1/greedy/20" in c["text"].value
    assert c["slider"].value == 2 and "<b>2 / 3</b>" in c["text"].value
    c["slider"].value = 3
    # The filter leaves 2 images while the slider is at 3: the first of them is shown, and slider and header agree
    c["errors"].value = True
    assert b.order == ["b.jpg", "c.jpg"] and b.current_path() == "b.jpg"
    assert (c["slider"].max, c["slider"].value) == (2, 1) and "<b>1 / 2</b> b.jpg" in c["text"].value
    c["next"].click()
    c["sort"].value = "cider"  # c 0.1, b 0.2: the worst, c.jpg, first
    assert b.order == ["c.jpg", "b.jpg"] and b.current_path() == "c.jpg" and c["slider"].value == 1
    assert "<b>1 / 2</b> c.jpg" in c["text"].value
    c["previous"].click()
    assert c["slider"].value == 1 and b.position == 0


def test_the_widget_shows_when_no_image_matches():
    b = _browser()
    b.per_image["attribute_errors"] = ""
    c = b.widget(thumb_px=32).controls
    c["errors"].value = True
    assert b.order == [] and c["text"].value == "<i>no image matches this filter</i>"
    assert c["slider"].disabled and c["slider"].value == 1


def test_the_browser_displays_as_its_widget_with_a_note_for_static_reports():
    from IPython.core.interactiveshell import InteractiveShell

    from nbutils.reporting.browser import STATIC_NOTE

    data, _ = InteractiveShell.instance().display_formatter.format(_browser())
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"]  # a kernel renders the widget
    # What an exported report shows once the widget view is stripped: the note, not a repr of the widget.
    assert "JupyterLab or Voilà" in data["text/html"] and "static gallery" in data["text/html"]
    assert data["text/plain"] == STATIC_NOTE and "VBox" not in data["text/plain"]


# -- a small infer run, scored by infer's own scoring functions ------------------------------------------------

PROMPT = "一张图片："


class FakeCache:
    """An image cache (index_of, uint8) of constant images: image i is all 10 * (i + 1), `size` px square."""

    def __init__(self, paths, size):
        self.paths, self.size = list(paths), size

    def index_of(self, path_or_paths):
        if isinstance(path_or_paths, str):
            return self.paths.index(path_or_paths)
        return np.array([self.paths.index(p) for p in path_or_paths])

    def uint8(self, rows):
        if np.ndim(rows) == 0:
            return np.full((self.size, self.size, 3), 10 * (int(rows) + 1), dtype=np.uint8)
        return np.stack([self.uint8(row) for row in rows])


class TableCaptioner:
    """Captions image i (known by its value, FakeCache's) with `captions[preset][i]`; records every call."""

    def __init__(self, captions):
        self.captions, self.calls = captions, []

    def caption(self, images, decoding, seed=None):
        self.calls.append((tuple(images.shape), decoding, seed))
        rows = [int(images[i].float().mean()) // 10 - 1 for i in range(len(images))]
        return [[{"caption": self.captions[preset_of(decoding)][row]}] for row in rows]


def _infer_per_image(images, captions: dict, clip) -> pd.DataFrame:
    """per_image as infer builds it (score_references, score_test_captions, attribute_errors, score_captions)."""
    from nbutils.evaluation.attributes import attribute_errors
    from nbutils.evaluation.caption_scores import score_references, score_test_captions
    from nbutils.evaluation.clipscore import score_captions

    compared = score_references(images.paths, images.references, images.train_captions, "zh", "jieba",
                                images.ground_truth)  # fmt: skip
    tables = []
    for model, best in captions.items():
        shown = pd.DataFrame({"image_path": images.paths, "model": model, "caption": best})
        scores = score_test_captions(images.paths, best, images.references, images.train_captions, "zh", "jieba",
                                     reference_scores=compared)  # fmt: skip
        shown["cider"] = scores.predictions["cider"].to_numpy()
        wrong = attribute_errors(dict(zip(images.paths, best)), compared.truth, "zh")
        shown["attribute_errors"] = [", ".join(wrong[p]) for p in images.paths]
        clip_table = score_captions(clip[0], clip[1], best, images.references, prompt=PROMPT)
        shown["clipscore"], shown["refclipscore"] = clip_table["clipscore"], clip_table["refclipscore"]
        tables.append(shown)
    return pd.concat(tables, ignore_index=True)


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, make_tiny_dual_encoder):
    """{"run": an InferResult of two fake captioners (beam) on 6 demo images with a tiny CLIP, "config", "captions"
    (preset -> model -> captions), "captioners" (a function: fresh TableCaptioners), "greedy" (per_image of the
    greedy captions, scored the same way)}."""
    import torch

    from nbutils import infer
    from nbutils.demo import scenes
    from nbutils.evaluation import caption_metrics
    from nbutils.models.clip import ClipBundle
    from nbutils.models.tokenizer import train_tokenizer

    demo = tmp_path_factory.mktemp("browser") / "demo"
    table = scenes.generate_demo_dataset(
        demo, n_images=6, image_size=32, captions_per_image=4, progress=False
    )
    grouped = table.groupby("image_path", sort=True)["text"].apply(list)
    paths, references = list(grouped.index), list(grouped.values)
    images = infer.ImageSet(paths, references, pd.DataFrame(columns=["image_path", "reason"]),
                            str(demo / "objects.jsonl"), "zh", list(table["text"]))  # fmt: skip
    n = len(paths)
    # the run's captions: m1 true ones, m2 another image's (attribute errors); greedy the other way round
    captions = {
        "beam": {"m1": [refs[0] for refs in references], "m2": [references[(i + 1) % n][0] for i in range(n)]},
        "greedy": {"m1": [references[(i + 2) % n][1] for i in range(n)], "m2": [refs[1] for refs in references]},
    }  # fmt: skip
    tokenizer = train_tokenizer(list(table["text"]))
    model = make_tiny_dual_encoder(tokenizer, 32, max_text_length=64).eval()  # score_captions: 64
    torch.manual_seed(0)
    clip = (ClipBundle(model, tokenizer, None, "dual_encoder"), torch.randn(n, model.config.projection_dim))
    config = infer.InferConfig(decoding="beam", max_new_tokens=48, seed=7, clipscore_prompt=PROMPT)

    def captioners():
        return {m: TableCaptioner({p: captions[p][m] for p in captions}) for m in ("m1", "m2")}

    with pytest.MonkeyPatch.context() as patch:  # METEOR's JVM plays no part in CIDEr or the browser
        patch.setattr(caption_metrics, "_meteor", lambda gts, res: (None, "not needed here"))
        per_image = _infer_per_image(images, captions["beam"], clip)
        greedy = _infer_per_image(images, captions["greedy"], clip)
    summary = {"decoding": {**infer.decoding_settings(config), "given": "beam"}, "clipscore_prompt": PROMPT}
    caches = {
        "m1": FakeCache(paths, 4),
        "m2": FakeCache(paths, 8),
    }  # two geometries, as two captioners may have
    run = infer.InferResult(
        summary,
        pd.DataFrame(),
        images,
        per_image=per_image,
        caches=caches,
        captioners=captioners(),
        clip=clip,
    )
    return {"run": run, "config": config, "captions": captions, "captioners": captioners, "greedy": greedy}


def _same_scores(row: dict, want: pd.Series) -> None:
    assert row["caption"] == want["caption"] and row["not_scored"] == []
    assert row["cider"] == want["cider"]  # CIDEr-D with the test set's document frequencies: exactly infer's
    assert row["attribute_errors"] == want["attribute_errors"]
    assert row["clipscore"] == pytest.approx(want["clipscore"], abs=1e-5)
    assert row["refclipscore"] == pytest.approx(want["refclipscore"], abs=1e-5)


def test_recaptioning_with_the_runs_preset_rescores_to_the_runs_per_image_values(scored_run):
    run = scored_run["run"]
    b = CaptionBrowser.from_infer(run, scored_run["captioners"](), config=scored_run["config"])
    per_image = run.per_image.set_index(["image_path", "model"])
    assert per_image["attribute_errors"].ne("").any() and per_image["cider"].nunique() > 2  # a real check
    for path in run.images.paths:
        for model in ("m1", "m2"):
            _same_scores(b.recaptioned_row(path, model, "beam"), per_image.loc[(path, model)])
    with pytest.raises(ValueError, match="unknown decoding preset 'custom'"):
        b.recaptioned_row(run.images.paths[0], "m1", "custom")  # a menu entry, not a preset to caption with


def test_a_recaptioned_caption_shows_its_own_scores(scored_run):
    run, greedy = scored_run["run"], scored_run["greedy"].set_index(["image_path", "model"])
    b = CaptionBrowser.from_infer(run, scored_run["captioners"](), config=scored_run["config"])
    first, second = run.images.paths[:2]
    for path in (
        first,
        second,
    ):  # the chosen preset stays chosen: the next image is re-captioned and re-scored
        rows = b.recaption("greedy")["rows"] if path == first else (b.next() or b.current()["rows"])
        assert [r["preset"] for r in rows] == ["greedy", "greedy"]
        for row in rows:
            _same_scores(row, greedy.loc[(path, row["model"])])
    text = b.caption_html()
    m2 = greedy.loc[(second, "m2")]
    assert (
        f"cider {m2['cider']:.2f}, clipscore {m2['clipscore']:.2f}, refclipscore {m2['refclipscore']:.2f}"
        in text
    )
    wrong = greedy.loc[(second, "m1"), "attribute_errors"]
    assert wrong and f"wrong: {wrong})" in text  # m1's greedy caption describes another image


def test_from_infer_recaptions_with_the_notebooks_settings_and_each_models_images(scored_run):
    run, config = scored_run["run"], scored_run["config"]
    b = CaptionBrowser.from_infer(run, scored_run["captioners"](), config=config)
    assert (b.preset, b.max_new_tokens, b.num_return_sequences, b.seed) == ("beam", 48, 1, 7)
    b.recaption("greedy")
    greedy = {"num_beams": 1, "do_sample": False, "max_new_tokens": 48, "num_return_sequences": 1}
    assert b.captioners["m1"].calls == [((1, 3, 4, 4), greedy, 7)]
    assert b.captioners["m2"].calls == [((1, 3, 8, 8), greedy, 7)]  # m2's own cache: its geometry
    # max_new_tokens 0: each preset's own limit
    own = CaptionBrowser.from_infer(
        run, scored_run["captioners"](), config=dataclasses.replace(config, max_new_tokens=0)
    )
    assert own.max_new_tokens == 0 and own.decoding_for("greedy") == "greedy"
    # explicit JSON settings: a limit they give is the budget; the rows say "custom"
    json_config = dataclasses.replace(
        config, decoding='{"preset": "beam", "num_beams": 5, "max_new_tokens": 30}', max_new_tokens=0
    )
    custom = CaptionBrowser.from_infer(run, {}, config=json_config)
    assert (custom.preset, custom.max_new_tokens) == ("custom", 30)
    assert custom.decoding_for("greedy")["max_new_tokens"] == 30
    # without a config: the settings the run's summary recorded
    recorded = CaptionBrowser.from_infer(run, run.captioners)
    assert (recorded.preset, recorded.max_new_tokens, recorded.num_return_sequences, recorded.seed) == (
        "beam",
        48,
        1,
        0,
    )
    assert recorded.scorer.tokenization is None and recorded.scorer.clipscore_prompt == PROMPT
    with pytest.raises(ValueError, match="unknown decoding preset"):
        CaptionBrowser.from_infer(run, {}, preset="fastest")
