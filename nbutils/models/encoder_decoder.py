"""Captioning models: a vision encoder and a text decoder with cross-attention (VisionEncoderDecoderModel).

Two decoder families, chosen by `decoder`:
    "gpt2"  GPT-2 with cross-attention (`gpt2`, `uer/gpt2-chinese-cluecorpussmall`): the ViT → GPT-2 captioner
    "bert"  a BERT LM head with cross-attention (`bert-base-chinese`, `bert-base-uncased`): BLIP's decoder

Token conventions are the part that silently goes wrong, so one function sets them (`set_caption_token_ids`):
the start, end and pad ids come from the tokenizer (`caption_special_ids`), never from the decoder's config,
and go into both `model.config` and `model.generation_config` (generate() reads the latter; transformers 5
refuses generation settings on the former). The UER Chinese GPT-2 config says bos/eos 50256, outside its
21128-token vocabulary: its BertTokenizer's [CLS]/[SEP] are used instead.

A `EncoderDecoderBundle` keeps the model with its tokenizer and image processor; `save_encoder_decoder` writes all three
into one folder that plain transformers loads (`VisionEncoderDecoderModel.from_pretrained(path)`,
`AutoTokenizer.from_pretrained(path)`, `ViTImageProcessor.from_pretrained(path)`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import save_pretrained_folder
from .image_processors import load_image_processor
from .model_names import resolve_model_name
from .positions import init_sincos_positions
from .tokenizer import caption_special_ids
from .vision_towers import vit_config

DECODERS = ("gpt2", "bert")
MODEL_TYPES = {"gpt2": "gpt2", "bert": "bert"}  # decoder family -> the decoder config's model_type


@dataclass
class EncoderDecoderBundle:
    """A captioner with the tokenizer and image processor that go with it."""

    model: Any
    tokenizer: Any
    image_processor: Any
    decoder: str  # "gpt2" or "bert"


def set_caption_token_ids(model, tokenizer) -> dict[str, int]:
    """Put the tokenizer's start / end / pad ids into the model's config and generation config; return them."""
    ids = caption_special_ids(tokenizer)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = ids["start"]
        config.eos_token_id = ids["end"]
        config.pad_token_id = ids["pad"]
    model.generation_config.bos_token_id = ids["start"]
    decoder_config = model.config.decoder
    decoder_config.bos_token_id, decoder_config.eos_token_id = ids["start"], ids["end"]
    decoder_config.pad_token_id = ids["pad"]
    return ids


def build_demo_encoder_decoder(
    tokenizer,
    image_size: int = 64,
    decoder: str = "gpt2",
    patch_size: int = 8,
    hidden_size: int = 128,
    encoder_layers: int = 4,
    decoder_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_length: int = 64,
    dropout: float = 0.0,
    initializer_range: float = 0.0,
    image_processor=None,
) -> EncoderDecoderBundle:
    """A small random ViT encoder + `decoder` ("gpt2" or "bert") captioner for demos and tests.

    The decoder's vocabulary comes from `tokenizer`; `max_length` is its position table's size. The ViT's
    position embeddings start as 2-D sine-cosine values (`positions.init_sincos_positions`). `dropout` is
    the decoder's (the configs' default 0.1 only slows a short from-scratch run; nanoGPT pretrains with 0).
    `initializer_range` is the weights' init std, 0 for 1/sqrt(hidden_size): the configs' 0.02 suits widths
    of 768 and more, and at width 128 it shrinks every signal and gradient through the cross-attention path
    (benchmarks/captioner_recipe.md: size 62 -> 96 %, shape 30 -> 43 % on the demo at 800 steps).
    `patch_size` need not divide `image_size`: pixels past the last whole patch are not seen (64 px with
    21 px patches: one patch per cell of the demo's 3x3 grid, the last pixel row and column unused).
    """
    from transformers import (
        BertConfig,
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    _check_decoder(decoder)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    encoder_config = vit_config(
        image_size, patch_size, hidden_size, encoder_layers, num_heads, intermediate_size, initializer_range
    )
    init_std = encoder_config.initializer_range
    ids = caption_special_ids(tokenizer)
    if decoder == "gpt2":
        # the tokenizer's ids from the start: GPT2Config's defaults (50256) lie outside a small vocabulary
        decoder_config = GPT2Config(
            vocab_size=len(tokenizer),
            bos_token_id=ids["start"],
            eos_token_id=ids["end"],
            pad_token_id=ids["pad"],
            n_positions=max_length,
            n_embd=hidden_size,
            n_layer=decoder_layers,
            n_head=num_heads,
            n_inner=intermediate_size,
            add_cross_attention=True,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            initializer_range=init_std,
        )
    else:
        decoder_config = BertConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=max_length,
            hidden_size=hidden_size,
            num_hidden_layers=decoder_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            initializer_range=init_std,
            pad_token_id=tokenizer.pad_token_id,
            is_decoder=True,
            add_cross_attention=True,
        )
    model = VisionEncoderDecoderModel(
        VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder_config, decoder_config)
    )
    init_sincos_positions(model.encoder)
    set_caption_token_ids(model, tokenizer)
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_length)
    image_processor = image_processor or load_image_processor("vit", image_size)
    return EncoderDecoderBundle(model, tokenizer, image_processor, decoder)


def load_encoder_decoder(
    encoder: str | os.PathLike, decoder_model: str | os.PathLike, decoder: str
) -> EncoderDecoderBundle:
    """Pair a pretrained vision encoder and a pretrained decoder (hub ids or folders) with fresh cross-attention.

    `decoder` ("gpt2" or "bert") must match `decoder_model`'s family. Tokenizer from `decoder_model`,
    image processor (PIL backend) from `encoder`.
    """
    from transformers import AutoConfig, AutoTokenizer, VisionEncoderDecoderModel

    _check_decoder(decoder)
    encoder = resolve_model_name(encoder, "encoder")
    decoder_model = resolve_model_name(decoder_model, "decoder_model")
    image_processor = load_image_processor(encoder, parameter="encoder")
    try:
        model_type = AutoConfig.from_pretrained(decoder_model).model_type
        tokenizer = AutoTokenizer.from_pretrained(decoder_model)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"decoder_model={decoder_model!r}: could not load its config or tokenizer ({e})"
        ) from e
    if model_type != MODEL_TYPES[decoder]:
        raise ValueError(
            f"decoder={decoder!r} but decoder_model={decoder_model!r} is a {model_type!r} checkpoint; "
            f"use decoder={_family(model_type)!r} or a {MODEL_TYPES[decoder]} checkpoint"
        )
    # The decoder config is passed explicitly, with is_decoder set: transformers 5.24's
    # from_encoder_decoder_pretrained reads `decoder_config.is_decoder`, which GPT2Config does not define
    # (AttributeError otherwise).
    decoder_config = AutoConfig.from_pretrained(decoder_model, add_cross_attention=True)
    decoder_config.is_decoder = True
    model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(
        encoder, decoder_model, decoder_config=decoder_config
    )
    set_caption_token_ids(model, tokenizer)
    return EncoderDecoderBundle(model, tokenizer, image_processor, decoder)


def load_saved_encoder_decoder(path: str | os.PathLike) -> EncoderDecoderBundle:
    """Reload a folder `save_encoder_decoder` wrote (or a VisionEncoderDecoder folder with tokenizer and processor)."""
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r} is not a saved model folder (no config.json)")
    model = VisionEncoderDecoderModel.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return EncoderDecoderBundle(
        model, tokenizer, load_image_processor(path), _family(model.config.decoder.model_type)
    )


def save_encoder_decoder(bundle: EncoderDecoderBundle, out_dir: str | os.PathLike) -> Path:
    """Write model, tokenizer and image processor into one folder, atomically (a saved model there is replaced)."""
    return save_pretrained_folder(out_dir, bundle.model, bundle.tokenizer, bundle.image_processor)


def _check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")


def _family(model_type: str) -> str:
    return next((family for family, t in MODEL_TYPES.items() if t == model_type), model_type)
