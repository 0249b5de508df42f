"""Normalised image and caption embeddings of a trained dual encoder (no Trainer needed).

What retrieval, zero-shot probes, search and the infer notebook all start from. Images come from the
image cache as uint8 and are normalised on the model's device, like in training.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.datasets import ImageTextDataset, normalize_pixel_values
from ..models import clip as clip_models


@torch.no_grad()
def embed(bundle, dataset: ImageTextDataset, mean, std, batch_size: int = 256, max_length: int = 64):
    """Embeddings of every image and every caption of `dataset`, plus each caption's image index.

    Returns (image_embeds (N_img, D), text_embeds (N_txt, D), text_to_image (N_txt,)), L2-normalised,
    float32 on the CPU: what `nbutils.evaluation.retrieval.retrieval_metrics` takes.
    """
    images = embed_images(bundle, dataset, mean, std, batch_size)
    all_captions = [(i, t) for i, caps in enumerate(dataset.captions) for t in caps]
    texts = [
        embed_texts(bundle, [t for _, t in all_captions[start : start + batch_size]], max_length)
        for start in range(0, len(all_captions), batch_size)
    ]
    text_to_image = np.array([i for i, _ in all_captions])
    return images, torch.cat(texts), text_to_image


@torch.no_grad()
def embed_images(bundle, dataset: ImageTextDataset, mean, std, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised embeddings (N_img, D) of `dataset`'s images, in `image_paths` order, float32 on the CPU."""
    model = bundle.model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    images = []
    for start in range(0, len(dataset.rows), batch_size):
        rows = dataset.rows[start : start + batch_size]
        pixels = torch.from_numpy(dataset.cache.uint8(list(rows))).permute(0, 3, 1, 2).to(device)
        pixels = normalize_pixel_values(pixels, mean, std, dtype=dtype)
        images.append(clip_models.image_features(model, pixels).float().cpu())
    return torch.nn.functional.normalize(torch.cat(images), dim=-1)


@torch.no_grad()
def embed_texts(bundle, texts: list[str], max_length: int = 64) -> torch.Tensor:
    """L2-normalised embeddings of `texts` (one batch), float32 on the CPU."""
    model = bundle.model.eval()
    tok = bundle.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    tok = tok.to(next(model.parameters()).device)
    feats = clip_models.text_features(model, tok["input_ids"], tok["attention_mask"]).float().cpu()
    return torch.nn.functional.normalize(feats, dim=-1)
