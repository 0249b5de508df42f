"""Symmetric contrastive (CLIP / InfoNCE) loss, single- and multi-process.

Both feature sets are L2-normalised, `logits = exp(logit_scale) * img @ txt.T`, and the loss is the
mean of image->text and text->image cross-entropy with the diagonal as labels (as open_clip, Chinese-CLIP
and transformers' CLIPModel do).

Duplicate captions: a batch may hold several rows whose caption text is identical (five images of
"a dog on grass"). Without care each such image is told that the other rows' identical captions are
wrong answers, which the model cannot satisfy. Pass `text_groups` (one id per row, equal ids = identical
caption text; use a dataset-wide id such as a caption hash so ids agree across processes): for row i,
every other column j with the same group is removed from the softmax, in both directions.

Multi-process: features are gathered from every rank WITH gradients and each rank scores its local rows
against all columns. DDP's gradient averaging then reproduces the single-process gradient on the whole
batch exactly. A plain `dist.all_gather` returns tensors without autograd history, so the other ranks'
loss terms never reach this rank's towers and the gradient is wrong (tests/training/test_clip_loss.py
shows both).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  registers torch.distributed.nn.functional (autograd-aware collectives)
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100)  # Chinese-CLIP / open_clip clamp the scale to <= 100 after each step


def _world(gather: bool) -> tuple[int, int]:
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    # Backward sums every rank's gradient for our slice back to us (a reduce-scatter).
    return torch.cat(torch.distributed.nn.functional.all_gather(x))


def _all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale,
    text_groups: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric contrastive loss of paired (n, d) image/text features.

    `logit_scale` is the log of the temperature scale (CLIPModel's `logit_scale` parameter).
    `text_groups` (optional (n,) ints): rows with equal ids carry identical captions; they are not
    treated as negatives of each other. With `gather` and an initialised process group of more than
    one rank, local rows are scored against the features of all ranks (equal batch sizes required).
    """
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features "
            f"{tuple(text_features.shape)} must both be (batch, dim) with the same shape"
        )
    n = image_features.shape[0]
    if text_groups is not None and tuple(text_groups.shape) != (n,):
        raise ValueError(f"text_groups has shape {tuple(text_groups.shape)}, expected ({n},)")
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=image.dtype, device=image.device).exp()

    rank, world = _world(gather)
    all_image, all_text, all_groups = image, text, text_groups
    if world > 1:
        sizes = _all_gather_no_grad(torch.tensor([n], device=image.device)).tolist()
        if len(set(sizes)) > 1:  # every rank sees the same sizes, so every rank raises (no hang)
            raise ValueError(
                f"clip_loss with gather needs equal batch sizes on every rank, got {sizes}; "
                "use DataLoader(drop_last=True) / DistributedSampler(drop_last=True)"
            )
        all_image, all_text = _all_gather(image), _all_gather(text)
        if text_groups is not None:
            all_groups = _all_gather_no_grad(text_groups.to(image.device).long())

    labels = torch.arange(n, device=image.device) + n * rank
    logits_per_image = scale * image @ all_text.T  # local images vs all texts   (n, n * world)
    logits_per_text = scale * text @ all_image.T  # local texts vs all images   (n, n * world)
    if text_groups is not None:
        # Same caption as row i in column j != i: a false negative, in both directions.
        local_groups = text_groups.to(image.device).long()
        false_negative = local_groups[:, None] == all_groups[None, :]
        false_negative[torch.arange(n, device=image.device), labels] = False
        logits_per_image = logits_per_image.masked_fill(false_negative, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(false_negative, float("-inf"))
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class ClipLoss(torch.nn.Module):
    """Module form of `clip_loss` (same arguments)."""

    def __init__(self, gather: bool = True):
        super().__init__()
        self.gather = gather

    def forward(self, image_features, text_features, logit_scale, text_groups=None):
        return clip_loss(image_features, text_features, logit_scale, text_groups, gather=self.gather)


def clamp_logit_scale_(param: torch.Tensor) -> torch.Tensor:
    """Clamp a log-scale parameter in place to [0, log 100]; call after each optimiser step."""
    with torch.no_grad():
        param.clamp_(0.0, MAX_LOGIT_SCALE)
    return param


def chance_loss(batch_size: int) -> float:
    """Loss of a model that knows nothing: ln(batch_size). Training should go below it quickly."""
    return math.log(batch_size)
