"""The analyze_loss stage: the loss curves and final metrics of any number of trainings, side by side.

    python -m nbutils.analyze_loss --run-dir outputs/demo                      # every run under outputs/
    python -m nbutils.analyze_loss --run-dir outputs/demo --runs demo,try96 --smoothing 0.6
    python -m nbutils.analyze_loss --run-dir outputs/demo --runs /elsewhere/outputs/big/train_clip

1. Where the trainings are (`find_trainings`): `runs` lists run folders (`outputs/<run>/`) or training folders
   (a folder holding trainer_state.json), absolute or relative to the outputs folder (the parent of run_dir) or
   to the working directory (in a notebook: the notebooks folder); "" takes every run folder under the outputs
   folder. A run folder's trainings are its stage folders with a trainer_state.json (`train_clip/`,
   `train_clipcap/`, ...) and their `mappings/<type>/` folders (train_clipcap's other mapping types). The
   Trainer's intermediate `checkpoints/checkpoint-*/trainer_state.json` are not trainings, and nothing under this
   stage's own output_dir is read. `input_files(config)` lists exactly the files the stage reads, without parsing
   them (`input_files_of_parameters(dict)`: the same from the runner's parameters, for its fingerprints).
2. Each training (`load_training`): its log_history's training (`loss`) and eval (`eval_loss`) points with their
   step and epoch; its stage (stage.json, else the folder's name) and model type; its summary.json. A folder that
   is missing, not a folder, without any trainer_state.json, or with an unreadable or malformed one is listed in
   `skipped` with the reason, never an error.
3. Chance levels (`chance_levels`), as train_clip's summary records them: the loss of a model that scores every
   candidate alike, on one process's batch (the eval curve) and on the batches gathered from every process (the
   training curve). The caption-word loss (`word_loss_weight`) is added to the training loss only, and has no
   chance level: the line then marks the eval loss alone. Captioners get none (see `chance_levels`).
4. Outputs in output_dir: `summary.json` (`headline`: one sentence; `trainings`, `skipped`), `losses.csv` (label,
   run, stage, step, epoch, split, loss), `metrics.csv` (the summaries' numbers, one column per training, named
   and formatted by `nbutils.summaries`), `figures/loss_vs_step.png` and `figures/loss_vs_epoch.png` (one panel
   per kind of loss, one colour per training, eval dashed, chance dotted), `stage.json`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from . import pipeline, stages, summaries
from .config import StageConfig, command_line_main, param
from .files import read_json, write_json, write_table
from .reporting import figures as figure_helpers
from .runner.profiles import NOTEBOOKS_DIR

TRAINER_STATE = "trainer_state.json"
SUMMARY = "summary.json"
TRAINING_FILES = (TRAINER_STATE, SUMMARY, stages.STAGE_FILE)  # what is read of each training
FIGURES = ("step", "epoch")  # figures/loss_vs_<x>.png

# Which loss a stage logs: trainings of one family share a panel (the same quantity on the same scale).
FAMILIES = {stage.name: stage.loss for stage in pipeline.STAGES if stage.loss}
FAMILY_ORDER = ("contrastive", "captioning", "other")
PANEL_LABELS = {
    "contrastive": "contrastive loss (InfoNCE)",
    "captioning": "caption cross-entropy per token",
    "other": "loss",
}
FAMILY_TITLES = {
    "contrastive": "Contrastive trainings",
    "captioning": "Captioners",
    "other": "Other trainings",
}


@dataclass(frozen=True)
class AnalyzeLossConfig(StageConfig):
    """analyze_loss's parameters (the notebook's `parameters` cell and the command line)."""

    stage = "analyze_loss"
    runs: str = param(
        "",
        '"" compares every run folder under the outputs folder (the parent of run_dir); else comma-separated '
        "run folders or training folders, absolute or relative to the outputs folder",
    )
    smoothing: float = param(
        0.0, "EMA weight of the training-loss curves, as TensorBoard's (debiased; 0: off, 0.6-0.9: smoother)"
    )
    log_scale: bool = param(False, "plot the losses on a log scale")


# ----------------------------------------------------------------------------- finding the trainings


@dataclass(frozen=True)
class Skipped:
    """A folder that was not compared: `folder` as given or found, a short `reason` and its `detail`."""

    folder: str
    reason: str
    detail: str


def outputs_folder(config: AnalyzeLossConfig) -> Path:
    """The folder holding the run folders: the parent of run_dir."""
    return Path(config.run_dir).resolve().parent


def find_trainings(
    config: AnalyzeLossConfig, working_dir: str | os.PathLike | None = None
) -> tuple[list[Path], list[Skipped]]:
    """(training folders, skipped folders) for `config.runs`, in the order given ("" : every run, by name).

    A relative entry is looked up in the outputs folder, then in `working_dir` (default: the current one).
    Only lists folders and checks that files exist: nothing is parsed. A training reached twice (a run and
    one of its training folders both listed) is kept once.
    """
    outputs, own = outputs_folder(config), Path(config.output_dir).resolve()
    working_dir = Path(working_dir) if working_dir is not None else Path.cwd()
    skipped: list[Skipped] = []
    folders: list[tuple[str, Path]] = []
    if config.runs.strip():
        for name in dict.fromkeys(n.strip() for n in config.runs.split(",") if n.strip()):
            found = _resolve(name, outputs, working_dir)
            if found is None:
                places = (
                    str(Path(name))
                    if Path(name).expanduser().is_absolute()
                    else f"{outputs / name} or {working_dir / name}"
                )
                skipped.append(Skipped(name, "not found", f"no such folder: {places}"))
            else:
                folders.append((name, found))
    elif outputs.is_dir():
        folders = [(p.name, p.resolve()) for p in sorted(outputs.iterdir()) if _visible_folder(p)]

    trainings: list[Path] = []
    for name, folder in folders:
        if not folder.is_dir():
            skipped.append(Skipped(name, "not a folder", f"{folder} is a file, not a run or training folder"))
            continue
        if _inside(folder, own):
            skipped.append(Skipped(name, "this stage's own output", f"{folder} is where analyze_loss writes"))
            continue
        try:
            found = _training_folders(folder, own)
        except OSError as e:
            skipped.append(Skipped(name, "unreadable folder", f"{folder}: {e}"))
            continue
        if not found:
            skipped.append(
                Skipped(
                    name,
                    f"no {TRAINER_STATE}",
                    f"{folder} holds no {TRAINER_STATE}: not in the folder, its stage folders or their "
                    "mappings folders (no training ran there)",
                )
            )
        trainings += [f for f in found if f not in trainings]
    return trainings, skipped


def input_files(config: AnalyzeLossConfig, working_dir: str | os.PathLike | None = None) -> list[Path]:
    """Exactly the files `analyze_loss(config)` reads, sorted: each training's trainer_state.json, summary.json
    and stage.json where they exist. Cheap (a few directory listings, no parsing) and never under the stage's
    own output_dir; for deciding whether the stage must run again.
    `working_dir`: where relative `runs` entries outside the outputs folder are looked up (`find_trainings`)."""
    trainings, _ = find_trainings(config, working_dir)
    own = Path(config.output_dir).resolve()
    files = {folder / name for folder in trainings for name in TRAINING_FILES if (folder / name).is_file()}
    return sorted(f for f in files if not _inside(f, own))


def run_folder(training_folder: Path) -> Path:
    """The run folder a training folder belongs to (`<run>/<stage>` or `<run>/<stage>/mappings/<type>`)."""
    training_folder = Path(training_folder)
    if training_folder.parent.name == "mappings":
        return training_folder.parent.parent.parent
    return training_folder.parent


def input_files_of_parameters(
    parameters: Mapping, working_dir: str | os.PathLike | None = None
) -> list[Path]:
    """`input_files` for the notebook's parameters as the runner injects them (a dict: names that are no field
    are ignored, missing ones take their default). Relative `runs` entries outside the outputs folder are looked
    up from `working_dir`, by default the notebooks folder, where the runner's kernels run (and so are relative
    run_dir and output_dir)."""
    working_dir = Path(NOTEBOOKS_DIR if working_dir is None else working_dir)
    names = {f.name for f in dataclasses.fields(AnalyzeLossConfig)}
    values = {k: v for k, v in parameters.items() if k in names}
    for key in (
        "run_dir",
        "output_dir",
    ):  # the runner injects absolute paths; the notebook's defaults are not
        if isinstance(values.get(key), str):
            values[key] = str(working_dir / Path(values[key]).expanduser())
    return input_files(AnalyzeLossConfig(**values), working_dir)


def _resolve(name: str, outputs: Path, working_dir: Path) -> Path | None:
    path = Path(name).expanduser()
    if path.is_absolute():
        return path.resolve() if path.exists() else None
    for base in (outputs, working_dir):
        if (base / path).exists():
            return (base / path).resolve()
    return None


def _visible_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _stage_order(folder: Path) -> tuple:
    order = pipeline.NAMES
    return (order.index(folder.name) if folder.name in order else len(order), folder.name)


def _training_folders(folder: Path, own: Path) -> list[Path]:
    """The trainings in a training folder or a run folder: folders with a trainer_state.json, each stage folder
    before its mappings/<type>/ folders, stages in pipeline order."""
    if (folder / TRAINER_STATE).is_file():
        stage_dirs = [folder]
    else:
        stage_dirs = sorted((p for p in folder.iterdir() if _visible_folder(p)), key=_stage_order)
    found = []
    for stage_dir in stage_dirs:
        if _inside(stage_dir, own):
            continue
        if (stage_dir / TRAINER_STATE).is_file():
            found.append(stage_dir)
        mappings = stage_dir / "mappings"
        if mappings.is_dir():
            found += [
                m
                for m in sorted(mappings.iterdir())
                if _visible_folder(m) and (m / TRAINER_STATE).is_file() and not _inside(m, own)
            ]
    return found


# ----------------------------------------------------------------------------- one training


@dataclass(frozen=True)
class Chance:
    """Chance-level loss of the training curve and of the eval curve (None: none defined), and why.

    `train_extra`: what the logged training loss adds to the loss its panel shows ("" when nothing), e.g.
    "+ 5 × caption-word loss".
    """

    train: float | None
    eval: float | None
    note: str
    train_extra: str = ""


@dataclass
class Training:
    """One training's curves and what the comparison needs about it."""

    label: str  # "<run>/<stage folder>[/<mapping>]"
    run: str
    stage: str  # the stage folder's name (the label's); `kind` is the stage that wrote it
    kind: str  # train_clip, train_encoder_decoder, train_clipcap, or the folder's name when unknown
    mapping: str | None
    model_type: str
    family: str  # contrastive, captioning or other: which panel
    folder: Path
    curves: pd.DataFrame  # step, epoch, split ("train" / "eval"), loss
    steps: int | None
    epochs: float | None
    batch_size: int | None
    chance: Chance
    summary: dict | None
    notes: list[str] = field(default_factory=list)

    def _losses(self, split: str) -> np.ndarray:
        values = self.curves.loc[self.curves["split"] == split, "loss"].to_numpy(float)
        return values[np.isfinite(values)]

    @property
    def final_train_loss(self) -> float | None:
        values = self._losses("train")
        return float(values[-1]) if len(values) else None

    @property
    def final_eval_loss(self) -> float | None:
        values = self._losses("eval")
        return float(values[-1]) if len(values) else None

    @property
    def best_eval_loss(self) -> float | None:
        values = self._losses("eval")
        return float(values.min()) if len(values) else None

    def record(self) -> dict:
        """The training in summary.json."""
        return {
            "label": self.label,
            "run": self.run,
            "stage": self.stage,
            "mapping": self.mapping,
            "model_type": self.model_type,
            "folder": str(self.folder),
            "steps": self.steps,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "final_train_loss": self.final_train_loss,
            "final_eval_loss": self.final_eval_loss,
            "best_eval_loss": self.best_eval_loss,
            "chance": {"train": self.chance.train, "eval": self.chance.eval, "note": self.chance.note},
            "notes": list(self.notes),
        }


