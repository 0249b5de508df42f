"""Image-text retrieval and zero-shot metrics on precomputed embeddings (pure torch, no models).

Retrieval is full-pool: every test image is ranked against every test caption and vice versa,
as in the CLIP and Chinese-CLIP papers. Ties are ranked pessimistically (a wrong candidate that
scores exactly as high as the correct one counts as ranked above it), so a collapsed model that
maps everything to one vector scores ~0 R@1, not 100. Similarities are computed in row blocks so
a 30k x 150k pool never has to sit in memory at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import DataError

KS = (1, 5, 10)
# Rows of the similarity matrix computed at once: 1024 x 150k float32 is ~600 MB.
CHUNK_SIZE = 1024


def _tensor(x, name: str) -> torch.Tensor:
    if torch.is_tensor(x):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"{name}: cannot be read as a numeric array ({err})") from None


def _embeddings(x, name: str) -> torch.Tensor:
    """A float32, L2-normalised (N, D) tensor. Templates (N, T, D) are averaged first (CLIP prompt ensembling)."""
    x = _tensor(x, name)
    if x.dim() not in (2, 3) or x.shape[0] == 0 or x.shape[-1] == 0:
        raise DataError(f"{name}: expected a non-empty (N, D) array, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise DataError(f"{name}: expected numbers, got dtype {x.dtype}")
    # float32 even for bf16/fp16 inputs: low precision creates ties that then rank pessimistically.
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    if x.dim() == 3:
        x = F.normalize(x, dim=-1).mean(dim=1)
    return F.normalize(x, dim=-1)


def _indices(x, name: str, n: int, upper: int, upper_name: str) -> torch.Tensor:
    """A 1-D int64 tensor of length `n` with values in [0, upper)."""
    x = _tensor(x, name)
    if x.dim() != 1 or len(x) != n:
        raise DataError(f"{name}: expected {n} entries (one per row), got shape {tuple(x.shape)}")
    if x.is_floating_point() or x.dtype == torch.bool:
        raise DataError(f"{name}: expected integer indices, got dtype {x.dtype}")
    x = x.long()
    bad = ((x < 0) | (x >= upper)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{name}[{i}] = {int(x[i])} is not a valid index into {upper_name} (0..{upper - 1})")
    return x


def _same_dim(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise DataError(f"{name_a} has dimension {a.shape[1]} but {name_b} has {b.shape[1]}")


def retrieval_metrics(image_embeds, text_embeds, text_to_image, ks=KS, chunk_size: int = CHUNK_SIZE) -> dict:
    """Full-pool recall@k and ranks in both directions (torch tensors or numpy arrays).

    image_embeds (N_img, D), text_embeds (N_txt, D), text_to_image (N_txt,) = index of each
    caption's image; every image needs at least one caption. Rank = 1 + number of WRONG
    candidates scoring >= the correct one (ties pessimistic). Image->text uses the image's
    best-scoring caption; text->image ranks the caption's one image among all images.

    Returns `i2t_r{k}`, `t2i_r{k}` (percent), `mean_recall` (mean of those), median/mean ranks,
    `chance_r1` = 100 / N_img (t2i R@1 of a random model; i2t chance is
    captions_per_image / N_txt * 100, the same when every image has the same number of captions),
    `n_test_images`, `n_test_texts`.
    """
    images = _embeddings(image_embeds, "image_embeds")
    texts = _embeddings(text_embeds, "text_embeds").to(images.device)
    _same_dim(images, texts, "image_embeds", "text_embeds")
    n_img, n_txt = len(images), len(texts)
    owner = _indices(text_to_image, "text_to_image", n_txt, n_img, "image_embeds").to(images.device)
    captions_per_image = torch.bincount(owner, minlength=n_img)
    if (captions_per_image == 0).any():
        i = int((captions_per_image == 0).nonzero()[0])
        raise DataError(
            f"image_embeds[{i}] has no caption in text_to_image; "
            f"image->text rank is undefined (drop uncaptioned images first)"
        )
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise DataError(f"ks must be positive integers, got {ks}")
    if chunk_size < 1:
        raise DataError(f"chunk_size must be >= 1, got {chunk_size}")

    # Text -> image: rows are captions; the correct column counts itself once, so rank = count(>=).
    t2i_rank = torch.empty(n_txt, dtype=torch.long, device=images.device)
    for start in range(0, n_txt, chunk_size):
        sim = texts[start : start + chunk_size] @ images.T
        rows = torch.arange(len(sim), device=sim.device)
        correct = sim[rows, owner[start : start + chunk_size]]
        t2i_rank[start : start + len(sim)] = (sim >= correct[:, None]).sum(1)

    # Image -> text: the best of an image's captions, compared only against other images' captions
    # (so that five identical correct captions do not push each other down).
    i2t_rank = torch.empty(n_img, dtype=torch.long, device=images.device)
    for start in range(0, n_img, chunk_size):
        sim = images[start : start + chunk_size] @ texts.T
        mine = ((owner >= start) & (owner < start + len(sim))).nonzero().squeeze(1)
        rows = owner[mine] - start
        best = torch.full((len(sim),), -torch.inf, device=sim.device)
        best.scatter_reduce_(0, rows, sim[rows, mine], reduce="amax")
        sim[rows, mine] = -torch.inf
        i2t_rank[start : start + len(sim)] = 1 + (sim >= best[:, None]).sum(1)

    out = {}
    for direction, rank in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k in ks:
            out[f"{direction}_r{k}"] = 100.0 * (rank <= k).double().mean().item()
    out["mean_recall"] = float(np.mean(list(out.values())))
    for direction, rank in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        out[f"median_rank_{direction}"] = float(np.median(rank.cpu().numpy()))
    for direction, rank in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        out[f"mean_rank_{direction}"] = rank.double().mean().item()
    out["chance_r1"] = 100.0 / n_img
    out["n_test_images"] = n_img
    out["n_test_texts"] = n_txt
    return out


def zero_shot_accuracy(image_embeds, class_embeds, labels) -> float:
    """Percent of images whose most similar class prompt is their label.

    class_embeds is (n_classes, D), or (n_classes, n_templates, D) to average several prompt
    templates per class; labels are class indices.
    """
    images = _embeddings(image_embeds, "image_embeds")
    classes = _embeddings(class_embeds, "class_embeds").to(images.device)
    _same_dim(images, classes, "image_embeds", "class_embeds")
    labels = _indices(labels, "labels", len(images), len(classes), "class_embeds").to(images.device)
    predicted = torch.cat([(chunk @ classes.T).argmax(1) for chunk in images.split(CHUNK_SIZE)])
    return 100.0 * (predicted == labels).double().mean().item()


def _label_indices(labels, class_names, attribute: str) -> np.ndarray:
    """Class indices for one attribute; names are looked up, missing labels (None, NaN, -1) become -1."""
    labels = pd.Series(np.asarray(labels, dtype=object))
    missing = labels.isna() | labels.isin([-1])
    if labels[~missing].map(lambda v: isinstance(v, str)).all():
        lookup = {name: i for i, name in enumerate(class_names)}
        unknown = sorted(set(labels[~missing]) - lookup.keys())
        if unknown:
            raise DataError(f"labels_by_attribute[{attribute!r}]: {unknown[:5]} not in its class names")
        return np.array([-1 if m else lookup[v] for v, m in zip(labels, missing)], dtype=np.int64)
    try:
        return np.array([-1 if m else int(v) for v, m in zip(labels, missing)], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(
            f"labels_by_attribute[{attribute!r}]: expected class indices or names ({err})"
        ) from None


def zero_shot_table(
    image_embeds, prompt_embeds_by_attribute: dict, labels_by_attribute: dict, class_names_by_attribute: dict
) -> pd.DataFrame:
    """Zero-shot classification accuracy per attribute (e.g. colour, shape), one row each.

    For each attribute: prompt embeddings (n_classes[, n_templates], D), one label per image
    (class index or class name; None/NaN/-1 = not labelled, left out) and the class names.
    Columns: attribute, n_classes, n (labelled images), accuracy, chance (100 / n_classes), in percent.
    """
    image_embeds = _tensor(image_embeds, "image_embeds")
    rows = []
    for attribute, prompts in prompt_embeds_by_attribute.items():
        for what, mapping in (
            ("labels_by_attribute", labels_by_attribute),
            ("class_names_by_attribute", class_names_by_attribute),
        ):
            if attribute not in mapping:
                raise DataError(f"{what} has no entry for attribute {attribute!r}")
        names = list(class_names_by_attribute[attribute])
        n_prompts = len(_tensor(prompts, f"prompt_embeds_by_attribute[{attribute!r}]"))
        if n_prompts != len(names):
            raise DataError(
                f"attribute {attribute!r}: {n_prompts} prompt embeddings but {len(names)} class names"
            )
        labels = _label_indices(labels_by_attribute[attribute], names, attribute)
        if len(labels) != len(image_embeds):
            raise DataError(
                f"labels_by_attribute[{attribute!r}]: {len(labels)} labels for {len(image_embeds)} images"
            )
        keep = labels >= 0
        if not keep.any():
            raise DataError(f"labels_by_attribute[{attribute!r}]: no labelled image")
        images = image_embeds[torch.from_numpy(keep).to(image_embeds.device)]
        rows.append(
            {
                "attribute": attribute,
                "n_classes": len(names),
                "n": int(keep.sum()),
                "accuracy": zero_shot_accuracy(images, prompts, labels[keep]),
                "chance": 100.0 / len(names),
            }
        )
    return pd.DataFrame(rows, columns=["attribute", "n_classes", "n", "accuracy", "chance"])


def search(query_embeds, gallery_embeds, k: int = 5, chunk_size: int = CHUNK_SIZE):
    """Top-k cosine search: returns (scores, indices), each (n_queries, k), best first.

    A single (D,) query gives (k,) results. k is capped at the gallery size.
    """
    query_embeds = _tensor(query_embeds, "query_embeds")
    single = query_embeds.dim() == 1
    queries = _embeddings(query_embeds[None] if single else query_embeds, "query_embeds")
    gallery = _embeddings(gallery_embeds, "gallery_embeds").to(queries.device)
    _same_dim(queries, gallery, "query_embeds", "gallery_embeds")
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}")
    k = min(int(k), len(gallery))
    parts = [(chunk @ gallery.T).topk(k, dim=1) for chunk in queries.split(chunk_size)]
    scores = torch.cat([p.values for p in parts])
    indices = torch.cat([p.indices for p in parts])
    return (scores[0], indices[0]) if single else (scores, indices)


def metrics_table(before: dict, after: dict) -> pd.DataFrame:
    """Side-by-side retrieval metrics: rows = recall@k keys, mean_recall, median ranks;
    columns initial, trained, gain (= trained - initial; for ranks a negative gain is better)."""
    recall_keys = [key for key in after if key.startswith(("i2t_r", "t2i_r")) and key[5:].isdigit()]
    keys = recall_keys + ["mean_recall", "median_rank_i2t", "median_rank_t2i"]
    for name, metrics in (("before", before), ("after", after)):
        missing = [key for key in keys if key not in metrics]
        if missing:
            raise DataError(f"metrics_table: {name!r} metrics lack {missing}")
    table = pd.DataFrame(
        {
            "initial": [float(before[key]) for key in keys],
            "trained": [float(after[key]) for key in keys],
        },
        index=pd.Index(keys, name="metric"),
    )
    table["gain"] = table["trained"] - table["initial"]
    return table
