"""The summary.json schema (nbutils.summaries): every stage declared, every key of real summaries declared with
the right type, one format per kind, names for people, and the numbers `flatten` gives.

Real summaries: trimmed copies in tests/fixtures/summaries/ (always), and every run under outputs/j2 and
outputs/en where a demo has written them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbutils import pipeline, summaries

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "summaries"
OUTPUT_RUNS = [REPO / "outputs" / run for run in ("j2", "en")]

# A value of each kind, for summaries built from the schema itself.
EXAMPLES = {
    "count": 2810,
    "percent": 81.27,
    "score": 1.72,
    "seconds": 209.4,
    "learning_rate": 5e-4,
    "number": 0.4582,
    "text": "beam",
    "flag": True,
    "table": [],
    "settings": {"num_beams": 4},
}


def example_summary(stage: str) -> dict:
    """A summary holding every key the schema declares for `stage`, each "*" as "x", values by kind; a table
    gets one row holding its columns."""
    summary: dict = {}
    for f in summaries.SCHEMAS[stage]:
        parts = [("x" if p == "*" else p) for p in f.key.split(".")]
        node = summary
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if isinstance(node, list):  # a table: its columns go into its one row
                if not node:
                    node.append({})
                node = node[0]
        node[parts[-1]] = [] if f.kind == "table" else EXAMPLES[f.kind]
    return summary


def real_summaries() -> list[tuple[str, Path]]:
    found = [(p.stem, p) for p in sorted(FIXTURES.glob("*.json"))]
    for run in OUTPUT_RUNS:
        found += [(stage, run / stage / "summary.json") for stage in pipeline.NAMES]
    return [(stage, path) for stage, path in found if path.is_file()]


def test_every_pipeline_stage_has_a_schema_of_known_kinds():
    assert list(summaries.SCHEMAS) == pipeline.NAMES
    for stage, fields in summaries.SCHEMAS.items():
        keys = [f.key for f in fields]
        assert len(keys) == len(set(keys)), f"{stage}: a key declared twice"
        assert all(f.kind in summaries.KINDS for f in fields)
        assert all(f.name for f in fields) and summaries.field(stage, "headline").kind == "text"
    with pytest.raises(ValueError, match="kind"):
        summaries.Field("x", "x", "ratio")


def test_the_training_stages_declare_what_they_record():
    for stage in ("train_clip", "train_encoder_decoder", "train_clipcap"):
        kinds = {
            key: summaries.field(stage, key).kind for key in ("world_size", "batch_size", "global_batch_size")
        }
        assert kinds == {"world_size": "count", "batch_size": "count", "global_batch_size": "count"}
        assert summaries.field(stage, "learning_rate").kind == "learning_rate"
    for key in ("chance_loss", "chance_train_loss"):
        assert summaries.field("train_clip", key).kind == "score"
    assert summaries.field("train_clip", "negatives_per_caption").kind == "count"


@pytest.mark.parametrize("stage", pipeline.NAMES)
def test_a_summary_of_every_declared_key_passes_the_check(stage):
    assert summaries.check(stage, example_summary(stage)) == []


@pytest.mark.parametrize("stage, path", real_summaries(), ids=lambda x: str(x).removeprefix(str(REPO) + "/"))
def test_real_summaries_are_fully_declared(stage, path):
    assert summaries.check(stage, json.loads(path.read_text(encoding="utf-8"))) == []


def test_the_fixtures_cover_a_contrastive_training_a_captioner_and_infer():
    assert {p.stem for p in FIXTURES.glob("*.json")} >= {"train_clip", "train_clipcap", "infer"}


def test_check_names_undeclared_keys_and_values_of_the_wrong_type():
    summary = {
        "i2t_r1": "high",
        "steps": 1.5,
        "initial": 3,
        "hard_negatives": None,  # a group may be null
        "train_seconds": None,  # and so may any value
        "surprise": 1,
        "zero_shot_accuracy": {"colour": 98.6, "hue": {"deep": 1}},
        "decoding": {"anything": ["goes"]},  # not declared in train_clip
    }
    assert summaries.check("train_clip", summary) == [
        "i2t_r1: percent, got 'high'",
        "steps: count, got 1.5",
        "initial: a group of keys, got 3",
        "surprise: not declared",
        "zero_shot_accuracy.hue: percent, got {'deep': 1}",
        "decoding: not declared",
    ]
    rows = {"trainings": [{"label": "a/train_clip", "chance": {"eval": 3.47, "guess": 1}}], "skipped": "none"}
    assert summaries.check("analyze_loss", rows) == [
        "trainings.chance.guess: not declared",
        "skipped: table, got 'none'",
    ]
    assert (
        summaries.check("train_encoder_decoder", {"decoding": {"num_beams": 4}}) == []
    )  # settings: unchecked
    assert summaries.check("my_notebook", {}) == [
        f"my_notebook: no schema (stages: {', '.join(pipeline.NAMES)})"
    ]


def test_fields_and_their_names():
    f = summaries.field("train_encoder_decoder", "attribute_scores.single_object.colour.precision")
    assert (f.key, f.kind) == ("attribute_scores.single_object.*.precision", "percent")
    names = {
        ("train_clip", "i2t_r1"): "image→text R@1",
        ("train_clip", "initial.mean_recall"): "untrained: mean recall",
        ("train_clip", "zero_shot_accuracy.colour"): "zero-shot: colour",
        ("train_clip", "caption_words.n_words"): "caption-word loss: words",
        (
            "train_clipcap",
            "true_captions.attribute_scores.hallucination_rate",
        ): "true captions, attributes: hallucination",
        ("train_clipcap", "baseline.cider"): "constant caption: CIDEr",
        ("train_clipcap", "decoding.num_beams"): "decoding: num beams",  # inside a settings subtree
        ("infer", "models.train_clipcap.attribute_scores.per_attribute.size.coverage"): (
            "train_clipcap, attributes, all images, size: coverage"
        ),
        ("infer", "models.m.images_per_second.beam"): "m: speed, beam (images/s)",
        ("processdata_03", "image_size"): "image size (px)",
        ("train_clip", "my_score.per_word"): "my score: per word",  # undeclared: spelt out
    }
    assert {key: summaries.display_name(*key) for key in names} == names
    assert summaries.field("train_clip", "my_score") is None
    assert summaries.field("train_clip", "decoding.num_beams") is None  # train_clip has no decoding
    assert summaries.field(None, "cider") == summaries.field("train_encoder_decoder", "cider")  # any stage


def test_each_kind_has_one_format():
    f = summaries.format_value
    assert [
        f("processdata_01", "ok", 2810),
        f("train_clip", "i2t_r1", 81.27),
        f("train_clip", "chance_r1", 0.3745),
        f("train_clip", "chance_loss", 4.852030263919617),  # a loss, not a percentage
        f("train_encoder_decoder", "cider", 1.71984),
        f("infer", "clipscore.m", 1.7468),
        f("train_clip", "train_seconds", 209.4),
        f("train_clip", "learning_rate", 0.0005),
        f("train_clip", "word_loss_weight", 5.0),
        f("train_clip", "median_rank_t2i", 137.0),
        f("train_clipcap", "normalize_prefix", False),
        f("train_clip", "caption_words.words", ["red", "blue"]),
        f("train_clipcap", "comparison.shape precision, single-object (%)", 98.6486),
        f("train_clipcap", "comparison.BLEU-4", 0.46022),
    ] == [
        "2,810", "81.3 %", "0.4 %", "4.852", "1.720", "1.747", "3.5 min", "5.0e-04", "5", "137", "no",
        "red, blue", "98.6 %", "0.460",
    ]  # fmt: skip
    # null, undeclared keys and values not of their kind: by type
    assert [f("train_clip", "i2t_r1", None), f("x", "y", 1234567), f("x", "y", 0.0), f("x", "y", float("nan"))] == [
        "–", "1,234,567", "0", "nan",
    ]  # fmt: skip
    assert [f("x", "big", 123456.0), f("x", "tiny", 0.00001234), f("processdata_01", "images", "test")] == [
        "123,456.0", "1.234e-05", "test",
    ]  # fmt: skip


def test_flatten_keeps_the_numbers_and_leaves_out_settings_text_and_tables():
    summary = json.loads((FIXTURES / "train_clipcap.json").read_text(encoding="utf-8"))
    flat = summaries.flatten(summary)
    assert flat["cider"] == summary["cider"] and flat["baseline.cider"] == summary["baseline"]["cider"]
    single = summary["attribute_scores"]["single_object"]
    assert flat["attribute_scores.single_object.colour.precision"] == single["colour"]["precision"]
    assert flat["trainable_parameters.total"] == summary["trainable_parameters"]["total"]
    assert not [k for k in flat if k.startswith(("decoding.", "clip_embeddings.", "comparison"))]
    assert all(type(v) in (int, float) for v in flat.values())  # no text, flag or null
    assert list(flat)[:2] == ["bleu1", "bleu2"]  # the summary's order
    assert summaries.flatten(None) == {}