def load_training(folder: str | Path) -> Training | Skipped:
    """Read one training folder; a `Skipped` (naming the folder and the reason) when it cannot be compared."""
    folder = Path(folder)
    in_mappings = folder.parent.name == "mappings"
    stage_dir = folder.parent.parent if in_mappings else folder
    run = stage_dir.parent.name
    name = f"{run}/{stage_dir.name}" + (f"/{folder.name}" if in_mappings else "")
    path = folder / TRAINER_STATE
    try:
        state = read_json(path)
    except (OSError, UnicodeDecodeError) as e:
        return Skipped(name, f"unreadable {TRAINER_STATE}", f"{path}: {e}")
    except ValueError as e:
        return Skipped(name, f"{TRAINER_STATE} is not valid JSON", f"{path}: {e}")
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        return Skipped(name, f"malformed {TRAINER_STATE}", f"{path}: no log_history list")
    curves = loss_curves(state["log_history"])
    if curves.empty:
        return Skipped(
            name, "no loss logged", f"{path}: no log_history entry has a numeric step with loss or eval_loss"
        )

    notes: list[str] = []
    summary = _optional_json(folder / SUMMARY, notes)
    manifest = _optional_json(folder / stages.STAGE_FILE, notes)
    kind = manifest.get("stage") if manifest and isinstance(manifest.get("stage"), str) else stage_dir.name
    family = FAMILIES.get(kind, "other")
    mapping = folder.name if in_mappings else None
    if mapping is None and kind == "train_clipcap" and summary and isinstance(summary.get("mapping"), str):
        mapping = summary["mapping"]
    label = f"{run}/{stage_dir.name}" + (f"/{mapping}" if mapping else "")

    batch = state.get("train_batch_size")
    if not _is_int(batch) and summary:
        batch = summary.get("batch_size")
    batch = int(batch) if _is_int(batch) and batch > 0 else None
    steps = state.get("global_step")
    steps = int(steps) if _is_int(steps) else int(curves["step"].max())
    epochs = state.get("epoch")
    epochs = float(epochs) if _is_number(epochs) else None
    return Training(
        label=label,
        run=run,
        stage=stage_dir.name,
        kind=kind,
        mapping=mapping,
        model_type=model_type(kind, summary, mapping),
        family=family,
        folder=folder,
        curves=curves,
        steps=steps,
        epochs=epochs,
        batch_size=batch,
        chance=chance_levels(kind, summary),
        summary=summary,
        notes=notes,
    )


