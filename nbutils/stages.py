"""What each pipeline stage leaves for the next: typed hand-offs, one saver and one loader per stage.

    processdata_01         save_downloaded         load_downloaded(run_dir)         -> ImageTable
    processdata_02         save_validated          load_validated(run_dir)          -> ImageTable
    processdata_03         save_prepared           load_prepared(run_dir)           -> PreparedDataset
    train_clip             save_trained_clip       load_trained_clip(run_dir)       -> TrainedClip
    train_encoder_decoder  save_trained_captioner  load_trained_captioner(run_dir)  -> TrainedCaptioner
    train_clipcap          save_trained_clipcap    load_trained_clipcap(run_dir)    -> TrainedCaptioner

Which stage reads which is the stage table's business (nbutils/pipeline.py); this module holds the files.
Each stage folder `<run_dir>/<stage>/` gets a `stage.json` manifest, written last: a folder without it
is an unfinished stage and is never read. The manifest names the stage's files and the data's origin
(caption language, and the demo set's ground truth, which must survive the round trip over HTTP).
No notebook opens another stage's files by name: it calls the loader, which says which stage to run
when the files are missing. No torch at import time: stages 01 and 02 use this module.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from .data import splits
from .data.cache import ImageCache, open_image_cache, processor_mean_std
from .data.shards import ShardCache
from .errors import DataError
from .files import read_json, write_json, write_table

STAGE_FILE = "stage.json"
FORMAT_VERSION = 1
PREPARED_TABLES = ("train", "val", "test", "train_small", "test_small")


@dataclass(frozen=True)
class DataOrigin:
    """Where the captions came from: their language (None: not known), and the demo's objects.jsonl."""

    language: str | None = None
    ground_truth: str | None = None


def write_stage(
    stage_dir: str | os.PathLike, stage: str, files: dict[str, str], origin: DataOrigin | None = None, **extra
) -> Path:
    """Write `<stage_dir>/stage.json`: the stage's files (relative names), its data origin and `extra` fields."""
    manifest = {
        "stage": stage,
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "files": dict(files),
        "origin": asdict(origin) if origin else None,
        **extra,
    }
    return write_json(Path(stage_dir) / STAGE_FILE, manifest)


def read_stage(run_dir: str | os.PathLike, stage: str) -> tuple[Path, dict]:
    """(stage folder, manifest) of `stage` in `run_dir`; DataError naming the stage to run if it is not finished."""
    stage_dir = Path(run_dir) / stage
    path = stage_dir / STAGE_FILE
    if not path.is_file():
        raise missing_stage(run_dir, stage)
    manifest = read_json(path)
    if manifest.get("stage") != stage or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: written by another stage or version ({manifest.get('stage')!r}, "
            f"format_version {manifest.get('format_version')!r}); rerun {stage}"
        )
    missing = [name for name in manifest["files"].values() if not (stage_dir / name).exists()]
    if missing:
        raise DataError(
            f"{stage_dir}: {', '.join(missing)} missing although {STAGE_FILE} lists them; rerun {stage}"
        )
    return stage_dir, manifest


def missing_stage(
    run_dir: str | os.PathLike, stage: str | tuple[str, ...], parameter: str = "run_dir"
) -> DataError:
    """The error for a stage that has not finished in `run_dir`: which stage, where it looked, what to set.

    `stage` may be several stages, any of which would do. The message names the runs beside `run_dir` that have
    one, since pointing `parameter` at one of them is the usual fix in JupyterLab (the notebooks default to
    ../outputs/lab; `make demo` writes outputs/demo).
    """
    run_dir, wanted = Path(run_dir), (stage,) if isinstance(stage, str) else tuple(stage)
    either = " or ".join(wanted)
    if run_dir.is_dir():
        reason = f"has no finished {either} ({' / '.join(f'{s}/{STAGE_FILE}' for s in wanted)} missing)"
    else:
        reason = "does not exist"
    others = sorted(
        {p.parents[1].name for s in wanted for p in run_dir.parent.glob(f"*/{s}/{STAGE_FILE}")}
        - {run_dir.name}
    )
    hint = f" Runs beside it that have {either}: {', '.join(others)}." if others else ""
    notebooks = " or ".join(f"notebooks/{s}.ipynb" for s in wanted)
    return DataError(
        f"the run folder {run_dir} {reason}. Run {notebooks} with run_dir = {str(run_dir)!r} first, "
        f"or set {parameter} to a run folder that has it.{hint}"
    )


def _origin(manifest: dict) -> DataOrigin:
    return DataOrigin(**manifest["origin"]) if manifest.get("origin") else DataOrigin()


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# ----------------------------------------------------------------------------- processdata_01 and 02


