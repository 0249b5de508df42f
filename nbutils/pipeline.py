"""The pipeline's stages, in one table: everything else that knows the stage graph reads it from here.

Each row is one numbered notebook: the module that runs it and the config class holding its parameters, the
earlier stages it reads, the parameters that may name files it reads, and the kind of loss it logs. From this
table come the runner's order and its fingerprints (`nbutils.runner`), analyze_loss's panels, the parameter
reference (docs/parameters.md) and the pipeline picture (`pipeline_picture`, shown in the README).

Modules and classes are named, not imported: stages 01 and 02 must not pay for torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One pipeline stage (= one notebook, notebooks/<name>.ipynb)."""

    name: str
    module: (
        str  # runs the stage (the notebook calls it; training, infer and analyze_loss: python -m <module>)
    )
    config: str  # the config class in `module`: the notebook's parameters
    does: str  # what it does, in a few words
    writes: str  # what it leaves in <run_dir>/<name>/ besides summary.json, figures/ and stage.json
    reads: tuple[str, ...] = ()  # earlier stages whose outputs it reads
    input_parameters: tuple[str, ...] = ()  # parameters that may name files it reads (comma lists allowed)
    loss: str | None = None  # the loss it logs, for analyze_loss's panels: "contrastive" or "captioning"

    @property
    def notebook(self) -> str:
        return f"notebooks/{self.name}.ipynb"

    def config_class(self):
        """The config class itself (imports the stage's module)."""
        return getattr(importlib.import_module(self.module), self.config)


STAGES = (
    Stage(
        "processdata_01",
        "nbutils.data.download",
        "DownloadConfig",
        "download images of a url/caption manifest",
        "downloaded.csv, images/, status.parquet",
        input_parameters=("source",),
    ),
    Stage(
        "processdata_02",
        "nbutils.data.validate",
        "ValidationConfig",
        "validate and normalise the images",
        "clean.csv, rejects.csv, checks.csv, normalised/",
        reads=("processdata_01",),
        input_parameters=("source",),
    ),
    Stage(
        "processdata_03",
        "nbutils.data.prepare",
        "PrepareConfig",
        "split by image, build the image cache",
        "train/val/test.csv, dropped.csv; the image cache in data/cache/",
        reads=("processdata_02",),
        input_parameters=("source",),
    ),
    Stage(
        "train_clip",
        "nbutils.training.clip",
        "TrainClipConfig",
        "train a dual encoder (CLIP)",
        "model/, checkpoints/, trainer_state.json",
        reads=("processdata_03",),
        input_parameters=("model", "vision_model", "text_model", "resume"),
        loss="contrastive",
    ),
    Stage(
        "train_encoder_decoder",
        "nbutils.training.encoder_decoder",
        "TrainEncoderDecoderConfig",
        "train ViT → GPT-2 / BERT captioners",
        "model/, checkpoints/, trainer_state.json, predictions.csv",
        reads=("processdata_03",),
        input_parameters=("encoder", "decoder_model", "resume"),
        loss="captioning",
    ),
    Stage(
        "train_clipcap",
        "nbutils.training.clipcap",
        "TrainClipCapConfig",
        "train ClipCap on CLIP image embeddings",
        "model/, checkpoints/, trainer_state.json, predictions.csv, mappings/",
        reads=("processdata_03", "train_clip"),
        input_parameters=("clip_model", "language_model", "resume"),
        loss="captioning",
    ),
    Stage(
        "infer",
        "nbutils.infer",
        "InferConfig",
        "caption, score and search the test images",
        "predictions.csv, per_image.csv",
        reads=("processdata_03", "train_clip", "train_encoder_decoder", "train_clipcap"),
        input_parameters=("captioners", "images", "clip_model"),
    ),
    Stage(
        "analyze_loss",
        "nbutils.analyze_loss",
        "AnalyzeLossConfig",
        "compare the loss curves of every run",
        "losses.csv, metrics.csv, figures/loss_vs_step.png",
        reads=("train_clip", "train_encoder_decoder", "train_clipcap"),
    ),
)

BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = [stage.name for stage in STAGES]  # the pipeline order


def stage(name: str) -> Stage:
    """The row of `name`; KeyError naming the stages when there is none."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a pipeline stage; stages: {', '.join(NAMES)}") from None


def readers(name: str) -> list[str]:
    """The stages that read `name`'s outputs, in pipeline order."""
    return [s.name for s in STAGES if name in s.reads]


def pipeline_picture() -> str:
    """The pipeline as text, one stage per line in the order they run: what it does and the stages it reads, then
    what it writes into <run_dir>/<stage>/ (the README shows it; `make docs` writes it there)."""
    rows = [(s.name, s.does, ", ".join(_short(r) for r in s.reads) or "–", s.writes) for s in STAGES]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{'stage':<{widths[0]}}  {'does':<{widths[1]}}  reads", ""]
    for name, does, reads, writes in rows:
        lines += [
            f"{name:<{widths[0]}}  {does:<{widths[1]}}  {reads}",
            f"{'':<{widths[0]}}  └ writes {writes}",
        ]
    return "\n".join(lines)


README_MARKERS = ("<!-- pipeline: written by `make docs` from nbutils/pipeline.py -->", "<!-- /pipeline -->")


def readme_with_picture(readme: str) -> str:
    """`readme` (the README's text) with the block between README_MARKERS replaced by `pipeline_picture()`."""
    start, end = README_MARKERS
    if start not in readme or end not in readme:
        raise ValueError(f"the README has no pipeline block: put {start} and {end} where the picture goes")
    before, rest = readme.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n```\n{pipeline_picture()}\n```\n{end}{after}"


def _short(name: str) -> str:
    return name.removeprefix("processdata_")  # "03" reads as processdata_03 beside the full names