def loss_curves(log_history: list) -> pd.DataFrame:
    """A Trainer's log_history as a long table: step, epoch, split ("train" for `loss`, "eval" for `eval_loss`),
    loss. Entries without a numeric step or loss are left out (the final `train_loss` average is not a point)."""
    rows = []
    for entry in log_history:
        if not isinstance(entry, dict) or not _is_number(entry.get("step")):
            continue
        epoch = float(entry["epoch"]) if _is_number(entry.get("epoch")) else math.nan
        for key, split in (("loss", "train"), ("eval_loss", "eval")):
            if _is_number(entry.get(key)):
                rows.append((int(entry["step"]), epoch, split, float(entry[key])))
    return pd.DataFrame(rows, columns=["step", "epoch", "split", "loss"])


def model_type(kind: str, summary: dict | None, mapping: str | None) -> str:
    """What a training trained, from its stage: contrastive, captioner (decoder), ClipCap (mapping)."""
    summary = summary or {}
    if kind == "train_clip":
        return "contrastive"
    if kind == "train_encoder_decoder":
        decoder = summary.get("decoder")
        return f"captioner ({decoder})" if isinstance(decoder, str) else "captioner"
    if kind == "train_clipcap":
        return f"ClipCap ({mapping})" if mapping else "ClipCap"
    return kind


