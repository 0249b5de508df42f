"""Zero-shot attribute probes on the demo set: does the model know colour, shape and size?

The demo set records every object it drew (`objects.jsonl`), so on single-object test images each
attribute has one true class; the model picks the class whose prompt ("一个红色的物体") embeds closest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.datasets import ImageTextDataset
from ..demo import scenes
from .embeddings import embed_texts
from .retrieval import zero_shot_table

ATTRIBUTES = ("colour", "shape", "size")


def demo_zero_shot(
    bundle, dataset: ImageTextDataset, image_embeds, ground_truth: str, language: str
) -> pd.DataFrame:
    """Zero-shot colour / shape / size accuracy on the single-object images of `dataset`.

    `image_embeds` are `dataset`'s image embeddings (from `embed`); `ground_truth` is the demo set's
    objects.jsonl. Returns `retrieval.zero_shot_table` (empty when no image has a single object).
    """
    gt = scenes.load_ground_truth(Path(ground_truth).parent)
    gt = gt[gt["n_objects"] == 1].assign(stem=lambda d: d["image_path"].map(lambda p: Path(p).stem))
    stems = pd.Series([Path(p).stem for p in dataset.image_paths])
    keep = stems.isin(set(gt["stem"])).to_numpy()
    if keep.sum() == 0:
        return pd.DataFrame(columns=["attribute", "n_classes", "n", "accuracy", "chance"])  # zero_shot_table
    gt = gt.set_index("stem").loc[stems[keep]]
    prompts, labels, names = {}, {}, {}
    for attribute in ATTRIBUTES:
        classes, texts = scenes.attribute_prompts(attribute, language)
        prompts[attribute] = embed_texts(bundle, texts)
        labels[attribute] = np.array([classes.index(v) for v in gt[attribute]])
        names[attribute] = classes
    return zero_shot_table(image_embeds[torch.from_numpy(keep.copy())], prompts, labels, names)
