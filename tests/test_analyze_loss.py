"""The analyze_loss stage on run folders written by the tests: known losses in, the same curves, chance levels,
skipped folders with their reasons, metrics and input files out; and once on a real (tiny) train_clip."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbutils import analyze_loss as al
from nbutils.reporting.figures import ema_smooth

REPO = Path(__file__).resolve().parents[1]

CLIP_TRAIN = [(10, 3.9), (20, 3.1), (30, 2.5), (40, 2.2)]
CLIP_EVAL = [(20, 3.0), (40, 2.4)]
MLP_TRAIN = [(5, 4.0), (10, 2.0), (15, 1.5)]
MLP_EVAL = [(15, 1.6)]
TRANSFORMER_TRAIN = [(5, 4.2), (10, 2.4), (15, 1.7)]
CAPTIONER_TRAIN = [(100, 5.0), (200, 3.5)]
CAPTIONER_EVAL = [(200, 3.25)]


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_training(
    folder: Path, train, evals=(), batch=32, epochs_per_step=0.1, stage=None, summary=None
) -> Path:
    """A training folder as the Trainer and the stages leave it: trainer_state.json (log_history with
    `loss` / `eval_loss` entries and the final `train_loss` average), summary.json, stage.json."""
    log = [
        {"epoch": s * epochs_per_step, "grad_norm": 1.0, "learning_rate": 1e-3, "loss": v, "step": s}
        for s, v in train
    ]
    log += [{"epoch": s * epochs_per_step, "eval_loss": v, "eval_runtime": 0.1, "step": s} for s, v in evals]
    log.sort(key=lambda e: (e["step"], "eval_loss" in e))
    last = max(s for s, _ in [*train, *evals])
    log.append({"epoch": last * epochs_per_step, "step": last, "train_loss": 9.9, "train_runtime": 1.0})
    state = {
        "global_step": last,
        "epoch": last * epochs_per_step,
        "train_batch_size": batch,
        "log_history": log,
    }
    write_json(folder / "trainer_state.json", state)
    if summary is not None:
        write_json(folder / "summary.json", summary)
    if stage is not None:
        write_json(folder / "stage.json", {"stage": stage, "format_version": 1, "files": {}, "origin": None})
    return folder


CLIP_SUMMARY = {
    "headline": "Trained 40 steps.",
    "i2t_r1": 77.90262172284645,
    "median_rank_i2t": 1.0,
    "n_test_images": 1267,
    "initial": {"i2t_r1": 1.4981273408239701},
    "final_train_loss": 2.2,
    "chance_loss": math.log(32),
    "chance_train_loss": math.log(32),
    "negatives_per_caption": 0,
    "batch_size": 32,
    "world_size": 1,
    "global_batch_size": 32,
    "learning_rate": 0.001,
    "trainable_parameters": {"trainable": 721409, "frozen": 0, "total": 721409},
    "hard_negatives": None,
    "caption_words": None,
    "word_loss_weight": 0.0,
    "zero_shot_accuracy": {"colour": 98.64864864864865},
    "mode": "demo",
}
CAPTION_SUMMARY = {
    "cider": 2.0112469982439642,
    "bleu4": 0.46022773954584695,
    "baseline": {"cider": 0.20317716879908623, "caption": "小的白色三角形"},
    "attribute_scores": {
        "single_object": {"colour": {"precision": 98.64864864864865, "coverage": 100.0}},
        "hallucination_rate": 43.44569288389513,
        "n_images": 267,
    },
    "true_captions": {"cider": 2.5413, "attribute_scores": {"hallucination_rate": 0.0}},
    "empty_captions": 2,
    "decoding": {"num_beams": 4, "preset": "beam"},
    "comparison": [{"mapping": "mlp", "CIDEr": 2.0}],
    "steps": 15,
    "batch_size": 8,
}


@pytest.fixture
def outputs(tmp_path) -> Path:
    """outputs/ with two good runs, one with unreadable JSON, one without trainings, and decoys to ignore."""
    out = tmp_path / "outputs"
    alpha = out / "alpha"
    write_json(alpha / "run.json", {"run": "alpha"})
    write_training(
        alpha / "train_clip", CLIP_TRAIN, CLIP_EVAL, batch=32, stage="train_clip", summary=CLIP_SUMMARY
    )
    # the job's settings beside the checkpoints: not read (the summary records what the chance needs)
    write_json(
        alpha / "train_clip" / "checkpoints" / "settings.json", {"hard_negatives": True, "batch_size": 4}
    )
    # an intermediate checkpoint's state: never a training of its own
    write_training(alpha / "train_clip" / "checkpoints" / "checkpoint-20", [(10, 99.0), (20, 99.0)])
    write_training(
        alpha / "train_clipcap", MLP_TRAIN, MLP_EVAL, batch=8, stage="train_clipcap",
        summary={**CAPTION_SUMMARY, "mapping": "mlp", "trainable_parameters": {"total": 1120512}},
    )  # fmt: skip
    write_training(
        alpha / "train_clipcap" / "mappings" / "transformer", TRANSFORMER_TRAIN, batch=8, stage="train_clipcap",
        summary={**CAPTION_SUMMARY, "mapping": "transformer", "cider": 1.9467180875188632},
    )  # fmt: skip
    write_json(alpha / "processdata_03" / "summary.json", {"train_images": 39})
    beta = out / "beta"
    write_training(
        beta / "train_encoder_decoder", CAPTIONER_TRAIN, CAPTIONER_EVAL, batch=16,
        stage="train_encoder_decoder", summary={**CAPTION_SUMMARY, "decoder": "bert"},
    )  # fmt: skip
    broken = out / "broken" / "train_clip"
    broken.mkdir(parents=True)
    (broken / "trainer_state.json").write_text('{"log_history": [{"loss": 1.0, "step": 1}', encoding="utf-8")
    write_json(out / "empty" / "processdata_01" / "summary.json", {"rows": 3})
    (out / "README.md").write_text("not a run", encoding="utf-8")
    (out / ".alpha.tmp-1-x").mkdir()  # a temporary of an atomic write
    return out


def config(outputs: Path, runs: str = "", output_dir: Path | None = None, **kwargs) -> al.AnalyzeLossConfig:
    run_dir = outputs / "cmp"
    return al.AnalyzeLossConfig(
        run_dir=str(run_dir), output_dir=str(output_dir or run_dir / "analyze_loss"), runs=runs, **kwargs
    )


def points(pairs, split):
    return [(step, split, loss) for step, loss in pairs]


def test_trainings_are_found_loaded_and_compared_and_bad_folders_are_named_with_their_reason(outputs):
    cfg = config(outputs, "alpha, beta,broken,empty,ghost,alpha/train_clip")
    folders, skipped = al.find_trainings(cfg)
    assert folders == [
        outputs / "alpha" / "train_clip",
        outputs / "alpha" / "train_clipcap",
        outputs / "alpha" / "train_clipcap" / "mappings" / "transformer",
        outputs / "beta" / "train_encoder_decoder",
        outputs / "broken" / "train_clip",
    ]  # alpha/train_clip, listed again, is kept once; its checkpoint's trainer_state.json is no training
    result = al.analyze_loss(cfg)

    labels = [t.label for t in result.trainings]
    assert labels == [
        "alpha/train_clip", "alpha/train_clipcap/mlp", "alpha/train_clipcap/transformer",
        "beta/train_encoder_decoder",
    ]  # fmt: skip
    assert [t.model_type for t in result.trainings] == [
        "contrastive", "ClipCap (mlp)", "ClipCap (transformer)", "captioner (bert)",
    ]  # fmt: skip
    clip, mlp, transformer, captioner = result.trainings
    curve = list(clip.curves[["step", "split", "loss"]].itertuples(index=False, name=None))
    assert sorted(curve) == sorted(points(CLIP_TRAIN, "train") + points(CLIP_EVAL, "eval"))
    assert clip.curves["epoch"].tolist() == pytest.approx([s * 0.1 for s, _, _ in curve])
    assert list(transformer.curves["loss"]) == [v for _, v in TRANSFORMER_TRAIN]
    assert (clip.final_train_loss, clip.final_eval_loss, clip.best_eval_loss) == (2.2, 2.4, 2.4)
    assert (transformer.final_eval_loss, captioner.final_eval_loss, captioner.steps) == (None, 3.25, 200)
    assert clip.steps == 40 and clip.epochs == pytest.approx(4.0) and clip.batch_size == 32

    # chance: the summary's ln(batch) for the contrastive training on both curves, none for captioners
    assert clip.chance.train == clip.chance.eval == pytest.approx(math.log(32))
    assert all(t.chance.train is None and t.chance.eval is None for t in (mlp, transformer, captioner))

    reasons = {s.folder: s.reason for s in result.skipped}
    assert reasons == {
        "ghost": "not found",
        "empty": "no trainer_state.json",
        "broken/train_clip": "trainer_state.json is not valid JSON",
    }
    assert str(outputs / "ghost") in next(s.detail for s in result.skipped if s.folder == "ghost")
    assert result.headline == (
        "Compared 4 trainings (1 contrastive, 3 captioning) from 2 runs; 3 folders skipped "
        "(1 not found, 1 no trainer_state.json, 1 trainer_state.json is not valid JSON)."
    )

    out = Path(cfg.output_dir)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["headline"] == result.headline
    assert (summary["n_trainings"], summary["n_runs"], summary["n_skipped"]) == (4, 2, 3)
    first = summary["trainings"][0]
    assert first["label"] == "alpha/train_clip" and first["run"] == "alpha" and first["stage"] == "train_clip"
    assert (first["final_train_loss"], first["final_eval_loss"], first["steps"]) == (2.2, 2.4, 40)
    assert first["chance"]["train"] == pytest.approx(math.log(32))
    assert summary["trainings"][2]["final_eval_loss"] is None
    assert {s["folder"]: s["reason"] for s in summary["skipped"]} == reasons

    losses = pd.read_csv(out / "losses.csv")
    assert list(losses.columns) == ["label", "run", "stage", "step", "epoch", "split", "loss"]
    assert len(losses) == len(CLIP_TRAIN + CLIP_EVAL + MLP_TRAIN + MLP_EVAL + TRANSFORMER_TRAIN) + 3
    mine = losses[losses["label"] == "beta/train_encoder_decoder"]
    assert list(zip(mine["step"], mine["split"], mine["loss"])) == points(CAPTIONER_TRAIN, "train") + points(
        CAPTIONER_EVAL, "eval"
    )
    assert set(losses.loc[losses["label"] == "alpha/train_clipcap/mlp", "stage"]) == {"train_clipcap"}

    metrics = pd.read_csv(out / "metrics.csv").set_index("metric")
    assert metrics.loc["cider", "alpha/train_clipcap/transformer"] == pytest.approx(1.9467180875188632)
    assert metrics.loc["i2t_r1", "alpha/train_clip"] == pytest.approx(77.90262172284645)
    assert math.isnan(metrics.loc["i2t_r1", "beta/train_encoder_decoder"])
    names = metrics["name"]
    assert (
        names["attribute_scores.single_object.colour.precision"]
        == "attributes, single-object, colour: precision"
    )
    assert names["attribute_scores.hallucination_rate"] == "attributes: hallucination"
    assert names["true_captions.cider"] == "true captions: CIDEr"
    assert (
        names["true_captions.attribute_scores.hallucination_rate"]
        == "true captions, attributes: hallucination"
    )
    assert (
        names["empty_captions"] == "empty captions"
        and names["attribute_scores.n_images"] == "attributes: images"
    )
    # strings, booleans, settings and lists are not metrics
    assert not {"headline", "mode", "baseline.caption", "decoding.num_beams", "comparison"} & set(
        metrics.index
    )

    assert {p.name for p in (out / "figures").glob("*.png")} == {"loss_vs_step.png", "loss_vs_epoch.png"}
    assert json.loads((out / "stage.json").read_text())["stage"] == "analyze_loss"


def test_default_compares_every_run_folder_and_relative_paths_resolve_from_the_working_directory(
    outputs, tmp_path, monkeypatch
):
    folders, skipped = al.find_trainings(config(outputs))  # "": every visible folder under outputs/, by name
    assert [f.relative_to(outputs).parts[0] for f in folders] == ["alpha"] * 3 + ["beta", "broken"]
    assert [(s.folder, s.reason) for s in skipped] == [("empty", "no trainer_state.json")]

    monkeypatch.chdir(tmp_path)  # not under outputs/: relative to the working directory (the notebook's)
    folders, skipped = al.find_trainings(config(outputs, "outputs/beta/train_encoder_decoder,README.md"))
    assert folders == [outputs / "beta" / "train_encoder_decoder"]
    assert [(s.folder, s.reason) for s in skipped] == [("README.md", "not a folder")]


def test_input_files_are_exactly_what_the_stage_reads_and_never_its_own_output(outputs):
    own = outputs / "alpha" / "analyze_loss"
    write_training(own, [(1, 1.0)])  # even a trainer_state.json in the stage's own output is not an input
    cfg = config(outputs, "alpha,beta,ghost", output_dir=own)
    alpha, beta = outputs / "alpha", outputs / "beta"
    expected = sorted(
        [
            *(alpha / "train_clip" / n for n in ("trainer_state.json", "summary.json", "stage.json")),
            *(alpha / "train_clipcap" / n for n in ("trainer_state.json", "summary.json", "stage.json")),
            *(
                alpha / "train_clipcap" / "mappings" / "transformer" / n
                for n in ("trainer_state.json", "summary.json", "stage.json")
            ),
            *(
                beta / "train_encoder_decoder" / n
                for n in ("trainer_state.json", "summary.json", "stage.json")
            ),
        ]
    )
    files = al.input_files(cfg)
    assert files == expected
    assert al.input_files(cfg) == files  # deterministic

    # everything analyze_loss opens is in the list (spy on the one JSON reader it uses)
    opened = []
    original = al.read_json
    al.read_json = lambda path: opened.append(Path(path)) or original(path)
    try:
        al.analyze_loss(cfg)
    finally:
        al.read_json = original
    assert sorted(set(opened)) == files
    assert not any(own in f.parents for f in files)

    # the runner's form: the notebook's parameters as a dict; relative entries from the notebooks folder
    parameters = {**cfg.to_dict(), "runs": "alpha,beta,ghost", "smoothing": 0}
    assert al.input_files_of_parameters(parameters) == files
    assert al.input_files_of_parameters({**parameters, "runs": "beta"}) == expected[-3:]
    relative = {"run_dir": "../outputs/cmp", "output_dir": "../outputs/cmp/analyze_loss", "runs": "beta"}
    assert al.input_files_of_parameters(relative, working_dir=outputs.parent / "notebooks") == expected[-3:]


def test_nothing_to_compare_is_a_sentence_not_an_error(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    result = al.analyze_loss(config(outputs))
    assert result.headline == f"Found no training to compare: {outputs} holds no run folder."
    assert result.trainings == [] and result.figures == {}
    out = outputs / "cmp" / "analyze_loss"
    assert json.loads((out / "summary.json").read_text())["n_trainings"] == 0
    assert pd.read_csv(out / "losses.csv").empty and not (out / "figures" / "loss_vs_step.png").exists()

    result = al.analyze_loss(config(outputs, "nowhere"))
    assert result.headline == "Found no training to compare; 1 folder skipped (not found)."
    assert result.trainings_table().empty and list(result.skipped_table()["folder"]) == ["nowhere"]


def test_malformed_states_are_skipped_and_a_bad_summary_only_loses_its_metrics(tmp_path):
    run = tmp_path / "outputs" / "run"
    write_json(run / "a" / "trainer_state.json", {"global_step": 3})
    write_json(
        run / "b" / "trainer_state.json", {"log_history": [{"step": 1, "loss": "nan?"}, "x", {"loss": 1}]}
    )
    write_json(run / "c" / "trainer_state.json", [1, 2])
    write_training(run / "train_clip", CLIP_TRAIN, batch=4)
    (run / "train_clip" / "summary.json").write_text("{", encoding="utf-8")
    assert al.load_training(run / "a") == al.Skipped(
        "run/a", "malformed trainer_state.json", f"{run / 'a' / 'trainer_state.json'}: no log_history list"
    )
    assert al.load_training(run / "b").reason == "no loss logged"
    assert al.load_training(run / "c").reason == "malformed trainer_state.json"
    training = al.load_training(run / "train_clip")
    assert training.summary is None and "summary.json unreadable" in training.notes[0]
    assert training.batch_size == 4  # from trainer_state.json
    assert training.chance.eval is None and training.chance.note.endswith("are not recorded.")
    assert al.metrics_table([training]).empty


def test_chance_levels_are_read_from_the_summary():
    one = {"chance_loss": math.log(64), "chance_train_loss": math.log(64), "batch_size": 64, "world_size": 1,
           "negatives_per_caption": 0, "word_loss_weight": 0.0}  # fmt: skip
    chance = al.chance_levels("train_clip", one)
    assert chance.train == chance.eval == pytest.approx(math.log(64))
    assert chance.note == "chance ln 64 = 4.16."
    # hard negatives and the caption-word loss (the demo profile's train_clip)
    eval_chance = (math.log(64) + math.log(256)) / 2
    demo = {**one, "chance_loss": eval_chance, "chance_train_loss": eval_chance, "negatives_per_caption": 3,
            "word_loss_weight": 5.0, "caption_words": {"n_words": 25}}  # fmt: skip
    chance = al.chance_levels("train_clip", demo)
    assert chance.train is None  # the training loss adds 5 x the caption-word BCE: no chance for the sum
    assert chance.eval == pytest.approx(eval_chance)
    assert chance.note.startswith(
        "chance (ln 64 + ln 256) / 2 = 4.85 (image→text also scores 3 hard negatives"
    )
    assert "eval loss only" in chance.note and "25 words" in chance.note and chance.train_extra
    # four processes: training scores their gathered batches, evaluation each its own
    four = {**one, "world_size": 4, "chance_train_loss": math.log(256)}
    chance = al.chance_levels("train_clip", four)
    assert (chance.eval, chance.train) == (pytest.approx(math.log(64)), pytest.approx(math.log(256)))
    assert chance.note == (
        "chance ln 64 = 4.16 for the eval loss; training scores the gathered batches of 4 processes: 5.55."
    )
    # a summary without the keys: no line, and the note says what is missing
    chance = al.chance_levels("train_clip", {k: v for k, v in one.items() if k != "world_size"})
    assert (chance.train, chance.eval) == (None, None)
    assert chance.note == "no chance line: the number of processes is not recorded."
    assert al.chance_levels("train_clip", None).note.endswith("are not recorded.")
    for kind in ("train_encoder_decoder", "train_clipcap", "my_stage"):
        chance = al.chance_levels(kind, one)
        assert (chance.train, chance.eval) == (None, None) and chance.note.startswith("no chance line")


def naive_ema(values, weight):
    """Each point: the mean of the finite points so far weighted weight^(age), by a plain double loop."""
    out = []
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out.append(v)
            continue
        history = [u for u in values[: i + 1] if math.isfinite(u)]
        weights = [weight ** (len(history) - 1 - j) for j in range(len(history))]
        out.append(sum(w * u for w, u in zip(weights, history)) / sum(weights))
    return out


def test_smoothing_is_tensorboards_debiased_ema():
    values = [4.0, 3.0, float("nan"), 2.5, 2.0, 2.2, 1.0]
    for weight in (0.3, 0.6, 0.9, 0.99):
        assert ema_smooth(values, weight) == pytest.approx(naive_ema(values, weight), nan_ok=True)
    assert ema_smooth([2.0] * 5, 0.9).tolist() == pytest.approx([2.0] * 5)  # not pulled towards 0
    assert ema_smooth(values, 0.6)[0] == 4.0  # the first point is the first value
    assert ema_smooth(values, 0.0) == pytest.approx(values, nan_ok=True)
    with pytest.raises(ValueError):
        ema_smooth(values, 1.0)
    with pytest.raises(ValueError, match="smoothing"):
        al.analyze_loss(al.AnalyzeLossConfig(smoothing=1.5))


def test_tables_are_formatted_for_reading(outputs):
    result = al.analyze_loss(config(outputs, "alpha,beta", smoothing=0.6, log_scale=True))
    html = "".join(table.to_html() for table in result.metrics_tables().values())
    assert list(result.metrics_tables()) == ["Contrastive trainings", "Captioners"]
    assert "77.9" in html and "77.90" not in html  # percentages: one decimal
    assert "1,120,512" in html and "1,267" in html and "721,409" in html  # counts: thousands separators
    assert "2.011" in html and "1.0e-03" in html  # caption metrics three decimals, learning rates e-notation
    assert "image→text R@1" in html and "constant caption: CIDEr" in html
    assert (
        ">43.4 %<" in html and ">2.541<" in html
    )  # hallucination one decimal, the true captions' CIDEr three
    values = result.metrics().drop(columns="name").to_numpy().ravel()
    assert all(type(v) in (int, float) for v in values)  # numbers only: no dict or list dumps
    trainings = result.trainings_table()
    assert list(trainings.index) == [t.label for t in result.trainings]
    assert trainings.loc["alpha/train_clip", "steps"] == 40 and str(trainings["steps"].dtype) == "Int64"
    assert "notes" not in trainings  # no training has a note
    assert "ln 32 = 3.47" in result.chance_notes()
    assert set(result.figures) == {"step", "epoch"}
    legend = [t.get_text() for ax in result.figures["step"].axes for t in ax.get_legend().get_texts()]
    assert "alpha/train_clip, training (smoothed)" in legend and "alpha/train_clip: chance 3.47" in legend


def test_command_line_writes_into_the_run_folder(outputs, capsys):
    assert al.main(["--run-dir", str(outputs / "alpha"), "--runs", "beta"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["headline"] == "Compared 1 training (1 captioning) from 1 run."
    assert (outputs / "alpha" / "analyze_loss" / "summary.json").is_file()


def test_the_stage_does_not_import_torch():
    code = "import sys, nbutils.analyze_loss; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_a_real_train_clip_is_read_with_its_chance_level(prepared_run, tmp_path):
    """A tiny train_clip through the Trainer, with hard negatives and the caption-word loss (as the demo)."""
    from nbutils.training.clip import TrainClipConfig, train_clip

    out = tmp_path / "outputs" / "real" / "train_clip"
    run = train_clip(
        TrainClipConfig(
            run_dir=str(prepared_run["run_dir"]), output_dir=str(out), batch_size=8, max_steps=2,
            logging_steps=1, projection_dim=16, vision_width=32, resume="", hard_negatives=True,
            hard_negative_similarity=0.6, negatives_per_caption=2, word_loss_weight=1.0,
        )
    )  # fmt: skip
    result = al.analyze_loss(
        al.AnalyzeLossConfig(run_dir=str(out.parent), output_dir=str(tmp_path / "cmp"), runs="real")
    )
    (training,) = result.trainings
    logged = [(h["step"], h["loss"]) for h in run.log_history if "loss" in h]
    evaluated = [(h["step"], h["eval_loss"]) for h in run.log_history if "eval_loss" in h]
    assert len(logged) == 2 and evaluated
    got = training.curves
    assert list(zip(got.loc[got.split == "train", "step"], got.loc[got.split == "train", "loss"])) == logged
    assert list(zip(got.loc[got.split == "eval", "step"], got.loc[got.split == "eval", "loss"])) == evaluated
    assert training.chance.train is None  # the word loss is in the training loss
    assert training.chance.eval == pytest.approx((math.log(8) + math.log(8 * 3)) / 2)
    assert training.chance.eval == pytest.approx(run.summary["chance_loss"])
    assert training.batch_size == 8 and training.steps == 2 and training.model_type == "contrastive"
    assert np.isfinite(training.final_train_loss) and result.headline.startswith("Compared 1 training")
