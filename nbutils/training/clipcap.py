"""ClipCap training: a mapping network from CLIP image embeddings to a GPT-2 prefix, with the Trainer.

    python -m nbutils.train_clipcap --run-dir outputs/demo
    python -m nbutils.train_clipcap --run-dir outputs/demo --mapping mlp,transformer,bert
    python -m nbutils.train_clipcap --run-dir outputs/flickr --clip-model OFA-Sys/chinese-clip-vit-base-patch16 \\
        --language-model uer/gpt2-chinese-cluecorpussmall --mapping transformer --freeze-language-model true

1. The CLIP image embeddings of every cached image are computed once and kept on disk
   (nbutils.data.image_embeddings: safetensors, keyed by the encoder's weights and the images).
2. For each mapping type listed, a ClipCapModel (nbutils.models.clipcap) trains on one example per caption
   row through the same Trainer glue as train_encoder_decoder (`CaptionTrainer`): the loss covers the caption
   tokens and the end token, never the prefix, the start token or padding. With `freeze_language_model`
   GPT-2 gets `requires_grad_(False)`: no gradient, not in the optimizer, bit-identical after training.
3. The test images are captioned in batches from their embeddings through the shared decoding module
   (KV cache, beams, sampling, `num_return_sequences`) and scored like every captioner
   (nbutils.evaluation.caption_scores).

The first mapping listed is the stage's result (`output_dir/model`, `summary.json`, ...); the others are trained
into `output_dir/mappings/<mapping>/` and compared in `comparison.csv` and summary.json's `comparison`.
Every field of `TrainClipCapConfig` is an option.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .. import stages
from ..config import command_line_main, param
from ..data.cache import processor_mean_std
from ..data.datasets import ImageEmbeddingDataset
from ..data.image_embeddings import cached_image_embeddings
from ..evaluation.attributes import TRUE_CAPTIONS
from ..evaluation.caption_metrics import check_tokenization
from ..evaluation.caption_scores import caption_headline, score_test_captions
from ..models import clip as clip_models
from ..models import clipcap
from ..models.decoding import decoding_request, resolve_decoding
from ..models.model_names import resolve_model_name
from ..models.tokenizer import train_caption_tokenizer
from ..reporting.tables import duration, formatted, number
from . import job
from .captioning import CaptionResult, CaptionTrainer, caption_in_batches


@dataclass(frozen=True)
class TrainClipCapConfig(job.TrainingConfig):
    """train_clipcap's parameters (the notebook's `parameters` cell and the command line)."""

    # A GPT-2 built from a config trains fast at a large rate; the reference recipe for a pretrained GPT-2 (with
    # or without fine-tuning) is 2e-5.
    LEARNING_RATES = {"demo": 2e-3, "pretrained": 2e-5}

    stage = "train_clipcap"
    epochs: float = job.reworded("epochs", "passes over the training caption rows")
    batch_size: int = job.reworded("batch_size", "caption rows per batch, per process (the reference: 40)")
    learning_rate: float = job.reworded("learning_rate", job.learning_rate_help(LEARNING_RATES))
    weight_decay: float = param(0.01, "AdamW weight decay")
    warmup_ratio: float = param(0.05, "share of the steps spent warming up the learning rate")
    clip_model: str = param(
        "",
        '"" (the model train_clip saved in this run) or a CLIP image encoder: hub id or folder of a CLIPModel, '
        "ChineseCLIPModel or VisionTextDualEncoderModel",
    )
    language_model: str = param(
        "",
        '"" (demo: a small GPT-2 from a config, tokenizer trained on the train captions) or a GPT-2 with its '
        "tokenizer: hub id or folder (gpt2, uer/gpt2-chinese-cluecorpussmall)",
    )
    mapping: str = param(
        "mlp",
        '"mlp", "linear", "transformer" or "bert"; several, comma-separated, trains each and compares them',
    )
    prefix_len: int = param(10, "prefix tokens GPT-2 sees per image (K)")
    constant_len: int = param(
        10, "transformer / bert mapping: learned constant tokens after the K projected ones"
    )
    mapping_layers: int = param(8, "transformer / bert mapping: layers")
    mapping_heads: int = param(8, "transformer / bert mapping: attention heads")
    normalize_prefix: bool = param(False, "L2-normalise the CLIP embedding before the mapper")
    freeze_language_model: bool = param(
        False, "train the mapper only: GPT-2 frozen (requires_grad False, weights unchanged)"
    )
    max_caption_length: int = param(32, "tokens per training caption, end token included")
    decoding: str = param("greedy", "test captions' decoding preset: greedy, beam, blip_beam, sample, ...")
    max_new_tokens: int = param(
        0, "0 keeps the decoding preset's limit; else the most tokens a test caption may have"
    )
    num_return_sequences: int = param(
        1, "captions per test image (beam: at most num_beams; sampling: any); the first is scored"
    )
    tokenization: str = param("", 'metrics tokenisation: "" (the language\'s default), jieba, char, words')
    embeddings_dir: str = param(
        "", 'where CLIP image embeddings are kept ("": clip_embeddings/ beside the image cache)'
    )
    hidden_size: int = param(128, "demo GPT-2: width")
    layers: int = param(1, "demo GPT-2: transformer layers")
    num_heads: int = param(4, "demo GPT-2: attention heads")
    dropout: float = param(0.0, "demo GPT-2: dropout")


def mappings(config: TrainClipCapConfig) -> list[str]:
    """The mapping types `config.mapping` lists, in order."""
    return [m.strip() for m in config.mapping.split(",") if m.strip()]


def decoding_spec(config: TrainClipCapConfig) -> dict:
    """The test captions' decoding: the preset, with `max_new_tokens` and `num_return_sequences` on top."""
    return decoding_request(
        config.decoding, config.max_new_tokens, num_return_sequences=config.num_return_sequences
    )


