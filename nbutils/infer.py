"""The infer stage: caption images with any trained captioners, side by side, and score them.

    python -m nbutils.infer --run-dir outputs/demo                          # this run's captioners, test split
    python -m nbutils.infer --run-dir outputs/demo --images ~/photos --captioners train_clipcap --decoding sample \\
        --num-return-sequences 3

1. Images: a split of this run (with its references), a folder, a manifest CSV (`image_path`, optional `text`
   references) or one file. Each file goes through processdata_02's checks (`check_image`): a bad file is listed
   with its reason in `rejected`, never a crash. The good ones are decoded once into an image cache per geometry
   (the captioner's processor, the CLIP's) under output_dir/cache/.
2. Every captioner (a stage of this run, a saved folder or a hub id: nbutils.models.captioners) captions them in
   batches with the shared decoding presets; a predictions table (image, model, decoding, rank, caption, score).
3. With references: the caption metrics of each model beside the constant-caption baseline and the true captions
   (the first reference of each image, held out), and on the demo set what the captions state about
   the images (attribute precision and coverage, hallucination), the true captions' beside them. With a CLIP
   (this run's train_clip by default): CLIPScore and RefCLIPScore per model.
4. Throughput: images/s of each captioner at batch `batch_size`, greedy and beam.
"""

from __future__ import annotations

import html
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from . import stages
from .config import StageConfig, command_line_main, param
from .data.cache import ImageCache, ImageGeometry, build_image_cache
from .data.validate import check_image
from .errors import DataError
from .evaluation.attributes import TRUE_CAPTIONS, attribute_errors, formatted_attribute_table
from .evaluation.caption_metrics import check_tokenization
from .evaluation.caption_scores import score_references, score_test_captions
from .files import write_json, write_table
from .models.captioners import STAGES as CAPTIONING_STAGES
from .models.captioners import load_any_captioner
from .models.decoding import decoding_request, resolve_decoding
from .progress import tqdm
from .reporting.tables import count, formatted, number

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
THROUGHPUT_DECODINGS = ("greedy", "beam")
# The caption metrics in summary.json's `models` and the metrics table: summary key -> column
SCORE_COLUMNS = {"cider": "CIDEr", "bleu4": "BLEU-4", "rouge_l": "ROUGE-L", "meteor": "METEOR"}


@dataclass(frozen=True)
class InferConfig(StageConfig):
    """infer's parameters (the notebook's `parameters` cell and the command line)."""

    stage = "infer"
    captioners: str = param(
        "train_encoder_decoder,train_clipcap",
        "comma-separated: stages of this run, saved model folders or hub ids (those missing in this run are skipped)",
    )
    images: str = param(
        "test", "a split of this run (test, val, ...), a folder, a manifest CSV or one image file"
    )
    decoding: str = param(
        "beam",
        "a decoding preset (greedy, beam, blip_beam, blip_nucleus, sample, ...) or explicit settings as JSON, "
        'e.g. {"preset": "beam", "num_beams": 5, "length_penalty": 0.8}',
    )
    max_new_tokens: int = param(48, "the most tokens a caption may have (0: the preset's)")
    num_return_sequences: int = param(1, "captions per image and model (beam: at most num_beams)")
    batch_size: int = param(32, "images per generate() call")
    clip_model: str = param(
        "", '"" (this run\'s train_clip, if any) or a CLIP folder / hub id for CLIPScore; "none" skips it'
    )
    clipscore_prompt: str = param(
        "", 'text before each caption for CLIPScore (the paper: "A photo depicts ")'
    )
    tokenization: str = param("", 'metrics tokenisation: "" (the language\'s default), jieba, char, words')
    throughput: bool = param(True, "time each captioner (images/s at batch_size, greedy and beam)")


@dataclass
class ImageSet:
    """The images to caption: good paths, their references (or None), and the files rejected with reasons."""

    paths: list[str]
    references: list[list[str]] | None
    rejected: pd.DataFrame
    ground_truth: str | None = None
    language: str | None = None
    train_captions: list[str] | None = None  # the constant-caption baseline's pool (this run's train split)


def decoding_settings(config: InferConfig) -> dict:
    """The checked generate() settings: `decoding` (a preset name or JSON settings), then `max_new_tokens` and
    `num_return_sequences` on top."""
    spec = decoding_request(
        config.decoding, config.max_new_tokens, num_return_sequences=config.num_return_sequences
    )
    return resolve_decoding(spec)


