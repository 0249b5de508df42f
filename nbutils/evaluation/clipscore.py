"""CLIPScore and RefCLIPScore (Hessel et al. 2021, jmhessel/clipscore) of captions, with any CLIP.

    CLIPScore(c, v)     = w · max(cos(E_c, E_v), 0)                       w = 2.5
    RefCLIPScore(c, R, v) = H-mean( CLIPScore(c, v), max(max_{r in R} cos(E_c, E_r), 0) )

The reference implementation embeds the captions with the prompt "A photo depicts " and uses CLIP ViT-B/32 at
224 px; `prompt` is a parameter here because the workbench's models are Chinese or English and self-trained.
Values compare only within one CLIP model (and one prompt): a self-trained CLIP's cosines live on its own scale.
torchmetrics' CLIPScore is another scale (100 · cos); these are the paper's.
"""

from __future__ import annotations

import pandas as pd
import torch

CLIPSCORE_WEIGHT = 2.5


def clipscores(
    image_embeds: torch.Tensor,
    caption_embeds: torch.Tensor,
    reference_embeds: list[torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Per caption: `clipscore` and, with references, `refclipscore` (and `reference_similarity`).

    `image_embeds` (N, D) and `caption_embeds` (N, D): row i is caption i and its image (any scale: both are
    L2-normalised here). `reference_embeds`: per caption, a (R_i, D) tensor of its references' embeddings.
    """
    if image_embeds.shape != caption_embeds.shape or image_embeds.ndim != 2:
        raise ValueError(
            f"image_embeds {tuple(image_embeds.shape)} and caption_embeds {tuple(caption_embeds.shape)} "
            "must both be (N, D)"
        )
    images = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    captions = torch.nn.functional.normalize(caption_embeds.float(), dim=-1)
    clip_s = CLIPSCORE_WEIGHT * (images * captions).sum(-1).clamp(min=0)
    out = {"clipscore": clip_s.numpy()}
    if reference_embeds is not None:
        if len(reference_embeds) != len(captions):
            raise ValueError(f"{len(reference_embeds)} reference sets for {len(captions)} captions")
        best = []
        for caption, refs in zip(captions, reference_embeds):
            if len(refs) == 0:
                raise ValueError("every caption needs at least one reference for RefCLIPScore")
            refs = torch.nn.functional.normalize(refs.float(), dim=-1)
            best.append((refs @ caption).max().clamp(min=0))
        ref_s = torch.stack(best)
        harmonic = torch.where(
            (clip_s + ref_s) > 0, 2 * clip_s * ref_s / (clip_s + ref_s), torch.zeros_like(clip_s)
        )
        out["reference_similarity"] = ref_s.numpy()
        out["refclipscore"] = harmonic.numpy()
    return pd.DataFrame(out)


@torch.no_grad()
def score_captions(
    bundle,
    image_embeds: torch.Tensor,
    captions: list[str],
    references: list[list[str]] | None = None,
    prompt: str = "",
    batch_size: int = 256,
    max_length: int = 64,
) -> pd.DataFrame:
    """`clipscores` of `captions` (one per row of `image_embeds`) with the text tower of `bundle` (a ClipBundle).

    Captions and references are embedded with `prompt` in front (the paper's English prompt: "A photo depicts ").
    """
    from .embeddings import embed_texts

    def embed(texts: list[str]) -> torch.Tensor:
        parts = [
            embed_texts(bundle, [prompt + t for t in texts[start : start + batch_size]], max_length)
            for start in range(0, len(texts), batch_size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, image_embeds.shape[1])

    caption_embeds = embed(captions)
    reference_embeds = None
    if references is not None:
        flat = embed([r for refs in references for r in refs])
        reference_embeds, start = [], 0
        for refs in references:
            reference_embeds.append(flat[start : start + len(refs)])
            start += len(refs)
    return clipscores(image_embeds, caption_embeds, reference_embeds)
