"""Configs of the small image towers the demo models are built from (no download): a ViT or a CNN.

- `vit_config`: the captioner's encoder, and the CLIP's with `vision_tower="vit"`. Its weights start at std
  1/sqrt(hidden_size) (the configs' 0.02 suits widths of 768 and more; at width 128 it shrinks every signal),
  and `positions.init_sincos_positions` gives its position table a readable start.
- `small_cnn_config`: the demo CLIP's default tower (`small_cnn.py`). A ViT embeds each patch with one linear
  map, so telling a star from a cross inside a patch is left to the layers above, and from scratch the demo's
  ViT learns colour and size but not shape, even when trained on shape labels directly (README, train_clip).
"""

from __future__ import annotations

import math

VISION_TOWERS = ("vit", "cnn")


def init_std(hidden_size: int, initializer_range: float = 0.0) -> float:
    """The weights' init std: `initializer_range`, or 1/sqrt(hidden_size) when it is 0."""
    if initializer_range < 0:
        raise ValueError(f"initializer_range must be >= 0 (0: 1/sqrt(hidden_size)), got {initializer_range}")
    return initializer_range or 1.0 / math.sqrt(hidden_size)


def vit_config(
    image_size: int,
    patch_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    initializer_range: float = 0.0,
):
    """A `ViTConfig`. `patch_size` need not divide `image_size`: pixels past the last whole patch are not
    seen (64 px with 21 px patches: one patch per cell of the demo's 3x3 grid, the last row and column unused).
    """
    from transformers import ViTConfig

    if not 1 <= patch_size <= image_size:
        raise ValueError(f"patch_size={patch_size} must be between 1 and image_size={image_size}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be a multiple of num_heads={num_heads}")
    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        initializer_range=init_std(hidden_size, initializer_range),
    )


def small_cnn_config(image_size: int, hidden_size: int, num_stages: int):
    """A `SmallCnnConfig` of `num_stages` stages, widths doubling up to `hidden_size`."""
    from .small_cnn import SmallCnnConfig

    if num_stages < 1 or hidden_size % 2 ** (num_stages - 1):
        raise ValueError(
            f"hidden_size={hidden_size} must be divisible by 2**(num_stages - 1) for num_stages={num_stages} >= 1"
        )
    widths = [hidden_size // 2 ** (num_stages - 1 - i) for i in range(num_stages)]
    return SmallCnnConfig(image_size=image_size, hidden_sizes=widths)