def collect_images(config: InferConfig) -> ImageSet:
    """Resolve `config.images` to files, check each like processdata_02, keep references where there are some."""
    spec, references, ground_truth, language = config.images, None, None, None
    prepared = None
    try:
        prepared = stages.load_prepared(config.run_dir)
    except Exception:  # a run without processdata_03: only folders, manifests and files make sense
        prepared = None
    if prepared is not None and spec in prepared.tables:
        table = prepared.tables[spec]
        grouped = table.groupby("image_path", sort=True)["text"].apply(list)
        paths, references = list(grouped.index), list(grouped.values)
        ground_truth, language = prepared.origin.ground_truth, prepared.language
    elif Path(spec).is_dir():
        paths = sorted(
            str(p) for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        others = sorted(
            str(p) for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES
        )
        paths += others  # checked like the rest: a mislabelled image still gets in, anything else is listed
    elif Path(spec).is_file() and spec.lower().endswith(".csv"):
        table = pd.read_csv(spec, dtype=str, keep_default_na=False)
        if "image_path" not in table.columns:
            raise ValueError(
                f"images={spec!r}: a manifest needs an image_path column (has {list(table.columns)})"
            )
        base = Path(spec).parent
        table["image_path"] = [p if os.path.isabs(p) else str(base / p) for p in table["image_path"]]
        if "text" in table.columns:
            grouped = table.groupby("image_path", sort=True)["text"].apply(list)
            paths, references = list(grouped.index), list(grouped.values)
        else:
            paths = sorted(set(table["image_path"]))
    elif Path(spec).is_file():
        paths = [spec]
    elif prepared is None and os.sep not in spec and "/" not in spec:  # a split name, and no split here
        error = stages.missing_stage(config.run_dir, "processdata_03")
        raise DataError(f"images={spec!r} is a split of processdata_03, but {error}") from None
    else:
        splits = sorted(prepared.tables) if prepared is not None else []
        raise ValueError(
            f"images={spec!r} is not a split of this run ({', '.join(splits) or 'none'}), folder or file"
        )
    checks = [check_image(p) for p in tqdm(paths, desc="checking images", disable=len(paths) < 50)]
    good = [c.ok for c in checks]
    rejected = pd.DataFrame(
        [(c.path, c.reason) for c in checks if not c.ok], columns=["image_path", "reason"]
    )
    kept = [p for p, ok in zip(paths, good) if ok]
    if references is not None:
        references = [r for r, ok in zip(references, good) if ok]
    if not kept:
        raise ValueError(f"images={spec!r}: no usable image ({len(rejected)} rejected)")
    train_captions = prepared.tables["train"]["text"].tolist() if prepared is not None else None
    return ImageSet(kept, references, rejected, ground_truth, language, train_captions)


def image_cache(images: ImageSet, image_processor, cache_root: Path) -> ImageCache:
    """The images decoded once at `image_processor`'s geometry (reused while files and geometry are unchanged)."""
    geometry = ImageGeometry.from_processor(image_processor)
    name = "-".join(
        f"{k}{v}" for k, v in sorted(geometry.to_dict().items()) if not isinstance(v, (list, dict))
    )
    return build_image_cache(images.paths, cache_root / name.replace("/", "_"), geometry, progress=False)


def caption_all(captioner, cache: ImageCache, paths: list[str], decoding, batch_size: int, seed: int):
    """Every image's candidates, in `paths` order."""
    rows = cache.index_of(paths)
    results = []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"captioning ({captioner.name})", leave=False):
        batch = torch.from_numpy(cache.uint8(rows[start : start + batch_size])).permute(0, 3, 1, 2)
        results.extend(captioner.caption(batch, decoding, seed=seed))
    return results


def images_per_second(captioner, cache: ImageCache, paths: list[str], decoding, batch_size: int) -> float:
    """Captioning throughput on one batch of `batch_size` images (after one warm-up call)."""
    rows = cache.index_of(paths[:batch_size])
    batch = torch.from_numpy(cache.uint8(rows)).permute(0, 3, 1, 2)
    captioner.caption(batch[:2], decoding)
    start = time.perf_counter()
    captioner.caption(batch, decoding)
    return len(batch) / (time.perf_counter() - start)


