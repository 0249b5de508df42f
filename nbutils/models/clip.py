"""Contrastive dual-encoder models (CLIP, Chinese-CLIP, ViT + BERT): build, load, compose, freeze, save.

Three kinds of checkpoint are handled the same way by the rest of the workbench:
    "clip"          CLIPModel                   (openai/clip-vit-base-patch32, ...)
    "chinese_clip"  ChineseCLIPModel            (OFA-Sys/chinese-clip-vit-base-patch16, ...)
    "dual_encoder"  VisionTextDualEncoderModel  (any vision tower + any text tower, as in the
                                                  transformers contrastive-image-text example)
All three have `vision_model`, `text_model`, `visual_projection`, `text_projection` and `logit_scale`,
and `get_image_features` / `get_text_features` return a ModelOutput whose `pooler_output` is the
projected (not normalised) embedding in transformers 5.

A `ClipBundle` keeps the model with the tokenizer and image processor it was trained with; `save_clip`
writes all three into one folder that `load_clip_model` and plain `AutoModel.from_pretrained` reload.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import save_pretrained_folder
from .image_processors import load_image_processor, processor_output_size
from .positions import init_sincos_positions
from .vision_towers import VISION_TOWERS, small_cnn_config, vit_config

# CLIP's temperature: logits = exp(logit_scale) * cosine, exp(ln(1/0.07)) = 14.3 at the start.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
KINDS = {  # config.model_type -> kind
    "clip": "clip",
    "chinese_clip": "chinese_clip",
    "vision-text-dual-encoder": "dual_encoder",
}
# Any one of these in a local folder means a tokenizer was saved there. Without them AutoTokenizer
# silently builds an empty tokenizer (2 or 5 special tokens) from the model type alone.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# RoBERTa-style position tables start after the padding index, so they hold 2 fewer tokens.
OFFSET_POSITIONS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}


@dataclass
class ClipBundle:
    """A dual encoder with the tokenizer and image processor that go with it."""

    model: Any
    tokenizer: Any
    image_processor: Any
    kind: str  # "clip", "chinese_clip" or "dual_encoder"


# -----------------------------------------------------------------------------
# The demo model, built from small configs (no download)


def build_demo_dual_encoder(
    tokenizer,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 256,
    projection_dim: int = 128,
    max_text_length: int = 64,
    text_tower: str = "clip",
    text_layers: int | None = None,
    vision_tower: str = "vit",
    vision_width: int = 256,
    initializer_range: float = 0.0,
):
    """A small random image tower + text tower `VisionTextDualEncoderModel` for demos and tests (train mode).

    vision_tower "vit": a ViT (`patch_size`, `num_layers` layers at `hidden_size`, init std 1/sqrt(hidden_size)
    unless `initializer_range` is set, sine-cosine positions). "cnn": `small_cnn.SmallCnnModel` with
    `num_layers` stages doubling up to `vision_width` channels (vision_towers.py says why).

    text_tower "clip": CLIP's text transformer (pre-LayerNorm, causal, pooled at the end token, which is
    [SEP] for these tokenizers). "bert": BERT pooled at [CLS]; built from scratch its [CLS] embedding is
    the same for every caption at first (cosine 1.0 between captions), and contrastive training sits at
    chance for hundreds of steps (README, train_clip). `text_layers` defaults to `num_layers`.
    The text vocabulary and pad id come from `tokenizer`; `tokenizer.model_max_length` is lowered to
    `max_text_length` (the position table's size) so `truncation=True` can never overflow it.
    `logit_scale` starts at ln(1/0.07), CLIP's initial temperature of 0.07.
    """
    from transformers import (
        BertConfig,
        CLIPTextConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    if text_tower not in ("clip", "bert"):
        raise ValueError(f"text_tower must be 'clip' or 'bert'; got {text_tower!r}")
    if vision_tower not in VISION_TOWERS:
        raise ValueError(f"vision_tower must be one of {VISION_TOWERS}; got {vision_tower!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be a multiple of num_heads={num_heads}")
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; use train_tokenizer or a BERT-style tokenizer")
    if vision_tower == "vit":
        vision_config = vit_config(
            image_size, patch_size, hidden_size, num_layers, num_heads, intermediate_size, initializer_range
        )
    else:
        vision_config = small_cnn_config(image_size, vision_width, num_layers)
    tower = dict(hidden_size=hidden_size, num_attention_heads=num_heads, intermediate_size=intermediate_size)
    text = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=max_text_length,
        num_hidden_layers=text_layers or num_layers,
        **tower,
    )
    if text_tower == "bert":
        text_config = BertConfig(**text)
    else:
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        if end is None:
            raise ValueError("text_tower='clip' needs a tokenizer with an end token ([SEP] or eos)")
        if end == 2:  # CLIPTextModel treats eos id 2 as its legacy config and pools at the largest token id
            raise ValueError("text_tower='clip' needs an end-token id other than 2; use text_tower='bert'")
        # CLIPTextModel pools at each row's first `eos_token_id`: the end of the caption.
        text_config = CLIPTextConfig(eos_token_id=end, bos_token_id=start, **text)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_config, text_config, projection_dim=projection_dim, logit_scale_init_value=LOGIT_SCALE_INIT
    )
    model = VisionTextDualEncoderModel(config)
    if vision_tower == "vit":
        init_sincos_positions(model.vision_model)
    _reset_logit_scale(model)
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_text_length)
    return model


# -----------------------------------------------------------------------------
# Loading and composing checkpoints


def load_clip_model(model_name_or_path: str | os.PathLike) -> ClipBundle:
    """Load a CLIPModel, ChineseCLIPModel or VisionTextDualEncoderModel with its tokenizer and image processor.

    `model_name_or_path` is a hub id (downloaded or cached) or a folder written by `save_clip` /
    `save_pretrained`. The image processor is loaded with the PIL backend (see image_processors.py).
    """
    from transformers import ChineseCLIPModel, CLIPModel, VisionTextDualEncoderModel

    from . import small_cnn  # noqa: F401  (registers the demo's CNN tower with AutoConfig / AutoModel)

    name = _check_exists(model_name_or_path, "model_name_or_path")
    config = _load_config(name, "model_name_or_path")
    kind = KINDS.get(config.model_type)
    if kind is None:
        raise ValueError(
            f"model_name_or_path={name!r} is a {config.model_type!r} checkpoint, not a dual encoder "
            f"(expected model_type {', '.join(KINDS)}). To pair a vision and a text checkpoint, "
            f"use compose_dual_encoder(vision_model, text_model)."
        )
    tokenizer = _load_tokenizer(name, "model_name_or_path")
    try:
        image_processor = load_image_processor(name)
    except ValueError as e:
        raise ValueError(
            f"model_name_or_path={name!r}: the image processor (preprocessor_config.json) is "
            f"missing or unreadable; save_clip writes it beside the model. ({e})"
        ) from e
    model_class = {
        "clip": CLIPModel,
        "chinese_clip": ChineseCLIPModel,
        "dual_encoder": VisionTextDualEncoderModel,
    }[kind]
    try:
        model = model_class.from_pretrained(name)
    except OSError as e:
        raise ValueError(f"model_name_or_path={name!r}: could not load the weights ({e})") from e

    _check_vocab(tokenizer, model.config.text_config, "model_name_or_path", name)
    _check_processor_fits(image_processor, model.config.vision_config, "model_name_or_path", name)
    _cap_max_length(tokenizer, model.config.text_config)
    return ClipBundle(model=model, tokenizer=tokenizer, image_processor=image_processor, kind=kind)


def compose_dual_encoder(
    vision_model: str | os.PathLike, text_model: str | os.PathLike, projection_dim: int = 512
) -> ClipBundle:
    """Pair a pretrained vision tower and a pretrained text tower, as the HF contrastive-image-text example does.

    `vision_model`: a ViT-like checkpoint or a CLIP checkpoint (its vision tower is used);
    `text_model`: a BERT / RoBERTa checkpoint such as hfl/chinese-roberta-wwm-ext. The towers keep
    their pretrained weights, but `visual_projection` and `text_projection` are NEW and RANDOM (so
    are BERT/ViT poolers missing from a checkpoint): the model means nothing until trained.
    `logit_scale` is set to ln(1/0.07). Tokenizer from `text_model`, image processor from `vision_model`.
    """
    from transformers import VisionTextDualEncoderModel

    vision_name = _check_exists(vision_model, "vision_model")
    text_name = _check_exists(text_model, "text_model")
    vision_config = _load_config(vision_name, "vision_model")
    text_config = _load_config(text_name, "text_model")
    # Whole dual encoders other than CLIP would be loaded as the "vision tower" whole and break later.
    if vision_config.model_type != "clip" and (
        hasattr(vision_config, "text_config") or not hasattr(vision_config, "image_size")
    ):
        raise ValueError(
            f"vision_model={vision_name!r} is a {vision_config.model_type!r} checkpoint, not a vision "
            f"encoder (ViT-like or CLIP). Load whole CLIP-style models with load_clip_model."
        )
    if hasattr(text_config, "vision_config") or not hasattr(text_config, "vocab_size"):
        raise ValueError(
            f"text_model={text_name!r} is a {text_config.model_type!r} checkpoint, not a text "
            f"encoder (BERT / RoBERTa-like)."
        )

    # Cheap checks first, so a missing tokenizer is reported before the weights are read.
    tokenizer = _load_tokenizer(text_name, "text_model")
    _check_vocab(tokenizer, text_config, "text_model", text_name)
    try:
        image_processor = load_image_processor(vision_name)
    except ValueError as e:
        raise ValueError(
            f"vision_model={vision_name!r}: no usable image processor (preprocessor_config.json) "
            f"in this checkpoint. ({e})"
        ) from e
    tower_config = vision_config.vision_config if vision_config.model_type == "clip" else vision_config
    _check_processor_fits(image_processor, tower_config, "vision_model", vision_name)
    try:
        model = VisionTextDualEncoderModel.from_vision_text_pretrained(
            vision_name, text_name, projection_dim=projection_dim, logit_scale_init_value=LOGIT_SCALE_INIT
        )
    except OSError as e:
        raise ValueError(
            f"could not load the weights of vision_model={vision_name!r} or text_model={text_name!r} ({e})"
        ) from e
    _reset_logit_scale(model)
    _cap_max_length(tokenizer, model.config.text_config)
    return ClipBundle(model=model, tokenizer=tokenizer, image_processor=image_processor, kind="dual_encoder")


def save_clip(bundle: ClipBundle, out_dir: str | os.PathLike) -> Path:
    """Write model, tokenizer and image processor into one folder, atomically.

    The folder reloads with `load_clip_model(out_dir)` or `transformers.AutoModel.from_pretrained(out_dir)`.
    An existing saved model at `out_dir` is replaced; any other non-empty folder is refused.
    """
    return save_pretrained_folder(out_dir, bundle.model, bundle.tokenizer, bundle.image_processor)


# -----------------------------------------------------------------------------
# Features, temperature, freezing


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings, shape (B, projection_dim), NOT normalised."""
    return _pooled(model.get_image_features(pixel_values=pixel_values))


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Projected text embeddings, shape (B, projection_dim), NOT normalised.

    token_type_ids are left out on purpose: BERT-style towers then use their all-zero buffer, which
    is what the tokenizers produce for single sentences.
    """
    return _pooled(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def logit_scale_parameter(model) -> torch.nn.Parameter:
    """The learnable log-temperature (exp of it multiplies the cosine similarities)."""
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, torch.nn.Parameter):
        raise ValueError(
            f"{type(model).__name__} has no logit_scale parameter; expected a CLIP-style dual encoder"
        )
    return scale


def apply_freezing(
    model, lock_image: bool = False, lock_text: bool = False, projections_only: bool = False
) -> dict:
    """Freeze towers for LiT-style or projection-only training; return parameter counts.

    lock_image: the image tower (`vision_model`) gets requires_grad False, `visual_projection` stays
    trainable. This is open_clip's behaviour for towers with a new head (timm models); open_clip's
    own ViT also locks its `proj`. We keep it trainable because composed models start with random
    projections. lock_text: the same for `text_model`. projections_only: both towers locked (only
    the two projections and the temperature train). `logit_scale` always stays trainable.
    Everything not locked is made trainable again, so a second call fully replaces the first.
    Counts are numbers of parameter elements: {"trainable", "frozen", "total"}.
    """
    model.requires_grad_(True)
    if lock_image or projections_only:
        model.vision_model.requires_grad_(False)
    if lock_text or projections_only:
        model.text_model.requires_grad_(False)
    logit_scale_parameter(model).requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def check_image_size(model, image_size: int, parameter: str = "image_size") -> None:
    """Raise ValueError naming `parameter` if `image_size` differs from what the vision tower expects."""
    expected = _side(model.config.vision_config.image_size)
    if _side(image_size) != expected:
        raise ValueError(
            f"{parameter}={image_size} but the vision tower expects {expected}-pixel images; "
            f"rebuild the image cache at {expected} pixels or pick a model made for {image_size}"
        )


# -----------------------------------------------------------------------------
# Helpers


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns a ModelOutput with the projection in pooler_output; 4.x returned the tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _side(size) -> int | tuple:
    if isinstance(size, (list, tuple)):
        return int(size[0]) if len(size) == 2 and size[0] == size[1] else tuple(size)
    return int(size)


def _reset_logit_scale(model) -> None:
    with torch.no_grad():
        logit_scale_parameter(model).fill_(LOGIT_SCALE_INIT)


def _check_exists(name_or_path, parameter: str) -> str:
    """Fail at once on a path that does not exist, instead of trying it as a hub id over the network."""
    name = os.fspath(name_or_path)
    looks_like_path = (
        os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
    )
    if looks_like_path and not os.path.isdir(os.path.expanduser(name)):
        raise ValueError(
            f"{parameter}={name!r}: no such folder. Give a folder written by save_pretrained / "
            f"save_clip, or a hub id such as 'openai/clip-vit-base-patch32'."
        )
    return os.path.expanduser(name)


def _where(name: str) -> str:
    return "local folder" if os.path.isdir(name) else "hub id (is it spelled right and downloaded or cached?)"


def _load_config(name: str, parameter: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{parameter}={name!r}: could not load a model config from this {_where(name)} "
            f"({type(e).__name__}: {e})"
        ) from e


def _load_tokenizer(name: str, parameter: str):
    from transformers import AutoTokenizer

    missing = (
        f"{parameter}={name!r}: the tokenizer is missing (no tokenizer files found); save the "
        f"tokenizer into the checkpoint folder (save_clip does) or use a checkpoint that has one"
    )
    if os.path.isdir(name) and not any(os.path.isfile(os.path.join(name, f)) for f in TOKENIZER_FILES):
        raise ValueError(missing)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(f"{missing} ({type(e).__name__}: {e})") from e
    # A hub checkpoint without tokenizer files still "loads" as a tokenizer of special tokens only.
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ValueError(missing)
    return tokenizer


def _check_vocab(tokenizer, text_config, parameter: str, name: str) -> None:
    # Larger tokenizers produce ids past the embedding table: an IndexError deep in training.
    if len(tokenizer) > text_config.vocab_size:
        raise ValueError(
            f"{parameter}={name!r}: the tokenizer has {len(tokenizer)} tokens but the text tower's "
            f"embedding table only {text_config.vocab_size}; they do not belong together"
        )


def _check_processor_fits(image_processor, vision_config, parameter: str, name: str) -> None:
    made, expected = processor_output_size(image_processor), _side(vision_config.image_size)
    if _side(made) != expected:
        raise ValueError(
            f"{parameter}={name!r}: its image processor makes {made}-pixel images but its vision "
            f"tower expects {expected}; the checkpoint mixes two models"
        )


def _cap_max_length(tokenizer, text_config) -> None:
    # Tokenizers without model_max_length (hfl/chinese-roberta-wwm-ext) report 1e30; truncation=True
    # would then let captions run past the position table.
    limit = getattr(text_config, "max_position_embeddings", None)
    if limit:
        limit -= OFFSET_POSITIONS.get(text_config.model_type, 0)
        tokenizer.model_max_length = min(tokenizer.model_max_length, limit)