def mapper_of(config: TrainClipCapConfig, mapping: str, prefix_dim: int) -> dict:
    """The mapper settings of one `mapping` type with `config`'s other mapper fields (checked)."""
    fields = {name: getattr(config, name) for name in clipcap.MAPPER_FIELDS}
    return clipcap.mapper_settings(prefix_dim, **{**fields, "mapping": mapping})


def check_config(config: TrainClipCapConfig) -> None:
    """Reject bad parameters by name before any data or model is loaded."""
    listed = mappings(config)
    if not listed or any(m not in clipcap.MAPPINGS for m in listed) or len(set(listed)) != len(listed):
        raise ValueError(
            f"mapping={config.mapping!r}: list one or more of {clipcap.MAPPINGS}, comma-separated, each once"
        )
    for mapping in listed:
        mapper_of(config, mapping, prefix_dim=1)
    if config.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0 (0: the preset's), got {config.max_new_tokens}")
    resolve_decoding(decoding_spec(config))  # ValueError naming what is wrong
    if config.max_caption_length < 2:
        raise ValueError(
            f"max_caption_length must be >= 2 (a token and the end), got {config.max_caption_length}"
        )
    for name in ("clip_model", "language_model"):  # "" means this run's train_clip / the demo GPT-2
        if getattr(config, name):
            resolve_model_name(getattr(config, name), name)


# -----------------------------------------------------------------------------
# models


def choose_clip(config: TrainClipCapConfig, prepared: stages.PreparedDataset):
    """(ClipBundle, name, where it loads from): this run's train_clip model, or `config.clip_model`, checked against
    the image cache."""
    if not config.clip_model:
        trained = stages.load_trained_clip(config.run_dir)
        return (
            trained.bundle,
            f"train_clip of {Path(config.run_dir).name}",
            str(Path(trained.model_dir).resolve()),
        )
    bundle = clip_models.load_clip_model(config.clip_model, parameter="clip_model")
    clip_models.check_image_size(bundle.model, prepared.cache.geometry.height, "processdata_03 image_size")
    job.check_image_cache(prepared, bundle.image_processor, "this checkpoint")
    return bundle, config.clip_model, config.clip_model


def load_bundle(
    config: TrainClipCapConfig, mapping: str, prefix_dim: int, train_texts: list[str], language: str
):
    """(ClipCapBundle, mode): "demo" (a small GPT-2, tokenizer trained on the captions) or "pretrained"."""
    mapper = mapper_of(config, mapping, prefix_dim)
    if config.language_model:
        return clipcap.load_clipcap_language_model(config.language_model, mapper), "pretrained"
    tokenizer = train_caption_tokenizer(train_texts, language)
    settings = resolve_decoding(decoding_spec(config))
    positions = max(64, config.max_caption_length, 1 + settings.get("max_new_tokens", 0))
    bundle = clipcap.build_demo_clipcap(
        tokenizer,
        mapper,
        hidden_size=config.hidden_size,
        layers=config.layers,
        num_heads=config.num_heads,
        max_length=positions,
        dropout=config.dropout,
    )
    return bundle, "demo"


# -----------------------------------------------------------------------------
# the whole job


@dataclass
class ClipCapResult(CaptionResult):
    """What `train_clipcap` returns to the notebook: the first mapping's result (CaptionResult's fields), and all."""

    results: dict = field(default_factory=dict)  # mapping -> ClipCapResult (this one included)

    def comparison(self, true_captions: bool = False) -> pd.DataFrame:
        """One row per mapping type: metrics, attribute scores (demo: single-object colour and shape precision,
        hallucination), trainable parameters, seconds. With `true_captions`, a last row for the true captions
        scored the same way (held-out references; summary.json's `true_captions`)."""
        scored = [(mapping, result.summary) for mapping, result in self.results.items()]
        if true_captions and self.summary.get("true_captions"):
            scored.append((TRUE_CAPTIONS, self.summary["true_captions"]))
        rows = []
        for mapping, s in scored:
            row = {
                "mapping": mapping,
                "CIDEr": s["cider"],
                "BLEU-4": s["bleu4"],
                "ROUGE-L": s["rouge_l"],
                "METEOR": s["meteor"],
            }
            if s["attribute_scores"]:
                single = s["attribute_scores"]["single_object"]
                row.update(
                    {
                        "colour precision, single-object (%)": single["colour"]["precision"],
                        "shape precision, single-object (%)": single["shape"]["precision"],
                        "hallucination (%)": s["attribute_scores"]["hallucination_rate"],
                    }
                )
            row.update(
                {
                    "trainable parameters": (s.get("trainable_parameters") or {}).get("trainable"),
                    "training seconds": s.get("train_seconds"),
                }
            )
            rows.append(row)
        return pd.DataFrame(rows).set_index("mapping")

    def comparison_table(self):
        """`comparison(true_captions=True)` for reading: scores with three decimals, rates as "98.6 %", times as
        "2.5 min"."""
        table = self.comparison(true_captions=True)
        percents = [c.replace(" (%)", "") for c in table.columns if c.endswith(" (%)")]
        table = table.rename(columns={c: c.replace(" (%)", "") for c in table.columns})
        table["training time"] = table.pop("training seconds").map(duration)
        scores = {c: 3 for c in ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR")}
        return formatted(
            table,
            column_decimals=scores,
            percent_columns=percents,
            count_columns=["trainable parameters"],
        )


def train_clipcap(config: TrainClipCapConfig, callbacks=()) -> ClipCapResult:
    """Train one ClipCap per mapping type listed on `config.run_dir`'s splits; caption and score the test split."""
    check_config(config)
    output_dir = Path(config.output_dir)
    prepared = stages.load_prepared(config.run_dir)
    language = prepared.language
    tokenization = check_tokenization(language, config.tokenization or None)
    clip, clip_name, clip_source = choose_clip(config, prepared)
    mean, std = processor_mean_std(clip.image_processor)
    embeddings_dir = Path(config.embeddings_dir or Path(prepared.cache.cache_dir).parent / "clip_embeddings")
    embeddings, embeddings_file, reused = cached_image_embeddings(
        clip.model, prepared.cache, mean, std, embeddings_dir
    )
    del clip
    print(
        f"CLIP image embeddings ({clip_name}): {'read from' if reused else 'computed into'} {embeddings_file}"
    )
    embedding_info = {"file": str(embeddings_file), "reused": reused, "dim": int(embeddings.shape[1])}

    results, folders = {}, {}
    listed = mappings(config)
    for mapping in listed:
        folders[mapping] = output_dir if mapping == listed[0] else output_dir / "mappings" / mapping
        one = dataclasses.replace(config, mapping=mapping, output_dir=str(folders[mapping]))
        result = _train_one(one, prepared, embeddings, language, tokenization, callbacks)
        result.bundle.model.config.clip_model = clip_source  # saved with it: captions new images
        result.summary.update({"clip_model": clip_name, "clip_embeddings": embedding_info})
        results[mapping] = result
    first = results[listed[0]]
    first.results = results
    comparison = first.comparison()
    first.summary["comparison"] = (
        comparison.reset_index().to_dict(orient="records") if len(results) > 1 else None
    )
    for result in results.values():
        result.summary = {"headline": headline(result.summary), **result.summary}
    if (
        int(os.environ.get("RANK", "0")) == 0
    ):  # the main process writes (as the Trainer's is_world_process_zero)
        for mapping, result in results.items():
            stages.save_trained_clipcap(folders[mapping], result.bundle, result.summary, result.predictions)
        if len(results) > 1:
            comparison.to_csv(output_dir / "comparison.csv")
    return first


def _train_one(config, prepared, embeddings, language: str, tokenization: str, callbacks) -> ClipCapResult:
    """Train and score one mapping type (`config.mapping` is a single type here)."""
    output_dir = Path(config.output_dir)
    train_texts = list(prepared.tables["train"]["text"])
    torch.manual_seed(config.seed)
    bundle, mode = load_bundle(config, config.mapping, embeddings.shape[1], train_texts, language)
    counts = clipcap.freeze_language_model(bundle.model, config.freeze_language_model)
    collator = clipcap.caption_collator(bundle, config.max_caption_length)
    train = ImageEmbeddingDataset(prepared.dataset("train", sampling="caption", seed=config.seed), embeddings)
    val = ImageEmbeddingDataset(prepared.dataset("val", sampling="caption", seed=config.seed), embeddings)
    test = ImageEmbeddingDataset(prepared.dataset("test", seed=config.seed, fixed_caption=True), embeddings)
    trainer = job.build_trainer(CaptionTrainer, config, mode, bundle.model, train, val, collator, callbacks)
    training = job.fit(trainer, config)

    decoding = decoding_spec(config)
    image_embeds = test.image_embeds()
    candidates = caption_in_batches(
        bundle,
        len(image_embeds),
        lambda rows: {"image_embeds": image_embeds[rows.start : rows.stop]},
        decoding,
        seed=config.seed,
    )
    scores = score_test_captions(
        test.image_paths,
        [c[0]["caption"] for c in candidates],
        test.captions,
        train_texts,
        language,
        tokenization,
        prepared.origin.ground_truth,
    )
    if config.num_return_sequences > 1:  # every candidate beside the scored first one
        scores.predictions["candidates"] = [" | ".join(c["caption"] for c in cands) for cands in candidates]
    summary = dict(scores.summary)
    summary.update(
        {
            "decoding": {**resolve_decoding(decoding), "preset": config.decoding},
            "mapping": config.mapping,
            "prefix_len": config.prefix_len,
            "constant_len": config.constant_len if config.mapping in clipcap.SEQUENCE_MAPPINGS else None,
            "mapping_layers": config.mapping_layers if config.mapping in clipcap.SEQUENCE_MAPPINGS else None,
            "normalize_prefix": config.normalize_prefix,
            "gpt2_frozen": config.freeze_language_model,
            "trainable_parameters": counts,
            "mode": mode,
            "language": language,
            **training,
        }
    )
    job.save_on_main_process(
        trainer, output_dir
    )  # the model is saved with the other mappings' (train_clipcap)
    return ClipCapResult.from_scores(bundle, summary, trainer.state.log_history, scores, test)


def headline(summary: dict) -> str:
    """One sentence of what training achieved, from train_clipcap's summary: "Trained ClipCap (mlp mapping) for
    1,300 steps in 2.5 min: CIDEr 2.011 on 267 test images (true captions 2.541), 9.9× the constant caption's
    0.203; single-object precision colour 98.6 %, shape 95.9 %; hallucinated objects in 43.4 % of captions
    (true captions 0.0 %) (transformer mapping: CIDEr 1.802)." (`caption_headline`)."""
    text = caption_headline(summary, f"ClipCap ({summary['mapping']} mapping)")
    others = [r for r in summary.get("comparison") or [] if r["mapping"] != summary["mapping"]]
    if others:
        text += (
            " (" + "; ".join(f"{r['mapping']} mapping: CIDEr {number(r['CIDEr'], 3)}" for r in others) + ")"
        )
    return text + "."


def main(argv=None) -> int:
    """`python -m nbutils.train_clipcap`: every TrainClipCapConfig field is an option."""
    return command_line_main(TrainClipCapConfig, train_clipcap, "nbutils.train_clipcap", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
