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

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import save_pretrained_folder
from .image_processors import load_image_processor, processor_output_size
from .model_names import resolve_model_name
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
# A text tower saved with these set (a BERT LM head, a captioner's decoder) is a decoder: causal mask.
DECODER_FLAGS = ("is_decoder", "add_cross_attention")
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


def load_clip_model(
    model_name_or_path: str | os.PathLike, parameter: str = "model_name_or_path"
) -> ClipBundle:
    """Load a CLIPModel, ChineseCLIPModel or VisionTextDualEncoderModel with its tokenizer and image processor.

    `model_name_or_path` is a hub id (downloaded or cached) or a folder written by `save_clip` /
    `save_pretrained`; errors name it as `parameter`. The image processor is loaded with the PIL backend
    (see image_processors.py). A dual encoder whose text tower was saved as a decoder is loaded as an
    encoder (`compose_dual_encoder` says why).
    """
    from transformers import ChineseCLIPModel, CLIPModel, VisionTextDualEncoderModel

    from . import small_cnn  # noqa: F401  (registers the demo's CNN tower with AutoConfig / AutoModel)

    name = resolve_model_name(model_name_or_path, parameter)
    config = _load_config(name, parameter)
    kind = KINDS.get(config.model_type)
    if kind is None:
        raise ValueError(
            f"{parameter}={name!r} is a {config.model_type!r} checkpoint, not a dual encoder "
            f"(expected model_type {', '.join(KINDS)}). To pair a vision and a text checkpoint, "
            f"use compose_dual_encoder(vision_model, text_model)."
        )
    tokenizer = _load_tokenizer(name, parameter)
    try:
        image_processor = load_image_processor(name, parameter=parameter)
    except ValueError as e:
        raise ValueError(
            f"{parameter}={name!r}: the image processor (preprocessor_config.json) is "
            f"missing or unreadable; save_clip writes it beside the model. ({e})"
        ) from e
    model_class = {
        "clip": CLIPModel,
        "chinese_clip": ChineseCLIPModel,
        "dual_encoder": VisionTextDualEncoderModel,
    }[kind]
    if kind == "dual_encoder":
        config.text_config = _as_encoder(config.text_config, parameter, name)
    try:
        model = model_class.from_pretrained(name, config=config)
    except OSError as e:
        raise ValueError(f"{parameter}={name!r}: could not load the weights ({e})") from e

    _check_vocab(tokenizer, model.config.text_config, parameter, name)
    _check_processor_fits(image_processor, model.config.vision_config, parameter, name)
    _cap_max_length(tokenizer, model.config.text_config)
    return ClipBundle(model=model, tokenizer=tokenizer, image_processor=image_processor, kind=kind)


def compose_dual_encoder(
    vision_model: str | os.PathLike, text_model: str | os.PathLike, projection_dim: int = 512
) -> ClipBundle:
    """Pair a pretrained vision tower and a pretrained text tower, as the HF contrastive-image-text example does.

    `vision_model`: a ViT-like checkpoint or a CLIP checkpoint (its vision tower is used);
    `text_model`: a BERT / RoBERTa checkpoint such as hfl/chinese-roberta-wwm-ext, or a CLIP checkpoint
    (its text tower is used). The towers keep their pretrained weights, but `visual_projection` and
    `text_projection` are NEW and RANDOM: the model means nothing until trained. `logit_scale` is set to
    ln(1/0.07). Tokenizer from `text_model`, image processor from `vision_model`.

    Towers that would embed nonsense are repaired, with a printed note, or refused:
    - a text tower saved as a decoder (`is_decoder` / `add_cross_attention`: BertLMHeadModel checkpoints,
      the BERT decoder of train_encoder_decoder) is loaded as an encoder. Kept as a decoder, its causal
      mask lets [CLS] see only itself, so every caption gets the same embedding.
    - a pooler the checkpoint lacks (classification checkpoints such as google/vit-base-patch16-224, LM-head
      checkpoints) starts as the identity instead of at random: the tower pools its own first-token
      features (ViT: exactly what its classifier saw), which a frozen tower (lock_image, LiT) keeps.
    - a tower whose output has no pooled embedding (GPT-2, ELECTRA, ...), or other weights missing from
      the checkpoint, is refused.
    """
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    vision_name = resolve_model_name(vision_model, "vision_model")
    text_name = resolve_model_name(text_model, "text_model")
    vision_config = _load_config(vision_name, "vision_model")
    text_config = _load_config(text_name, "text_model")
    # Whole dual encoders other than CLIP would be loaded as the tower whole and break later.
    if vision_config.model_type != "clip" and (
        hasattr(vision_config, "text_config") or not hasattr(vision_config, "image_size")
    ):
        raise ValueError(
            f"vision_model={vision_name!r} is a {vision_config.model_type!r} checkpoint, not a vision "
            f"encoder (ViT-like or CLIP). Load whole CLIP-style models with load_clip_model."
        )
    if text_config.model_type != "clip" and (
        hasattr(text_config, "vision_config") or not hasattr(text_config, "vocab_size")
    ):
        raise ValueError(
            f"text_model={text_name!r} is a {text_config.model_type!r} checkpoint, not a text encoder: "
            f"give a BERT / RoBERTa-like checkpoint or a CLIP checkpoint (its text tower is used), or "
            f"load a whole dual encoder with load_clip_model."
        )
    vision_tower_config = vision_config.vision_config if vision_config.model_type == "clip" else vision_config
    text_tower_config = text_config.text_config if text_config.model_type == "clip" else text_config

    # Cheap checks first, so a missing tokenizer is reported before the weights are read.
    tokenizer = _load_tokenizer(text_name, "text_model")
    _check_vocab(tokenizer, text_tower_config, "text_model", text_name)
    try:
        image_processor = load_image_processor(vision_name, parameter="vision_model")
    except ValueError as e:
        raise ValueError(
            f"vision_model={vision_name!r}: no usable image processor (preprocessor_config.json) "
            f"in this checkpoint. ({e})"
        ) from e
    _check_processor_fits(image_processor, vision_tower_config, "vision_model", vision_name)

    vision, vision_new_pooler = _load_tower(vision_name, "vision_model", vision_config, vision_tower_config)
    text, text_new_pooler = _load_tower(text_name, "text_model", text_config, text_tower_config)
    size = vision_tower_config.image_size
    height, width = (size, size) if isinstance(size, int) else size[:2]
    pixels = torch.zeros(1, getattr(vision_tower_config, "num_channels", 3), height, width)
    _check_pools(
        vision, dict(pixel_values=pixels), "vision_model", vision_name, "a ViT-like or CLIP checkpoint"
    )
    words = tokenizer(["a"], return_tensors="pt")
    _check_pools(
        text,
        dict(input_ids=words.input_ids, attention_mask=words.attention_mask),
        "text_model",
        text_name,
        "a BERT / RoBERTa-like checkpoint or a CLIP checkpoint",
    )
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision.config, text.config, projection_dim=projection_dim, logit_scale_init_value=LOGIT_SCALE_INIT
    )
    model = VisionTextDualEncoderModel(config, vision_model=vision, text_model=text)
    # After the wrapper is built: it re-points each tower's config at its own, which is what is saved.
    if vision_new_pooler:
        _pass_first_token_through(model.vision_model, "vision_model", vision_name)
    if text_new_pooler:
        _pass_first_token_through(model.text_model, "text_model", text_name)
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
    own ViT also locks its `proj`. Here it stays trainable because composed models start with random
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