# What train_clip's summary records for its chance levels (nbutils.training.clip), and what each is.
CHANCE_KEYS = {
    "chance_loss": "the chance loss",
    "chance_train_loss": "the chance of the training loss",
    "batch_size": "the batch size",
    "negatives_per_caption": "the number of hard negatives per caption",
    "world_size": "the number of processes",
    "word_loss_weight": "the caption-word loss weight",
}


def chance_levels(kind: str, summary: dict | None) -> Chance:
    """The chance level of each curve of a training, as its summary records it.

    Contrastive (train_clip): the symmetric InfoNCE loss of a model that scores every candidate alike, the mean
    over the two directions of ln(candidates): ln(batch) text->image, ln(batch x (1 + hard negatives per
    caption)) image->text. `chance_loss`, on one process's batch, marks the eval curve; `chance_train_loss`, on
    the batches gathered from `world_size` processes, the training curve. With `word_loss_weight` > 0 the logged
    training loss adds that many times the caption-word BCE (summed over the words), whose chance depends on how
    often each word occurs: no training line, the eval loss keeps its line. A summary without these keys
    (CHANCE_KEYS) gets no line. Identical captions masked out of a batch remove a few candidates, so the true
    chance is at most the recorded one.

    Captioners: none. A captioner that ignores the image still learns the captions' language, whose entropy
    depends on the data; ln(vocabulary) would only be the loss of a uniform guess, far above it.
    """
    summary = summary or {}
    family = FAMILIES.get(kind, "other")
    if family == "captioning":
        return Chance(
            None,
            None,
            "no chance line: a captioner that ignores the image still learns the captions' language.",
        )
    if family != "contrastive":
        return Chance(None, None, "no chance line: unknown kind of training.")
    missing = [what for key, what in CHANCE_KEYS.items() if not _is_number(summary.get(key))]
    if missing:
        what = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
        return Chance(
            None, None, f"no chance line: {what} {'is' if len(missing) == 1 else 'are'} not recorded."
        )

    batch, negatives, world = (int(summary[k]) for k in ("batch_size", "negatives_per_caption", "world_size"))
    eval_chance, train_chance = float(summary["chance_loss"]), float(summary["chance_train_loss"])
    weight = summary["word_loss_weight"]
    if negatives:
        text = (
            f"chance (ln {batch:,} + ln {batch * (1 + negatives):,}) / 2 = {eval_chance:.2f} (image→text also "
            f"scores {negatives} hard negative{'s' if negatives > 1 else ''} per caption)"
        )
    else:
        text = f"chance ln {batch:,} = {eval_chance:.2f}"
    if world > 1:
        text += (
            f" for the eval loss; training scores the gathered batches of {world} processes: "
            f"{train_chance:.2f}"
        )
    if weight:
        words = (summary.get("caption_words") or {}).get("n_words")
        over = f" over {words:,} words" if _is_int(words) else ""
        return Chance(
            None,
            eval_chance,
            f"{text}, marked on the eval loss only: the training loss adds {weight:g} × the caption-word loss "
            f"(binary cross-entropy summed{over}), which has no chance level.",
            f"+ {weight:g} × caption-word loss",
        )
    return Chance(train_chance, eval_chance, text + ".")


