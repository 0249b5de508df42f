"""Symmetric contrastive (CLIP / InfoNCE) loss, single- and multi-process.

Both feature sets are L2-normalised, `logits = exp(logit_scale) * img @ txt.T`, and the loss is the
mean of image->text and text->image cross-entropy with the diagonal as labels (as open_clip, Chinese-CLIP
and transformers' CLIPModel do).

Duplicate captions: a batch may hold several rows whose caption text is identical (five images of
"a dog on grass"). Without care each such image is told that the other rows' identical captions are
wrong answers, which the model cannot satisfy. Pass `text_groups` (one id per row, equal ids = identical
caption text; use a dataset-wide id such as a caption hash so ids agree across processes): for row i,
every other column j with the same group is removed from the softmax, in both directions.

Hard negatives (NegCLIP): pass `negative_features`, extra captions (e.g. each row's caption with one word
replaced, nbutils.data.hard_negatives). They join the image->text softmax as extra columns (every image is
scored against every negative); the text->image direction is unchanged, as in NegCLIP. A negative whose
`negative_groups` id equals row i's own caption group is no negative of image i and is masked out of its
softmax (e.g. a caption left unchanged because it had no replaceable word).

Multi-process: features are gathered from every rank WITH gradients and each rank scores its local rows
against all columns. DDP's gradient averaging then reproduces the single-process gradient on the whole
batch exactly. A plain `dist.all_gather` returns tensors without autograd history, so the other ranks'
loss terms never reach this rank's towers and the gradient is wrong (tests/training/test_clip_loss.py
shows both).

Chance level: `chance_loss(batch, negatives_per_caption)`, the loss of a model that scores every candidate alike
(train_clip records it; analyze_loss draws it).
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
    # Backward sums every rank's gradient for this rank's slice back to this rank (a reduce-scatter).
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
    negative_features: torch.Tensor | None = None,
    negative_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric contrastive loss of paired (n, d) image/text features.

    `logit_scale` is the log of the temperature scale (CLIPModel's `logit_scale` parameter).
    `text_groups` (optional (n,) ints): rows with equal ids carry identical captions; they are not
    treated as negatives of each other. With `gather` and an initialised process group of more than
    one rank, local rows are scored against the features of all ranks (equal batch sizes required).
    `negative_features` (optional (m, d)): hard-negative captions, extra columns of the image->text
    softmax; `negative_groups` ((m,) ints, optional) their text groups, compared with `text_groups`.
    With `gather`, every rank must pass the same m.
    """
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features "
            f"{tuple(text_features.shape)} must both be (batch, dim) with the same shape"
        )
    n = image_features.shape[0]
    if text_groups is not None and tuple(text_groups.shape) != (n,):
        raise ValueError(f"text_groups has shape {tuple(text_groups.shape)}, expected ({n},)")
    if negative_groups is not None and (negative_features is None or text_groups is None):
        raise ValueError("negative_groups needs negative_features and text_groups")
    if negative_features is not None and (
        negative_features.ndim != 2 or negative_features.shape[1] != text_features.shape[1]
    ):
        raise ValueError(
            f"negative_features {tuple(negative_features.shape)} must be (m, {text_features.shape[1]}), "
            "the text features' width"
        )
    if negative_groups is not None and tuple(negative_groups.shape) != (negative_features.shape[0],):
        raise ValueError(
            f"negative_groups has shape {tuple(negative_groups.shape)}, expected ({negative_features.shape[0]},)"
        )
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
    if negative_features is not None:
        negatives = F.normalize(negative_features, dim=-1)
        all_negatives = _all_gather(negatives) if world > 1 else negatives
        negative_logits = scale * image @ all_negatives.T  # local images vs all negatives (n, n * world)
        if negative_groups is not None:
            all_negative_groups = negative_groups.to(image.device).long()
            if world > 1:
                all_negative_groups = _all_gather_no_grad(all_negative_groups)
            own = text_groups.to(image.device).long()[:, None] == all_negative_groups[None, :]
            negative_logits = negative_logits.masked_fill(own, float("-inf"))
        logits_per_image = torch.cat([logits_per_image, negative_logits], dim=1)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class ClipLoss(torch.nn.Module):
    """Module form of `clip_loss` (same arguments)."""

    def __init__(self, gather: bool = True):
        super().__init__()
        self.gather = gather

    def forward(
        self,
        image_features,
        text_features,
        logit_scale,
        text_groups=None,
        negative_features=None,
        negative_groups=None,
    ):
        return clip_loss(
            image_features,
            text_features,
            logit_scale,
            text_groups,
            gather=self.gather,
            negative_features=negative_features,
            negative_groups=negative_groups,
        )


def clamp_logit_scale_(param: torch.Tensor) -> torch.Tensor:
    """Clamp a log-scale parameter in place to [0, log 100]; call after each optimiser step."""
    with torch.no_grad():
        param.clamp_(0.0, MAX_LOGIT_SCALE)
    return param


def chance_loss(batch_size: int, negatives_per_caption: int = 0) -> float:
    """The loss of a model that scores every candidate alike: the contrastive chance level.

    The mean over the two directions of ln(candidates): text→image has `batch_size` images to choose from,
    image→text `batch_size` captions and their hard negatives (ln batch_size without any). Identical captions
    masked out of a batch remove a few candidates, so the true chance is at most this. Training should go below
    it quickly.
    """
    return (math.log(batch_size) + math.log(batch_size * (1 + negatives_per_caption))) / 2