@dataclass
class ImageTable:
    """Caption rows whose image is usable (image_path, text, ...), with the data's origin.

    processdata_01 leaves the rows whose image arrived (image_path, text, url, id); processdata_02 the
    rows whose image passed validation (image_path, text[, url]), paths absolute.
    """

    table: pd.DataFrame
    origin: DataOrigin
    stage_dir: Path


def save_downloaded(output_dir, table: pd.DataFrame, origin: DataOrigin) -> ImageTable:
    """Write processdata_01's table of downloaded rows and its manifest."""
    output_dir = Path(output_dir)
    write_table(table, output_dir / "downloaded.csv")
    write_stage(output_dir, "processdata_01", {"table": "downloaded.csv"}, origin)
    return ImageTable(table, origin, output_dir)


def save_validated(output_dir, table: pd.DataFrame, origin: DataOrigin) -> ImageTable:
    """Record processdata_02's outputs (`validate_images` wrote the tables) and the data's origin."""
    output_dir = Path(output_dir)
    write_stage(
        output_dir,
        "processdata_02",
        {"table": "clean.csv", "rejects": "rejects.csv", "checks": "checks.csv"},
        origin,
    )
    return ImageTable(table, origin, output_dir)


def load_downloaded(run_dir) -> ImageTable:
    return _load_image_table(run_dir, "processdata_01")


def load_validated(run_dir) -> ImageTable:
    return _load_image_table(run_dir, "processdata_02")


def _load_image_table(run_dir, stage: str) -> ImageTable:
    stage_dir, manifest = read_stage(run_dir, stage)
    return ImageTable(_read_csv(stage_dir / manifest["files"]["table"]), _origin(manifest), stage_dir)


# ----------------------------------------------------------------------------- processdata_03


@dataclass
class PreparedDataset:
    """processdata_03's result: image-level splits, the dropped rows, the image cache and its processor."""

    tables: dict[str, pd.DataFrame]
    dropped: pd.DataFrame
    cache: ImageCache | ShardCache  # uint8 memmap or JPEG shards (nbutils.data.cache.open_image_cache)
    image_processor: object
    name: str = ""
    origin: DataOrigin = field(default_factory=DataOrigin)

    @property
    def counts(self) -> pd.DataFrame:
        return splits.split_counts({s: self.tables[s] for s in splits.SPLITS})

    @property
    def language(self) -> str:
        """The captions' language: the origin's, else "zh" when the train captions hold CJK, else "en"."""
        if self.origin.language:
            return self.origin.language
        texts = self.tables["train"]["text"]
        return "zh" if texts.str.contains(r"[\u4e00-\u9fff]", regex=True).any() else "en"

    @property
    def mean_std(self):
        """The (mean, std) that the model's processor normalises with (pass to normalize_pixel_values)."""
        return processor_mean_std(self.image_processor)

    def dataset(self, split: str, sampling: str = "image", seed: int = 0, fixed_caption: bool = False):
        """The `ImageTextDataset` of `split` ("train", "val", "test", "train_small", "test_small")."""
        from .data.datasets import ImageTextDataset  # torch: only the training stages pay for it

        return ImageTextDataset(
            self.cache,
            self.tables[split],
            sampling=sampling,
            seed=seed,
            fixed_caption=fixed_caption,
            source=f"split {split!r} of {self.name}",
        )

    def summary(self) -> dict:
        out = {}
        for s in splits.SPLITS:
            out[f"{s}_images"] = int(self.tables[s]["image_path"].nunique())
            out[f"{s}_rows"] = int(len(self.tables[s]))
        out["dropped_rows"] = int(len(self.dropped))
        out["dropped_by_reason"] = {str(k): int(v) for k, v in self.dropped["reason"].value_counts().items()}
        out["cache_format"] = self.cache.cache_format  # "memmap-uint8" or "shards-jpeg"
        out["image_size"] = int(self.cache.geometry.height)
        out["cache_dir"] = str(self.cache.cache_dir)
        out["language"] = self.origin.language
        return out


def save_prepared(output_dir, prepared: PreparedDataset) -> PreparedDataset:
    """Write the splits, dropped rows and processor of `prepared`, then the manifest pointing at its cache."""
    output_dir = Path(output_dir)
    for name in PREPARED_TABLES:
        write_table(prepared.tables[name], output_dir / f"{name}.csv")
    write_table(prepared.dropped, output_dir / "dropped.csv")
    prepared.image_processor.save_pretrained(output_dir / "image_processor")
    files = {
        **{name: f"{name}.csv" for name in PREPARED_TABLES},
        "dropped": "dropped.csv",
        "image_processor": "image_processor",
    }
    write_stage(
        output_dir,
        "processdata_03",
        files,
        prepared.origin,
        name=prepared.name,
        cache_dir=str(Path(prepared.cache.cache_dir).resolve()),
        geometry=prepared.cache.geometry.to_dict(),
    )
    return prepared