def _optional_json(path: Path, notes: list[str]) -> dict | None:
    """The JSON object in `path`, None when absent; a note when it cannot be read."""
    if not path.is_file():
        return None
    try:
        value = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        notes.append(f"{path.name} unreadable ({type(e).__name__}: {e}): not used")
        return None
    if not isinstance(value, dict):
        notes.append(f"{path.name} is not a JSON object: not used")
        return None
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- metrics of the summaries


def metrics_table(trainings: list[Training]) -> pd.DataFrame:
    """The trainings' summary metrics side by side: one row per metric (index: dotted key), `name` (readable),
    then one column per training label; values as the summaries hold them (ints stay ints), NaN where absent.
    The metrics are `summaries.flatten` of each summary, named by `summaries.display_name`."""
    flat = {t.label: summaries.flatten(t.summary) for t in trainings}
    names = {}
    for t in trainings:
        for key in flat[t.label]:
            names.setdefault(key, summaries.display_name(t.kind, key))
    table = pd.DataFrame(
        {label: [metrics.get(k, np.nan) for k in names] for label, metrics in flat.items()},
        index=pd.Index(list(names), name="metric"),
        dtype=object,
    )
    table.insert(0, "name", list(names.values()))
    return table


def format_metrics(table: pd.DataFrame):
    """A `metrics_table` (or some of its rows and columns) for reading: readable names as the index, each row
    formatted by its kind (`summaries.format_value`: "81.3 %", "2,810", "1.720", "5.0e-04"), "–" where a training
    has no such metric."""
    shown = table.drop(columns="name")
    names = list(table["name"])
    duplicated = {n for n in names if names.count(n) > 1}
    shown.index = [f"{n} [{k}]" if n in duplicated else n for n, k in zip(names, table.index)]
    styler = shown.style
    for row, key in zip(shown.index, table.index):
        # No stage: a key means the same in every training stage that writes it (train_clip's first).
        formatter = partial(summaries.format_value, None, key)
        styler = styler.format(formatter, subset=([row], list(shown.columns)), na_rep="–")
    return styler


