"""Any captioner the training notebooks saved, behind one interface: uint8 images in, captions out.

    captioner = load_any_captioner("train_clipcap", run_dir="outputs/demo")     # this run's stage
    captioner = load_any_captioner("path/to/model")                             # a saved folder
    captioner.caption(uint8_images, decoding="beam")                            # (B, 3, H, W) uint8

Two kinds, told apart by the folder's config.json:
    "encoder_decoder"  a VisionEncoderDecoderModel (train_encoder_decoder; or a hub id with tokenizer and processor)
    "clipcap"          a ClipCapModel (train_clipcap); its CLIP (`config.clip_model`) embeds the images first

`image_processor` is the processor whose geometry the images must be cached with (the encoder's, or the CLIP's
for ClipCap), so callers build one image cache per geometry and feed uint8 batches from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.cache import processor_mean_std
from ..data.datasets import normalize_pixel_values
from .decoding import generate_captions
from .model_names import resolve_model_name

STAGES = ("train_encoder_decoder", "train_clipcap")


@dataclass
class LoadedCaptioner:
    """A captioner ready to caption uint8 image batches (see the module docstring)."""

    name: str
    kind: str  # "encoder_decoder" or "clipcap"
    model: Any
    tokenizer: Any
    image_processor: Any
    clip: Any = None  # ClipCap's image side (a ClipBundle)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, decoding: str | dict = "greedy", seed: int | None = None):
        """Captions of uint8 (B, 3, H, W) images: per image, num_return_sequences dicts (caption, score, token_ids)."""
        encoder = self.clip.model if self.kind == "clipcap" else self.model
        parameter = next(encoder.parameters())
        mean, std = processor_mean_std(self.image_processor)
        pixels = normalize_pixel_values(images.to(parameter.device), mean, std, dtype=parameter.dtype)
        self.model.eval()
        if self.kind == "clipcap":
            from .clip import image_features

            embeds = image_features(self.clip.model.eval(), pixels)
            return generate_captions(
                self.model, self.tokenizer, decoding=decoding, seed=seed, image_embeds=embeds
            )
        return generate_captions(self.model, self.tokenizer, pixels, decoding=decoding, seed=seed)


def load_any_captioner(
    source: str | os.PathLike, run_dir: str | os.PathLike | None = None, parameter: str = "captioner"
) -> LoadedCaptioner:
    """A stage name of `run_dir` ("train_encoder_decoder", "train_clipcap"), a saved folder or a hub id.

    Errors name `source` as the value of `parameter`."""
    from transformers import AutoConfig

    from . import clipcap  # noqa: F401  registers the ClipCap config type with AutoConfig

    source = os.fspath(source)
    if source in STAGES:
        if run_dir is None:
            raise ValueError(f"captioner {source!r} is a stage name: give the run_dir it belongs to")
        path = Path(run_dir) / source / "model"
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} holds no saved model: run {source} for this run first")
        name, location = source, str(path)
    else:
        name, location = source, resolve_model_name(source, parameter)
    try:
        model_type = AutoConfig.from_pretrained(location).model_type
    except (OSError, ValueError) as e:
        raise ValueError(f"could not read the config of captioner {source!r}: {e}") from e
    if model_type == "nbutils_clipcap":
        from .clip import load_clip_model
        from .clipcap import load_saved_clipcap

        bundle = load_saved_clipcap(location)
        clip_source = bundle.model.config.clip_model
        if not clip_source:
            raise ValueError(
                f"ClipCap model {source!r} does not name the CLIP that made its embeddings (config.clip_model); "
                "set it in config.json to that CLIP's folder or hub id"
            )
        try:
            clip = load_clip_model(clip_source, parameter="clip_model")
        except ValueError as e:
            raise ValueError(
                f"captioner {source!r}: the CLIP its config.json names cannot be loaded: {e}"
            ) from e
        return LoadedCaptioner(name, "clipcap", bundle.model, bundle.tokenizer, clip.image_processor, clip)
    if model_type == "vision-encoder-decoder":
        from .encoder_decoder import load_saved_encoder_decoder

        bundle = load_saved_encoder_decoder(location)
        return LoadedCaptioner(
            name, "encoder_decoder", bundle.model, bundle.tokenizer, bundle.image_processor
        )
    raise ValueError(
        f"captioner {source!r} is a {model_type!r} model; expected a VisionEncoderDecoderModel or a ClipCap model"
    )
