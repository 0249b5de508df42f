"""What each stage writes to `<run>/<stage>/summary.json`: every key, its display name, its kind and its unit.

    summaries.field("train_clip", "i2t_r1")                # Field("i2t_r1", "image→text R@1", "percent")
    summaries.display_name("infer", "models.m.attribute_scores.single_object.colour.precision")
                                                           # "m, attributes, single-object, colour: precision"
    summaries.format_value("train_clip", "i2t_r1", 81.27)  # "81.3 %"
    summaries.flatten(summary)                             # {"i2t_r1": 81.27, "initial.i2t_r1": 1.5, ...}
    summaries.check("train_clip", summary)                 # [] or ["surprise: not declared", ...]

A key is dotted ("attribute_scores.per_attribute.colour.precision"); in the schema a `*` stands for any one key,
where a subtree repeats per attribute, split, model or failure kind. A name's `{}` is filled with what the `*`
matched ("zero-shot: {}" -> "zero-shot: colour"). Groups nest by `_under`: the names of the fields under
"attribute_scores" start with "attributes", so `attribute_scores.hallucination_rate` reads "attributes:
hallucination" and `true_captions.attribute_scores.hallucination_rate` "true captions, attributes: hallucination".

Each kind has one format (`format_value`, KINDS), so every table, report and page shows a number the same way.
Every value may also be null (not measured: no ground truth, no Java for METEOR, a resumed training's time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .evaluation.caption_metrics import METRIC_NAMES as CAPTION_METRIC_NAMES
from .reporting.tables import MISSING, count, duration, facts_table, number, percent, readable, significant

KINDS = {  # what a value is, and how `format_value` shows it
    "count": "an int, with thousands separators: 2,810",
    "percent": "0-100 as stored, one decimal: 81.3 %",
    "score": "caption metrics, CLIPScores and losses, three decimals: 1.720",
    "seconds": "a duration (reporting.tables.duration): 42 s, 3.5 min",
    "learning_rate": "e-notation: 5.0e-04",
    "number": "4 significant digits (an int in full): 0.4582",
    "text": "a string, or a list of strings shown joined",
    "flag": "true / false, shown yes / no",
    "table": "a list of rows; `<table>.<column>` declares a column",
    "settings": "a subtree that is no result (decoding, clip_embeddings): not checked, not flattened",
}
NUMERIC = ("count", "percent", "score", "seconds", "learning_rate", "number")


@dataclass(frozen=True)
class Field:
    """One key of a summary.json."""

    key: str  # dotted; "*" stands for any one key
    name: str  # for people; "{}" takes what a "*" matched
    kind: str  # one of KINDS
    unit: str = ""  # what a number measures, where the name does not say it ("px", "images/s")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.key}: kind {self.kind!r} is not one of {', '.join(KINDS)}")


def _under(prefix: str, name: str, fields: tuple[Field, ...]) -> tuple[Field, ...]:
    """`fields` as the subtree `prefix`, named after `name` ("attributes" + "hallucination" -> "attributes:
    hallucination"; + "all images, {}: precision" -> "attributes, all images, {}: precision")."""

    def joined(inner: str) -> str:
        return f"{name}, {inner}" if ": " in inner else f"{name}: {inner}"

    return tuple(replace(f, key=f"{prefix}.{f.key}", name=joined(f.name)) for f in fields)


# ----------------------------------------------------------------------------- blocks several stages share

HEADLINE = (Field("headline", "headline", "text"),)

RETRIEVAL = (  # train_clip's retrieval on the test images (evaluation/retrieval.py), before and after training
    Field("i2t_r1", "image→text R@1", "percent"),
    Field("i2t_r5", "image→text R@5", "percent"),
    Field("i2t_r10", "image→text R@10", "percent"),
    Field("t2i_r1", "text→image R@1", "percent"),
    Field("t2i_r5", "text→image R@5", "percent"),
    Field("t2i_r10", "text→image R@10", "percent"),
    Field("mean_recall", "mean recall", "percent"),
    Field("median_rank_i2t", "median rank image→text", "number"),
    Field("median_rank_t2i", "median rank text→image", "number"),
)

CAPTION_SCORES = (  # evaluation/caption_metrics.py; METEOR is null, with its reason, where Java is missing
    *(Field(key, name, "score") for key, name in CAPTION_METRIC_NAMES.items()),
    Field("meteor_missing_reason", "METEOR missing because", "text"),
)

ATTRIBUTE_SCORES = (  # evaluation/caption_scores.attribute_summary: the demo's ground truth against the captions
    Field("per_attribute.*.precision", "all images, {}: precision", "percent"),
    Field("per_attribute.*.coverage", "all images, {}: coverage", "percent"),
    Field("single_object.*.precision", "single-object, {}: precision", "percent"),
    Field("single_object.*.coverage", "single-object, {}: coverage", "percent"),
    Field("no_false_statement", "no false statement", "percent"),
    Field("single_object_no_false_statement", "no false statement, single-object", "percent"),
    Field("hallucination_rate", "hallucination", "percent"),
    Field("single_object_hallucination_rate", "hallucination, single-object", "percent"),
    Field("n_images", "images", "count"),
    Field("n_single_object", "single-object images", "count"),
)

TRUE_CAPTIONS = (  # each image's first reference scored against its others: what a perfect captioner reaches
    *CAPTION_SCORES,
    Field("held_out", "held out", "text"),
    Field("n_images", "images", "count"),
    *_under("attribute_scores", "attributes", ATTRIBUTE_SCORES),
)

CAPTIONS = (  # a captioner's test captions (evaluation/caption_scores.score_test_captions)
    *CAPTION_SCORES,
    Field("tokenization", "tokenization", "text"),
    Field("n_test_images", "test images", "count"),
    Field("empty_captions", "empty captions", "count"),
    *_under("baseline", "constant caption", (*CAPTION_SCORES, Field("caption", "caption", "text"))),
    *_under("true_captions", "true captions", TRUE_CAPTIONS),
    *_under("attribute_scores", "attributes", ATTRIBUTE_SCORES),
    Field("decoding", "decoding", "settings"),
)

TRAINING = (  # nbutils.training.job.fit: every training stage
    Field("mode", "mode", "text"),
    Field("steps", "training steps", "count"),
    Field("train_seconds", "training time", "seconds"),
    Field("final_train_loss", "final training loss", "score"),
    Field("learning_rate", "learning rate", "learning_rate"),
    Field("batch_size", "batch size", "count"),  # per process
    Field("world_size", "processes", "count"),
    Field("global_batch_size", "global batch size", "count"),  # rows per optimiser step, every process
    Field("precision", "precision", "text"),  # bf16 (autocast) or fp32
    Field("trainable_parameters.trainable", "parameters: trainable", "count"),
    Field("trainable_parameters.frozen", "parameters: frozen", "count"),
    Field("trainable_parameters.total", "parameters", "count"),
)


# ----------------------------------------------------------------------------- the stages, in pipeline order

PROCESSDATA_01 = (  # nbutils.data.download
    *HEADLINE,
    Field("rows", "caption rows", "count"),
    Field("images", "distinct images", "count"),
    Field("ok", "downloaded", "count"),
    Field("failed", "failed", "count"),
    Field("failed_by_kind.*", "failed: {}", "count"),
    Field("rows_per_second", "download rate", "number", "rows/s"),
    Field("skipped", "settled by an earlier run", "count"),
    Field("bytes", "bytes downloaded", "count"),
    Field("seconds", "time", "seconds"),
    Field("status_path", "status table", "text"),
)

PROCESSDATA_02 = (  # nbutils.data.validate
    *HEADLINE,
    Field("checked", "images checked", "count"),
    Field("clean", "clean", "count"),
    Field("rejected", "rejected", "count"),
    Field("rejected_by_reason.*", "rejected: {}", "count"),
    Field("duplicates", "duplicates", "count"),
    Field("normalised", "normalised", "count"),
    Field("normalised_reused", "normalised earlier", "count"),
    Field("normalised_by_reason.*", "normalised: {}", "count"),
    Field("rows_in", "caption rows in", "count"),
    Field("rows_clean", "caption rows clean", "count"),
    Field("rows_rejected", "caption rows rejected", "count"),
    Field("num_workers", "worker processes", "count"),
    Field("seconds", "time", "seconds"),
    Field("images_per_s", "validation rate", "number", "images/s"),
)

PROCESSDATA_03 = (  # nbutils.data.prepare (stages.PreparedDataset.summary)
    *HEADLINE,
    *(Field(f"{split}_images", f"{split} images", "count") for split in ("train", "val", "test")),
    *(Field(f"{split}_rows", f"{split} caption rows", "count") for split in ("train", "val", "test")),
    Field("dropped_rows", "dropped caption rows", "count"),
    Field("dropped_by_reason.*", "dropped: {}", "count"),
    Field("cache_format", "image cache format", "text"),
    Field("image_size", "image size", "number", "px"),
    Field("cache_dir", "image cache", "text"),
    Field("language", "language", "text"),
)

TRAIN_CLIP = (  # nbutils.training.clip
    *HEADLINE,
    *RETRIEVAL,
    Field("chance_r1", "chance R@1", "percent"),
    Field("n_test_images", "test images", "count"),
    *_under("initial", "untrained", RETRIEVAL),
    *TRAINING,
    # The loss of a model that scores every candidate alike (nbutils.training.clip_loss.chance_loss):
    # evaluation scores each process's own batch, training the batches gathered from every process.
    Field("chance_loss", "chance loss", "score"),
    Field("chance_train_loss", "chance training loss", "score"),
    Field("negatives_per_caption", "hard negatives per caption", "count"),  # 0 without hard negatives
    Field("hard_negatives.language", "hard negatives: language", "text"),
    Field("hard_negatives.replaceable_words", "hard negatives: replaceable words", "count"),
    Field("hard_negatives.substitutes.*", "hard negatives: substitutes of {}", "text"),
    Field("caption_words.language", "caption-word loss: language", "text"),
    Field("caption_words.n_words", "caption-word loss: words", "count"),
    Field("caption_words.words", "caption-word loss: the words", "text"),
    Field("word_loss_weight", "caption-word loss weight", "number"),
    Field("zero_shot_accuracy.*", "zero-shot: {}", "percent"),
    Field("zero_shot_chance.*", "zero-shot chance: {}", "percent"),
    Field("linear_probe_accuracy.*", "linear probe: {}", "percent"),
)

TRAIN_ENCODER_DECODER = (  # nbutils.training.encoder_decoder
    *HEADLINE,
    *CAPTIONS,
    Field("decoder", "decoder", "text"),
    Field("language", "language", "text"),
    Field("prompt", "prompt", "text"),
    Field("label_smoothing", "label smoothing", "number"),
    *TRAINING,
    Field("encoder_learning_rate", "encoder learning rate", "learning_rate"),
)

TRAIN_CLIPCAP = (  # nbutils.training.clipcap
    *HEADLINE,
    *CAPTIONS,
    Field("mapping", "mapping", "text"),
    Field("prefix_len", "prefix length", "count"),
    Field("constant_len", "constant tokens", "count"),
    Field("mapping_layers", "mapping layers", "count"),
    Field("normalize_prefix", "normalised prefix", "flag"),
    Field("gpt2_frozen", "language model frozen", "flag"),
    Field("language", "language", "text"),
    *TRAINING,
    Field("clip_model", "CLIP", "text"),
    Field("clip_embeddings", "CLIP image embeddings", "settings"),
    # Every mapping type side by side, in the first mapping's summary only (null with one mapping).
    Field("comparison", "mappings compared", "table"),
    Field("comparison.mapping", "mapping", "text"),
    *(Field(f"comparison.{name}", name, "score") for name in ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR")),
    Field("comparison.colour precision, single-object (%)", "colour precision, single-object", "percent"),
    Field("comparison.shape precision, single-object (%)", "shape precision, single-object", "percent"),
    Field("comparison.hallucination (%)", "hallucination", "percent"),
    Field("comparison.trainable parameters", "trainable parameters", "count"),
    Field("comparison.training seconds", "training time", "seconds"),
)

INFER = (  # nbutils.infer
    *HEADLINE,
    Field("n_images", "images", "count"),
    Field("images", "images captioned", "text"),  # a split, folder or file
    Field("decoding", "decoding", "settings"),
    Field("models.*.kind", "{}: kind", "text"),
    *_under("models.*.metrics", "{}", CAPTION_SCORES),
    *_under("models.*.attribute_scores", "{}, attributes", ATTRIBUTE_SCORES),
    Field("models.*.baseline_cider", "{}: constant caption's CIDEr", "score"),
    Field("models.*.empty_captions", "{}: empty captions", "count"),
    Field("models.*.images_per_second.*", "{}: speed, {}", "number", "images/s"),
    *_under("true_captions", "true captions", TRUE_CAPTIONS),
    Field("rejected_images", "images rejected", "count"),
    Field("rejected", "images rejected", "table"),
    Field("rejected.image_path", "image", "text"),
    Field("rejected.reason", "reason", "text"),
    Field("clipscore_model", "CLIPScore model", "text"),
    Field("clipscore_prompt", "CLIPScore prompt", "text"),
    Field("clipscore.*", "CLIPScore: {}", "score"),
    Field("refclipscore.*", "RefCLIPScore: {}", "score"),
)

ANALYZE_LOSS = (  # nbutils.analyze_loss
    *HEADLINE,
    Field("n_trainings", "trainings", "count"),
    Field("n_runs", "runs", "count"),
    Field("n_skipped", "folders skipped", "count"),
    Field("smoothing", "smoothing", "number"),
    Field("trainings", "trainings", "table"),
    *(
        Field(f"trainings.{key}", key.replace("_", " "), "text")
        for key in ("label", "run", "stage", "mapping", "model_type", "folder", "notes")
    ),
    Field("trainings.steps", "steps", "count"),
    Field("trainings.epochs", "epochs", "number"),
    Field("trainings.batch_size", "batch size", "count"),
    Field("trainings.final_train_loss", "final training loss", "score"),
    Field("trainings.final_eval_loss", "final eval loss", "score"),
    Field("trainings.best_eval_loss", "best eval loss", "score"),
    Field("trainings.chance.train", "chance: training loss", "score"),
    Field("trainings.chance.eval", "chance: eval loss", "score"),
    Field("trainings.chance.note", "chance: how", "text"),
    Field("skipped", "folders skipped", "table"),
    *(Field(f"skipped.{key}", key, "text") for key in ("folder", "reason", "detail")),
)

SCHEMAS: dict[str, tuple[Field, ...]] = {
    "processdata_01": PROCESSDATA_01,
    "processdata_02": PROCESSDATA_02,
    "processdata_03": PROCESSDATA_03,
    "train_clip": TRAIN_CLIP,
    "train_encoder_decoder": TRAIN_ENCODER_DECODER,
    "train_clipcap": TRAIN_CLIPCAP,
    "infer": INFER,
    "analyze_loss": ANALYZE_LOSS,
}


# ----------------------------------------------------------------------------- looking keys up


def _parts(key: str) -> tuple[str, ...]:
    return tuple(key.split("."))


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    return len(pattern) == len(parts) and all(p in ("*", k) for p, k in zip(pattern, parts))


# Each stage's fields with their keys split, looked up for every value of every page and table.
_SPLIT = {stage: [(_parts(f.key), f) for f in fields] for stage, fields in SCHEMAS.items()}
# Settings subtrees of any stage: left out of `flatten`, which is given no stage.
_SETTINGS = {parts for fields in _SPLIT.values() for parts, f in fields if f.kind == "settings"}


def _declared(stage: str, parts: tuple[str, ...]) -> Field | None:
    """The field declared for exactly these parts: a literal key before a wildcard one."""
    fields = _SPLIT.get(stage, ())
    exact = next((f for pattern, f in fields if pattern == parts), None)
    return exact or next((f for pattern, f in fields if _matches(pattern, parts)), None)


def _is_group(stage: str, parts: tuple[str, ...]) -> bool:
    """Whether fields are declared under these parts (a subtree such as `attribute_scores`)."""
    n = len(parts)
    return any(len(pattern) > n and _matches(pattern[:n], parts) for pattern, _ in _SPLIT.get(stage, ()))


def field(stage: str | None, key: str) -> Field | None:
    """The field of `stage`'s summary that dotted `key` is (a key inside a settings subtree: the subtree), None
    when undeclared. `stage` None: the first stage in pipeline order that declares `key`."""
    if stage is None:
        return next((f for f in (field(s, key) for s in SCHEMAS) if f is not None), None)
    parts = _parts(key)
    for n in range(len(parts), 0, -1):
        found = _declared(stage, parts[:n])
        if found is not None and (n == len(parts) or found.kind == "settings"):
            return found
    return None


def display_name(stage: str | None, key: str) -> str:
    """A key's name for people: "attributes, single-object, colour: precision". An undeclared key (or one inside
    a settings subtree) is spelt out from its parts: "decoding: num beams"."""
    found = field(stage, key)
    parts = _parts(key)
    if found is None or found.kind == "settings":
        words = [p.replace("_", " ") for p in parts]
        if found is not None:
            words = [found.name, *words[len(_parts(found.key)) :]]
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])}: {words[-1]}"
    name = found.name
    for pattern, part in zip(_parts(found.key), parts):
        if pattern == "*":
            name = name.replace("{}", part, 1)
    return f"{name} ({found.unit})" if found.unit else name