def load_prepared(run_dir) -> PreparedDataset:
    """Reopen what processdata_03 wrote in `run_dir` (for the training notebooks)."""
    from .models.image_processors import load_image_processor

    stage_dir, manifest = read_stage(run_dir, "processdata_03")
    files = manifest["files"]
    tables = {name: _read_csv(stage_dir / files[name]) for name in PREPARED_TABLES}
    dropped = pd.read_csv(stage_dir / files["dropped"], dtype={"text": str}, keep_default_na=False)
    processor = load_image_processor(str(stage_dir / files["image_processor"]))
    return PreparedDataset(
        tables,
        dropped,
        open_image_cache(manifest["cache_dir"]),
        processor,
        manifest["name"],
        _origin(manifest),
    )


# ----------------------------------------------------------------------------- train_clip


@dataclass
class TrainedClip:
    """train_clip's result: the trained dual encoder (model, tokenizer, image processor) and its summary."""

    bundle: object
    summary: dict
    model_dir: Path


def save_trained_clip(output_dir, bundle, summary: dict) -> TrainedClip:
    """Save the model folder (save_pretrained with tokenizer and processor), summary.json and the manifest."""
    from .models.clip import save_clip

    output_dir = Path(output_dir)
    save_clip(bundle, output_dir / "model")
    write_json(output_dir / "summary.json", summary)
    write_stage(output_dir, "train_clip", {"model": "model", "summary": "summary.json"})
    return TrainedClip(bundle, summary, output_dir / "model")


def load_trained_clip(run_dir) -> TrainedClip:
    """Reload the dual encoder train_clip saved in `run_dir` (plain transformers can load the folder too)."""
    from .models.clip import load_clip_model

    stage_dir, manifest = read_stage(run_dir, "train_clip")
    model_dir = stage_dir / manifest["files"]["model"]
    return TrainedClip(
        load_clip_model(model_dir), read_json(stage_dir / manifest["files"]["summary"]), model_dir
    )


# ----------------------------------------------------------------------------- train_encoder_decoder


@dataclass
class TrainedCaptioner:
    """A captioning stage's result: the captioner (model, tokenizer, image processor), summary and predictions."""

    bundle: object
    summary: dict
    predictions: pd.DataFrame
    model_dir: Path


def save_trained_captioner(
    output_dir, bundle, summary: dict, predictions: pd.DataFrame, stage: str = "train_encoder_decoder"
) -> TrainedCaptioner:
    """Save the model folder (save_pretrained with tokenizer and processor), predictions.csv, summary.json, manifest."""
    from .models.encoder_decoder import save_encoder_decoder

    output_dir = Path(output_dir)
    save_encoder_decoder(bundle, output_dir / "model")
    write_table(predictions, output_dir / "predictions.csv")
    write_json(output_dir / "summary.json", summary)
    write_stage(
        output_dir, stage, {"model": "model", "summary": "summary.json", "predictions": "predictions.csv"}
    )
    return TrainedCaptioner(bundle, summary, predictions, output_dir / "model")


def load_trained_captioner(run_dir, stage: str = "train_encoder_decoder") -> TrainedCaptioner:
    """Reload the captioner a captioning stage saved in `run_dir` (plain transformers can load the folder too)."""
    from .models.encoder_decoder import load_saved_encoder_decoder

    return _load_captioning_stage(run_dir, stage, load_saved_encoder_decoder)


def _load_captioning_stage(run_dir, stage: str, load_model) -> TrainedCaptioner:
    stage_dir, manifest = read_stage(run_dir, stage)
    files = manifest["files"]
    model_dir = stage_dir / files["model"]
    return TrainedCaptioner(
        load_model(model_dir),
        read_json(stage_dir / files["summary"]),
        pd.read_csv(stage_dir / files["predictions"], keep_default_na=False),
        model_dir,
    )


# ----------------------------------------------------------------------------- train_clipcap


def save_trained_clipcap(output_dir, bundle, summary: dict, predictions: pd.DataFrame) -> TrainedCaptioner:
    """Save train_clipcap's model folder (model + tokenizer), predictions.csv, summary.json and the manifest."""
    from .models.clipcap import save_clipcap

    output_dir = Path(output_dir)
    save_clipcap(bundle, output_dir / "model")
    write_table(predictions, output_dir / "predictions.csv")
    write_json(output_dir / "summary.json", summary)
    files = {"model": "model", "summary": "summary.json", "predictions": "predictions.csv"}
    write_stage(output_dir, "train_clipcap", files)
    return TrainedCaptioner(bundle, summary, predictions, output_dir / "model")


def load_trained_clipcap(run_dir) -> TrainedCaptioner:
    """Reload the ClipCap model train_clipcap saved in `run_dir` (its bundle has model and tokenizer)."""
    from .models.clipcap import load_saved_clipcap

    return _load_captioning_stage(run_dir, "train_clipcap", load_saved_clipcap)
