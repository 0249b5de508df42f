"""CLIP image embeddings of a whole image cache, computed once and kept on disk (safetensors, never pickle).

ClipCap trains and captions from these embeddings, several captions per image and often several runs (one per
mapping type): each image goes through the image tower once. The file's name is a hash of

- the encoder: every weight of the CLIP model (names, shapes, dtypes, values), so a retrained model or another
  checkpoint gets its own file, whatever folder or hub id it came from;
- the images: the image cache's fingerprint (every input path with its size and modification time, and the
  geometry; processdata_03 rebuilds the cache when an image changes), and the normalisation;

so a changed encoder or image means a new file, computed again; an unchanged one is read back.
A file is written under a temporary name and renamed when complete: an interrupted run leaves none.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..files import atomic_path
from ..progress import tqdm
from .cache import ImageCache
from .datasets import normalize_pixel_values

EMBEDDINGS_KEY = "image_embeds"


def model_fingerprint(model) -> str:
    """sha256 over a model's state dict: names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def embeddings_key(model, cache: ImageCache, mean, std) -> str:
    """The cache file's key: a hash of the encoder's weights, the image cache's fingerprint and the normalisation."""
    parts = {
        "model": model_fingerprint(model),
        "images": cache.meta["fingerprint"],
        "count": len(cache),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def cached_image_embeddings(
    clip_model,
    cache: ImageCache,
    mean,
    std,
    embeddings_dir: str | os.PathLike,
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[torch.Tensor, Path, bool]:
    """Projected (not normalised) image embeddings of every image in `cache`, in cache row order.

    Returns (embeddings (N, D) float32 on the CPU, the file, whether it was read back rather than computed).
    `clip_model` is any dual encoder with `get_image_features` (nbutils.models.clip.image_features).
    """
    from safetensors.torch import load_file, save_file

    from ..models.clip import image_features

    path = Path(embeddings_dir) / f"{embeddings_key(clip_model, cache, mean, std)}.safetensors"
    if path.is_file():
        embeddings = load_file(str(path))[EMBEDDINGS_KEY]
        if len(embeddings) == len(cache):
            return embeddings, path, True
    was_training = clip_model.training
    clip_model.eval()
    parameter = next(clip_model.parameters())
    parts = []
    try:
        starts = range(0, len(cache), batch_size)
        for start in tqdm(starts, desc="CLIP image embeddings", disable=not progress or len(starts) < 2):
            rows = list(range(start, min(start + batch_size, len(cache))))
            pixels = torch.from_numpy(cache.uint8(rows)).permute(0, 3, 1, 2).to(parameter.device)
            pixels = normalize_pixel_values(pixels, mean, std, dtype=parameter.dtype)
            parts.append(image_features(clip_model, pixels).float().cpu())
    finally:
        clip_model.train(was_training)
    embeddings = torch.cat(parts) if parts else torch.zeros(0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({EMBEDDINGS_KEY: embeddings.contiguous()}, str(tmp), metadata={"images": str(len(cache))})
    return embeddings, path, False