# ----------------------------------------------------------------------------- the comparison


@dataclass
class LossComparison:
    """What `analyze_loss` returns to the notebook."""

    config: AnalyzeLossConfig
    trainings: list[Training]
    skipped: list[Skipped]
    headline: str
    summary: dict
    figures: dict = field(default_factory=dict)  # "step" / "epoch" -> matplotlib Figure (none without curves)

    def trainings_table(self) -> pd.DataFrame:
        """One row per training: model type, steps, epochs, batch, final and best losses, chance levels."""
        rows = [
            {
                "training": t.label,
                "model type": t.model_type,
                "steps": t.steps,
                "epochs": t.epochs,
                "batch": t.batch_size,
                "final training loss": t.final_train_loss,
                "final eval loss": t.final_eval_loss,
                "best eval loss": t.best_eval_loss,
                "chance, training": t.chance.train,
                "chance, eval": t.chance.eval,
                "notes": "; ".join(t.notes),
            }
            for t in self.trainings
        ]
        table = pd.DataFrame(rows, columns=list(TRAININGS_COLUMNS)).set_index("training")
        for column in ("steps", "batch"):
            table[column] = table[column].astype("Int64")
        for column in TRAININGS_COLUMNS[3:]:
            if column not in ("steps", "batch", "notes"):
                table[column] = table[column].astype(float)
        if not table["notes"].str.len().any():
            table = table.drop(columns="notes")
        return table

    def skipped_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [(s.folder, s.reason, s.detail) for s in self.skipped], columns=["folder", "reason", "detail"]
        )

    def chance_notes(self) -> str:
        """Markdown: how each training's chance level was found, or why it has none (one bullet per training)."""
        return "\n".join(f"- **{t.label}**: {t.chance.note}" for t in self.trainings)

    def losses(self) -> pd.DataFrame:
        """Every curve point in long format: label, run, stage, step, epoch, split, loss (losses.csv)."""
        parts = [t.curves.assign(label=t.label, run=t.run, stage=t.stage) for t in self.trainings]
        columns = ["label", "run", "stage", "step", "epoch", "split", "loss"]
        return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)

    def metrics(self) -> pd.DataFrame:
        """`metrics_table` of every training (metrics.csv)."""
        return metrics_table(self.trainings)

    def metrics_tables(self) -> dict:
        """{title: formatted metrics table} per family (contrastive trainings, captioners), each with the rows its
        trainings have."""
        out = {}
        for family in FAMILY_ORDER:
            members = [t for t in self.trainings if t.family == family]
            if members:
                out[FAMILY_TITLES[family]] = format_metrics(metrics_table(members))
        return out


TRAININGS_COLUMNS = (
    "training",
    "model type",
    "steps",
    "epochs",
    "batch",
    "final training loss",
    "final eval loss",
    "best eval loss",
    "chance, training",
    "chance, eval",
    "notes",
)