def _load_config(name: str, parameter: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{parameter}={name!r}: could not load a model config ({type(e).__name__}: {e})"
        ) from e


def _as_encoder(config, parameter: str, name: str):
    """`config` with the decoder settings a text tower must not have turned off (a printed note says so)."""
    flags = [flag for flag in DECODER_FLAGS if getattr(config, flag, False)]
    if not flags:
        return config
    config = copy.deepcopy(config)
    for flag in flags:
        setattr(config, flag, False)
    unused = " (its cross-attention weights are left unused)" if "add_cross_attention" in flags else ""
    print(
        f"note: {parameter}={name!r} was saved as a decoder ({', '.join(f'{f}=True' for f in flags)}); "
        f"it is loaded as an encoder{unused}. As a decoder its causal mask would let [CLS] see only "
        f"itself, giving every caption the same embedding."
    )
    return config


def _load_tower(name: str, parameter: str, config, tower_config):
    """(the tower, whether its pooler is missing from the checkpoint); refuses other missing weights."""
    from transformers import AutoModel, CLIPTextModel, CLIPVisionModel

    model_class = AutoModel
    if config.model_type == "clip":
        model_class = CLIPVisionModel if parameter == "vision_model" else CLIPTextModel
    if parameter == "text_model":
        tower_config = _as_encoder(tower_config, parameter, name)
    try:
        tower, info = model_class.from_pretrained(name, config=tower_config, output_loading_info=True)
    except OSError as e:
        raise ValueError(f"{parameter}={name!r}: could not load the weights ({e})") from e
    missing = sorted(info["missing_keys"])
    new_pooler = [key for key in missing if key.startswith("pooler.")]
    others = [key for key in missing if key not in new_pooler]
    if others:
        raise ValueError(
            f"{parameter}={name!r}: {len(others)} weights of its {type(tower).__name__} are not in the "
            f"checkpoint ({', '.join(others[:3])}, ...) and would start at random; the checkpoint holds "
            f"another kind of model. Give a checkpoint of the tower itself."
        )
    return tower, bool(new_pooler)


def _check_pools(tower, inputs: dict, parameter: str, name: str, instead: str) -> None:
    """Refuse a tower whose output has no `pooler_output`, the one embedding VisionTextDualEncoderModel projects."""
    was_training = tower.training
    tower.eval()
    with torch.no_grad():
        output = tower(**inputs)
    tower.train(was_training)
    if getattr(output, "pooler_output", None) is None:
        raise ValueError(
            f"{parameter}={name!r}: a {tower.config.model_type!r} model gives no pooled embedding "
            f"(pooler_output), which is what VisionTextDualEncoderModel projects. Use {instead}."
        )


def _pass_first_token_through(tower, parameter: str, name: str) -> None:
    """Make a pooler the checkpoint lacked the identity on the first token, instead of a random projection."""
    from transformers.activations import ACT2FN

    dense = getattr(tower.pooler, "dense", None)
    if not isinstance(dense, torch.nn.Linear) or dense.in_features != dense.out_features:
        print(
            f"note: {parameter}={name!r} has no pooler weights; its pooler starts at random, so train "
            f"this tower rather than freeze it"
        )
        return
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.in_features))
        if dense.bias is not None:
            dense.bias.zero_()
    linear = hasattr(tower.config, "pooler_act")  # ViT-like: pool exactly the features its classifier saw
    if linear:
        tower.config.pooler_act = "linear"
        tower.pooler.activation = ACT2FN["linear"]
    print(
        f"note: {parameter}={name!r} has no pooler weights (a classification or language-model "
        f"checkpoint); its pooler is set to pass the first token's features through"
        f"{'' if linear else ' tanh'} instead of starting at random, so a frozen tower stays meaningful"
    )


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