# ----------------------------------------------------------------------------- values


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits(kind: str, value) -> bool:
    """Whether `value` has the JSON type of `kind` (null always does)."""
    if value is None or kind == "settings":
        return True
    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in NUMERIC:
        return _is_number(value)
    if kind == "text":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if kind == "flag":
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(row, Mapping) for row in value)  # table


def format_value(stage: str | None, key: str, value) -> str:
    """`value` of `key` in `stage`'s summary as its kind shows it ("81.3 %", "2,810", "1.720", "5.0e-04"); a key
    that is not declared, or a value not of its kind, is shown by its type (ints in full, floats to 4
    significant digits, true / false as yes / no). Null is "–"."""
    declared = field(stage, key)
    kind = declared.kind if declared is not None and _fits(declared.kind, value) else None
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if kind == "percent":
        return percent(value)
    if kind == "score":
        return number(value, 3)
    if kind == "seconds":
        return duration(value)
    if kind == "learning_rate":
        return f"{value:.1e}"
    if isinstance(value, int):
        return count(value)
    if isinstance(value, float):
        return significant(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return readable(value)


def value_of(summary: Mapping, key: str):
    """The value at dotted `key` of `summary` (None when a part is missing)."""
    value = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def facts(stage: str, summary: Mapping, keys: list[str], **formatted: str):
    """A report's small table of `summary`'s `keys`: each row the key's display name and its value as its kind
    shows it; `formatted` adds rows already written out ("trainable parameters": "1,234 of 5,678")."""
    rows = {display_name(stage, key): format_value(stage, key, value_of(summary, key)) for key in keys}
    return facts_table({**rows, **{name.replace("_", " "): text for name, text in formatted.items()}})


def flatten(summary: Mapping | None) -> dict[str, int | float]:
    """The numbers of a summary by dotted key ("attribute_scores.per_attribute.colour.precision": 99.6), in
    the summary's order; strings, booleans, lists (tables) and settings subtrees are left out."""
    out: dict[str, int | float] = {}

    def walk(obj: Mapping, parts: tuple[str, ...]) -> None:
        for key, value in obj.items():
            here = (*parts, str(key))
            if here in _SETTINGS:
                continue
            if isinstance(value, Mapping):
                walk(value, here)
            elif _is_number(value):
                out[".".join(here)] = value

    walk(summary or {}, ())
    return out


def check(stage: str, summary: Mapping) -> list[str]:
    """What is wrong with `summary` as `stage`'s summary.json: keys it holds that the schema does not declare,
    and values of the wrong type ("i2t_r1: percent, got 'high'"). Declared keys may be absent."""
    if stage not in SCHEMAS:
        return [f"{stage}: no schema (stages: {', '.join(SCHEMAS)})"]
    problems: list[str] = []

    def walk(obj: Mapping, parts: tuple[str, ...]) -> None:
        for key, value in obj.items():
            here = (*parts, str(key))
            dotted = ".".join(here)
            declared = _declared(stage, here)
            if declared is not None:
                if not _fits(declared.kind, value):
                    problems.append(f"{dotted}: {declared.kind.replace('_', ' ')}, got {value!r:.60}")
                elif declared.kind == "table" and value:
                    for row in value:
                        walk(row, here)  # a row's keys are the table's columns: `<table>.<column>`
            elif _is_group(stage, here):
                if isinstance(value, Mapping):
                    walk(value, here)
                elif value is not None:
                    problems.append(f"{dotted}: a group of keys, got {value!r:.60}")
            else:
                problems.append(f"{dotted}: not declared")

    walk(summary, ())
    return problems