def headline(trainings: list[Training], skipped: list[Skipped], config: AnalyzeLossConfig) -> str:
    """One sentence: how many trainings of how many runs were compared, and how many folders were skipped why."""
    if trainings:
        runs = len({run_folder(t.folder) for t in trainings})
        families = Counter(t.family for t in trainings)
        kinds = ", ".join(f"{families[f]} {f}" for f in FAMILY_ORDER if families[f])
        text = f"Compared {_count(len(trainings), 'training')} ({kinds}) from {_count(runs, 'run')}"
    elif not skipped and not config.runs.strip():
        return f"Found no training to compare: {outputs_folder(config)} holds no run folder."
    else:
        text = "Found no training to compare"
    if skipped:
        reasons = Counter(s.reason for s in skipped)
        why = (
            skipped[0].reason
            if len(skipped) == 1
            else ", ".join(f"{n:,} {reason}" for reason, n in reasons.items())
        )
        text += f"; {_count(len(skipped), 'folder')} skipped ({why})"
    return text + "."


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def loss_figures(trainings: list[Training], smoothing: float = 0.0, log_scale: bool = False) -> dict:
    """{"step": figure, "epoch": figure}: every training's curves, one panel per family, shared axes."""
    if not trainings:
        return {}
    curves = pd.concat(
        [t.curves.assign(label=t.label, panel=PANEL_LABELS[t.family]) for t in trainings], ignore_index=True
    )
    chance = []
    for t in trainings:
        splits = set(t.curves["split"])
        levels = [(split, value) for split, value in (("train", t.chance.train), ("eval", t.chance.eval))]
        levels = [(split, value) for split, value in levels if value is not None and split in splits]
        if len(levels) == 2 and math.isclose(levels[0][1], levels[1][1]):
            levels = [("", levels[0][1])]
        for split, value in levels:
            which = f" ({'training' if split == 'train' else 'eval'} loss)" if split else ""
            chance.append(
                {
                    "panel": PANEL_LABELS[t.family],
                    "label": t.label,
                    "value": value,
                    "text": f"{t.label}: chance{which} {value:.2f}",
                }
            )
    out = {}
    for x in FIGURES:
        out[x] = figure_helpers.plot_loss_panels(
            curves,
            x=x,
            chance_lines=chance,
            smoothing=smoothing,
            log_scale=log_scale,
            notes={t.label: t.chance.train_extra for t in trainings if t.chance.train_extra},
            title=f"loss against {x}"
            + (f", training curves smoothed (EMA {smoothing:g}, debiased)" if smoothing else ""),
        )
    return out


def analyze_loss(config: AnalyzeLossConfig) -> LossComparison:
    """Compare the trainings `config.runs` names (see the module's docstring); write output_dir's files."""
    if not 0.0 <= config.smoothing < 1.0:
        raise ValueError(
            f"smoothing must be in [0, 1) (TensorBoard's EMA weight; 0: off), got {config.smoothing}"
        )
    output_dir = Path(config.output_dir)
    folders, skipped = find_trainings(config)
    trainings: list[Training] = []
    for folder in folders:
        loaded = load_training(folder)
        (trainings if isinstance(loaded, Training) else skipped).append(loaded)
    labels = Counter(t.label for t in trainings)
    seen: Counter = Counter()
    for t in trainings:  # two runs of the same name in different folders
        if labels[t.label] > 1:
            seen[t.label] += 1
            t.label = f"{t.label} ({seen[t.label]})"

    result = LossComparison(config, trainings, skipped, headline(trainings, skipped, config), {})
    result.summary = {
        "headline": result.headline,
        "n_trainings": len(trainings),
        "n_runs": len({run_folder(t.folder) for t in trainings}),
        "n_skipped": len(skipped),
        "smoothing": config.smoothing,
        "trainings": [t.record() for t in trainings],
        "skipped": [{"folder": s.folder, "reason": s.reason, "detail": s.detail} for s in skipped],
    }
    result.figures = loss_figures(trainings, config.smoothing, config.log_scale)

    output_dir.mkdir(parents=True, exist_ok=True)
    write_table(result.losses(), output_dir / "losses.csv")
    write_table(result.metrics().reset_index(), output_dir / "metrics.csv")
    for x in FIGURES:
        if x in result.figures:
            figure_helpers.save_figure(result.figures[x], output_dir, f"loss_vs_{x}")
        else:
            (output_dir / "figures" / f"loss_vs_{x}.png").unlink(missing_ok=True)
    write_json(output_dir / SUMMARY, _finite(result.summary))
    stages.write_stage(
        output_dir,
        "analyze_loss",
        {"summary": SUMMARY, "losses": "losses.csv", "metrics": "metrics.csv"},
    )
    return result


def _finite(obj):
    """`obj` with NaN and infinite floats as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(argv=None) -> int:
    """`python -m nbutils.analyze_loss`: every AnalyzeLossConfig field is an option."""
    return command_line_main(AnalyzeLossConfig, analyze_loss, "nbutils.analyze_loss", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
