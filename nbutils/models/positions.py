"""Fixed 2-D sine-cosine position embeddings for a ViT trained from scratch (MAE's initialisation).

A ViT built from a config starts with position embeddings drawn at std 0.02, far below its patch embeddings:
position is then almost invisible next to content, and a decoder cross-attending to the encoder cannot tell
the grid cells apart until training has grown the table. Starting the table from 2-D sine-cosine values (the
first half of the channels encode the row, the second half the column) at the patch embeddings' own scale
makes every patch's place readable from the first step; the table stays a trainable parameter and the model
stays a plain `ViTModel`. Pretrained encoders are never touched.
"""

from __future__ import annotations

import math

import torch


def sincos_2d(rows: int, cols: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(rows * cols, dim) table in row-major patch order: [sin(y w), cos(y w), sin(x w), cos(x w)] per patch.

    The frequencies w run geometrically from 1 to 1/temperature; when `dim` is not a multiple of 4 the last
    `dim % 4` channels are 0.
    """
    if dim < 4:
        raise ValueError(f"dim={dim}: 2-D sine-cosine position embeddings need at least 4 channels")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    y, x = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )
    parts = [f(c.reshape(-1, 1) * omega) for c in (y, x) for f in (torch.sin, torch.cos)]
    table = torch.cat(parts, dim=1).float()
    return torch.nn.functional.pad(table, (0, dim - table.shape[1]))


@torch.no_grad()
def init_sincos_positions(vit) -> None:
    """Overwrite a ViTModel's position embeddings with `sincos_2d` for its patch grid (the [CLS] slot gets 0).

    The table is scaled to the patch projection's output scale for unit-variance pixels (weight std x
    sqrt(fan-in)), so position and content start equally loud whatever the initialisation's std.
    """
    table = vit.embeddings.position_embeddings  # (1, 1 + n_patches, hidden)
    n_patches, dim = table.shape[1] - 1, table.shape[2]
    grid = math.isqrt(n_patches)
    if grid * grid != n_patches:
        raise ValueError(f"expected a square patch grid, got {n_patches} patches")
    weight = vit.embeddings.patch_embeddings.projection.weight  # (hidden, channels, patch, patch)
    content_rms = weight.std() * math.sqrt(weight[0].numel())
    sincos = sincos_2d(grid, grid, dim)
    table[0, 0].zero_()
    table[0, 1:] = (sincos * content_rms / sincos.pow(2).mean().sqrt()).to(table.dtype)