@dataclass
class InferResult:
    """What `infer` returns to the notebook."""

    summary: dict
    predictions: pd.DataFrame
    images: ImageSet
    metrics: pd.DataFrame | None = None  # a row per model, the true captions and the constant caption
    throughput: pd.DataFrame | None = None
    per_image: pd.DataFrame | None = None  # image_path, model, caption, cider, clipscore, refclipscore
    caches: dict = field(default_factory=dict)
    captioners: dict = field(
        default_factory=dict
    )  # name -> LoadedCaptioner (the browser re-captions with them)
    clip: tuple | None = None  # (ClipBundle, image embeddings in images.paths order) for search
    attributes: dict = field(default_factory=dict)  # model -> attribute_scores (demo)
    true_caption_attributes: dict | None = None  # attribute_scores of the first reference of each image
    config: InferConfig | None = None  # the settings the browser re-captions with

    def search(self, queries: list[str], k: int = 5) -> list[dict]:
        """Text -> image search over these images with the CLIP: per query {"query", "images", "scores"}, best first."""
        from .evaluation.embeddings import embed_texts
        from .evaluation.retrieval import search

        if self.clip is None:
            raise ValueError("no CLIP for this run (clip_model): search needs one")
        bundle, image_embeds = self.clip
        scores, top = search(
            embed_texts(bundle, queries), torch.nn.functional.normalize(image_embeds, dim=-1), k=k
        )
        return [
            {"query": q, "images": [self.images.paths[i] for i in row.tolist()], "scores": s.tolist()}
            for q, s, row in zip(queries, scores, top)
        ]

    def image_to_text(self, image_paths: list[str], texts: list[str], k: int = 3) -> list[dict]:
        """Image -> text search: per image {"image_path", "texts", "scores"}, the top k of `texts`, best first."""
        from .evaluation.embeddings import embed_texts
        from .evaluation.retrieval import search

        if self.clip is None:
            raise ValueError("no CLIP for this run (clip_model): search needs one")
        bundle, image_embeds = self.clip
        rows = [self.images.paths.index(p) for p in image_paths]
        gallery = torch.cat([embed_texts(bundle, texts[i : i + 256]) for i in range(0, len(texts), 256)])
        scores, top = search(torch.nn.functional.normalize(image_embeds[rows], dim=-1), gallery, k=k)
        return [
            {"image_path": p, "texts": [texts[i] for i in row.tolist()], "scores": s.tolist()}
            for p, s, row in zip(image_paths, scores, top)
        ]

    def search_html(self, queries: list[str], k: int = 5) -> str:
        """`search` as HTML: per query a row of the top k images with their cosine."""
        from .reporting.grids import image_grid_html

        cache = next(iter(self.caches.values()))
        parts = []
        for result in self.search(queries, k):
            pixels = cache.uint8(cache.index_of(result["images"]))
            labels = [f"{rank + 1}. cos {score:.2f}" for rank, score in enumerate(result["scores"])]
            parts.append(
                f"<p><b>{html.escape(result['query'])}</b></p>"
                + image_grid_html(pixels, labels, ncols=k, thumb_px=80)
            )
        return "".join(parts)

    def scores_table(self) -> pd.DataFrame | None:
        """Mean CLIPScore / RefCLIPScore per model (None without a CLIP)."""
        if self.summary.get("clipscore") is None or "clipscore" not in self.per_image:
            return None
        columns = [c for c in ("clipscore", "refclipscore") if c in self.per_image]
        return self.per_image.groupby("model", sort=False)[columns].mean()

    def metrics_table(self):
        """The models side by side (`metrics`), with the true captions and the constant caption, for reading:
        CIDEr / BLEU-4 / ROUGE-L / METEOR with three decimals, empty captions as a count; None without
        references."""
        if self.metrics is None:
            return None
        return formatted(
            self.metrics,
            column_decimals=dict.fromkeys(SCORE_COLUMNS.values(), 3),
            count_columns=["empty captions"],
        )

    def attribute_table(self):
        """What each model's captions state about the demo images beside the true captions'
        (`formatted_attribute_table`); None without ground truth."""
        if not self.attributes:
            return None
        return formatted_attribute_table(self.attributes, self.true_caption_attributes)

    def clipscore_table(self):
        """Mean CLIPScore / RefCLIPScore per model (`scores_table()`), three decimals; None without a CLIP."""
        scores = self.scores_table()
        if scores is None:
            return None
        return formatted(
            scores.rename(columns={"clipscore": "CLIPScore", "refclipscore": "RefCLIPScore"}), decimals=3
        )

    def throughput_table(self):
        """Images per second of each captioner (one decimal), None when not measured."""
        return None if self.throughput is None else formatted(self.throughput)

    def rejected_table(self):
        """The files that were not usable images, with their reason (None when there are none)."""
        rejected = self.images.rejected
        return formatted(rejected, hide_index=True) if len(rejected) else None

    def example_queries(self, n: int = 3) -> list[str]:
        """The first reference of `n` evenly spaced images: text queries for `search_html` ([] without references)."""
        references = self.images.references or []
        return [refs[0] for refs in references[:: max(1, len(references) // n)] if refs][:n]

    def image_to_text_table(self, n_images: int = 3, k: int = 3):
        """Image -> text search for the first `n_images` images among all these images' references: image,
        reference found, cosine; None without a CLIP or references."""
        if self.clip is None or not self.images.references:
            return None
        references = [r for refs in self.images.references for r in refs]
        rows = [
            (Path(r["image_path"]).name, text, score)
            for r in self.image_to_text(self.images.paths[:n_images], references, k=k)
            for text, score in zip(r["texts"], r["scores"])
        ]
        table = pd.DataFrame(rows, columns=["image", "reference found", "cosine"])
        return formatted(table, decimals=3, hide_index=True)

    def gallery_html(self, n: int = 12, sort_by: str = "", ncols: int = 4) -> str:
        """A static gallery (renders without a kernel): images with each model's caption and scores and two
        references; `sort_by` a per-image score column ("cider", "clipscore") puts the worst first."""
        from .reporting.grids import image_grid_html

        paths = list(dict.fromkeys(self.per_image["image_path"]))
        if sort_by and sort_by in self.per_image:
            worst = self.per_image.groupby("image_path")[sort_by].min().sort_values()
            paths = list(worst.index)
        paths = paths[:n]
        cache = next(iter(self.caches.values()))
        references = dict(zip(self.images.paths, self.images.references or [[] for _ in self.images.paths]))
        captions = []
        for path in paths:
            lines = []
            for row in self.per_image[self.per_image["image_path"] == path].itertuples():
                scores = ", ".join(
                    f"{name} {getattr(row, name):.2f}"
                    for name in ("cider", "clipscore")
                    if hasattr(row, name) and pd.notna(getattr(row, name))
                )
                lines.append(f"✎ {row.model}: {row.caption}" + (f" ({scores})" if scores else ""))
            lines += [f"ref: {r}" for r in references[path][:2]]
            captions.append(lines)
        return image_grid_html(cache.uint8(cache.index_of(paths)), captions, ncols=ncols, thumb_px=96)


def infer(config: InferConfig) -> InferResult:
    """Caption `config.images` with every captioner; score, time and tabulate (module docstring)."""
    settings = decoding_settings(config)
    decoding_name = config.decoding if not config.decoding.strip().startswith("{") else json.dumps(settings)
    output_dir = Path(config.output_dir)
    images = collect_images(config)
    names = [c.strip() for c in config.captioners.split(",") if c.strip()]
    captioners, missing = [], []
    for name in names:
        if name in CAPTIONING_STAGES and not (Path(config.run_dir) / name / "model").is_dir():
            print(f"note: {name} has no saved model in {config.run_dir}; skipped")
            missing.append(name)
            continue
        captioners.append(load_any_captioner(name, config.run_dir, parameter="captioners"))
    if not captioners:
        error = stages.missing_stage(config.run_dir, tuple(missing) or CAPTIONING_STAGES)
        raise DataError(
            f"captioners={config.captioners!r}: no captioner to load: {error} "
            "(captioners also takes saved model folders)"
        )

    if images.references is not None:  # scored below, the same way for every captioner
        language = images.language or "zh"
        tokenization = check_tokenization(language, config.tokenization or None)
        # without a prepared run (a manifest with references), the baseline's pool is the references themselves
        baseline_pool = images.train_captions or [r for refs in images.references for r in refs]
        compared = score_references(
            images.paths, images.references, baseline_pool, language, tokenization, images.ground_truth
        )
    caches, rows, metrics_rows, throughput_rows, per_model, per_image = {}, [], [], [], {}, []
    attributes, scores = {}, None
    for captioner in captioners:
        cache = image_cache(images, captioner.image_processor, output_dir / "cache")
        caches[captioner.name] = cache
        results = caption_all(captioner, cache, images.paths, settings, config.batch_size, config.seed)
        for path, candidates in zip(images.paths, results):
            for rank, c in enumerate(candidates):
                rows.append((path, captioner.name, decoding_name, rank, c["caption"], c["score"]))
        best = [candidates[0]["caption"] for candidates in results]
        shown = pd.DataFrame({"image_path": images.paths, "model": captioner.name, "caption": best})
        entry = {"kind": captioner.kind}
        if images.references is not None:
            scores = score_test_captions(
                images.paths,
                best,
                images.references,
                baseline_pool,
                language,
                tokenization,
                reference_scores=compared,
            )
            entry["metrics"] = {k: scores.summary[k] for k in SCORE_COLUMNS}
            entry["attribute_scores"] = scores.summary["attribute_scores"]
            entry["baseline_cider"] = scores.summary["baseline"]["cider"]
            entry["empty_captions"] = scores.summary["empty_captions"]
            metrics_rows.append(_metrics_row(captioner.name, scores.summary))
            shown["cider"] = scores.predictions["cider"].to_numpy()
            if compared.truth is not None:  # the demo: what each caption states wrongly, for the browser
                attributes[captioner.name] = scores.attributes
                wrong = attribute_errors(dict(zip(images.paths, best)), compared.truth, language)
                shown["attribute_errors"] = [", ".join(wrong[p]) for p in images.paths]
        if config.throughput:
            entry["images_per_second"] = {
                d: images_per_second(
                    captioner, cache, images.paths, {"preset": d, "max_new_tokens": 25}, config.batch_size
                )
                for d in THROUGHPUT_DECODINGS
            }
            throughput_rows.append(
                {
                    "model": captioner.name,
                    **{f"{d}, images/s": v for d, v in entry["images_per_second"].items()},
                }
            )
        per_model[captioner.name] = entry
        per_image.append(shown)
    predictions = pd.DataFrame(rows, columns=["image_path", "model", "decoding", "rank", "caption", "score"])

    clipscore_table, clip_summary, clip = _clipscores(config, images, predictions, output_dir)
    per_image = pd.concat(per_image, ignore_index=True)
    if clipscore_table is not None:
        scores_only = clipscore_table.drop(columns=["reference_similarity"], errors="ignore")
        per_image = per_image.merge(scores_only, on=["image_path", "model"], how="left")
    if scores is not None:  # the true captions and the constant caption are the same for every model
        metrics_rows.append(_metrics_row(TRUE_CAPTIONS, scores.summary["true_captions"]))
        metrics_rows.append(_metrics_row("constant caption", scores.summary["baseline"]))
    summary = {
        "n_images": len(images.paths),
        "images": config.images,
        "decoding": {**settings, "given": config.decoding},
        "models": per_model,
        "true_captions": scores.summary["true_captions"] if scores is not None else None,
        "rejected_images": len(images.rejected),
        "rejected": images.rejected.to_dict(orient="records"),
        **clip_summary,
    }
    summary = {"headline": headline(summary), **summary}
    output_dir.mkdir(parents=True, exist_ok=True)
    write_table(predictions, output_dir / "predictions.csv")
    write_table(per_image, output_dir / "per_image.csv")
    write_json(output_dir / "summary.json", summary)
    files = {"predictions": "predictions.csv", "per_image": "per_image.csv", "summary": "summary.json"}
    stages.write_stage(output_dir, "infer", files)
    return InferResult(
        summary,
        predictions,
        images,
        pd.DataFrame(metrics_rows).set_index("model") if metrics_rows else None,
        pd.DataFrame(throughput_rows).set_index("model") if throughput_rows else None,
        per_image,
        caches,
        {c.name: c for c in captioners},
        clip,
        attributes,
        scores.true_caption_attributes if scores is not None else None,
        config,
    )


def headline(summary: dict) -> str:
    """One sentence of what infer did, from its summary: "Captioned 267 images with 2 models (beam decoding):
    CIDEr train_clipcap 2.011, train_encoder_decoder 1.646 (true captions 2.541, constant caption 0.203);
    CLIPScore train_clipcap 0.712, train_encoder_decoder 0.650." Empty captions are named where there are
    some ("; empty captions: train_clipcap 3")."""
    models = summary["models"]
    n_models = f"{count(len(models))} model{'s' if len(models) != 1 else ''}"
    given = str(summary["decoding"]["given"])
    decoding = "custom" if given.strip().startswith("{") else given  # explicit JSON settings
    text = f"Captioned {count(summary['n_images'])} images with {n_models} ({decoding} decoding)"
    scored = {name: m for name, m in models.items() if m.get("metrics")}
    if scored:
        text += ": CIDEr " + ", ".join(
            f"{name} {number(m['metrics']['cider'], 3)}" for name, m in scored.items()
        )
        ceiling = (summary.get("true_captions") or {}).get("cider")
        ceiling = f"true captions {number(ceiling, 3)}, " if ceiling is not None else ""
        text += f" ({ceiling}constant caption {number(next(iter(scored.values()))['baseline_cider'], 3)})"
    else:
        text += "; no references, so no caption metrics"
    empty = {name: m["empty_captions"] for name, m in scored.items() if m.get("empty_captions")}
    if empty:
        text += "; empty captions: " + ", ".join(f"{name} {count(n)}" for name, n in empty.items())
    if summary.get("clipscore"):
        text += "; CLIPScore " + ", ".join(f"{m} {number(v, 3)}" for m, v in summary["clipscore"].items())
    if summary.get("rejected_images"):
        text += f"; {count(summary['rejected_images'])} files rejected"
    return text + "."


def _metrics_row(name: str, scored: dict) -> dict:
    """A row of the metrics table from a summary holding the caption metrics (a model's, or its `true_captions`
    or `baseline`); empty captions only where counted (a model's)."""
    row = {"model": name, **{column: scored[key] for key, column in SCORE_COLUMNS.items()}}
    row["empty captions"] = scored.get("empty_captions")
    return row


def _clipscores(config: InferConfig, images: ImageSet, predictions: pd.DataFrame, output_dir: Path):
    """(per image and model table, summary keys, (the CLIP, its image embeddings) or None) of CLIPScore /
    RefCLIPScore with the chosen CLIP."""
    from .data.cache import processor_mean_std
    from .data.image_embeddings import cached_image_embeddings
    from .evaluation.clipscore import score_captions
    from .models.clip import load_clip_model

    if config.clip_model == "none":
        return None, {"clipscore_model": None}, None
    if config.clip_model:
        bundle, clip_name = load_clip_model(config.clip_model, parameter="clip_model"), config.clip_model
    else:
        try:
            bundle, clip_name = stages.load_trained_clip(config.run_dir).bundle, "train_clip of this run"
        except Exception:
            return None, {"clipscore_model": None}, None
    cache = image_cache(images, bundle.image_processor, output_dir / "cache")
    mean, std = processor_mean_std(bundle.image_processor)
    embeddings, _, _ = cached_image_embeddings(
        bundle.model, cache, mean, std, output_dir / "clip_embeddings", progress=False
    )
    image_embeds = embeddings[torch.as_tensor(cache.index_of(images.paths))]
    best = predictions[predictions["rank"] == 0]
    tables, clipscore, refclipscore = [], {}, {}
    for model, group in best.groupby("model", sort=False):
        order = group.set_index("image_path").loc[images.paths]
        table = score_captions(
            bundle, image_embeds, list(order["caption"]), images.references, prompt=config.clipscore_prompt
        )
        table.insert(0, "model", model)
        table.insert(0, "image_path", images.paths)
        tables.append(table)
        clipscore[model] = float(table["clipscore"].mean())
        if "refclipscore" in table:
            refclipscore[model] = float(table["refclipscore"].mean())
    summary = {
        "clipscore_model": clip_name,
        "clipscore_prompt": config.clipscore_prompt,
        "clipscore": clipscore,
        "refclipscore": refclipscore or None,
    }
    return pd.concat(tables, ignore_index=True), summary, (bundle, image_embeds)


def main(argv=None) -> int:
    """`python -m nbutils.infer`: every InferConfig field is an option."""
    return command_line_main(InferConfig, infer, "nbutils.infer", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
