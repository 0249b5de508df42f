"""Attribute probes on the demo set: does a dual encoder know colour, shape and size?

The demo set records every object it drew (`objects.jsonl`), so on single-object images each attribute
has one true class. Two views, each with its chance level:

- zero-shot: the class whose prompt ensemble embeds closest to the image (CLIP's prompt ensembling:
  the mean of the normalised embeddings of every object phrase with that class, e.g. for "circle"
  "一个大的红色圆形", "一个红色的圆形", ... over all colours and sizes; `scenes.attribute_prompts`);
- linear probe: a logistic regression on the image embeddings of the train split's single-object
  images, scored on the test split's (nbutils.evaluation.linear_probe): what the embedding holds,
  whether or not the text tower can name it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.datasets import ImageTextDataset
from ..demo import scenes
from .embeddings import embed_texts
from .linear_probe import linear_probe_accuracy
from .retrieval import zero_shot_table

ATTRIBUTES = ("colour", "shape", "size")
CLASSES = {"colour": scenes.COLOURS, "shape": scenes.SHAPES, "size": scenes.SIZES}


def single_object_labels(dataset: ImageTextDataset, ground_truth: str) -> tuple[np.ndarray, pd.DataFrame]:
    """(keep, truth): which of `dataset.image_paths` hold one object, and their objects.jsonl rows in order."""
    gt = scenes.load_ground_truth(Path(ground_truth).parent)
    gt = gt[gt["n_objects"] == 1].assign(stem=lambda d: d["image_path"].map(lambda p: Path(p).stem))
    stems = pd.Series([Path(p).stem for p in dataset.image_paths])
    keep = stems.isin(set(gt["stem"])).to_numpy()
    return keep, gt.set_index("stem").loc[stems[keep]]


def demo_zero_shot(
    bundle, dataset: ImageTextDataset, image_embeds, ground_truth: str, language: str
) -> pd.DataFrame:
    """Zero-shot colour / shape / size accuracy on the single-object images of `dataset`.

    `image_embeds` are `dataset`'s image embeddings (from `embed`); `ground_truth` is the demo set's
    objects.jsonl. Returns `retrieval.zero_shot_table` plus `prompts_per_class` and `example_prompts`
    (empty when no image has a single object).
    """
    keep, gt = single_object_labels(dataset, ground_truth)
    if keep.sum() == 0:
        return pd.DataFrame(columns=["attribute", "n_classes", "n", "accuracy", "chance"])
    prompts, labels, names, examples = {}, {}, {}, {}
    for attribute in ATTRIBUTES:
        classes, ensembles = scenes.attribute_prompts(attribute, language)
        flat = [p for ensemble in ensembles for p in ensemble]
        embeds = torch.cat([embed_texts(bundle, flat[i : i + 256]) for i in range(0, len(flat), 256)])
        prompts[attribute] = embeds.reshape(len(classes), len(ensembles[0]), -1)
        labels[attribute] = np.array([classes.index(v) for v in gt[attribute]])
        names[attribute] = classes
        examples[attribute] = (len(ensembles[0]), " / ".join(ensemble[-1] for ensemble in ensembles[:2]))
    table = zero_shot_table(image_embeds[torch.from_numpy(keep.copy())], prompts, labels, names)
    table["prompts_per_class"] = table["attribute"].map(lambda a: examples[a][0])
    table["example_prompts"] = table["attribute"].map(lambda a: examples[a][1] + " / ...")
    return table


def demo_linear_probe(
    train: ImageTextDataset, train_embeds, test: ImageTextDataset, test_embeds, ground_truth: str
) -> pd.DataFrame:
    """Linear-probe colour / shape / size accuracy: fit on `train`'s single-object images, score on `test`'s.

    Columns: attribute, n_classes, n_train, n (test images), accuracy, chance (percent). Empty when
    either split has no single-object image.
    """
    columns = ["attribute", "n_classes", "n_train", "n", "accuracy", "chance"]
    keep_train, gt_train = single_object_labels(train, ground_truth)
    keep_test, gt_test = single_object_labels(test, ground_truth)
    if keep_train.sum() == 0 or keep_test.sum() == 0:
        return pd.DataFrame(columns=columns)
    x_train = np.asarray(train_embeds, dtype=np.float64)[keep_train]
    x_test = np.asarray(test_embeds, dtype=np.float64)[keep_test]
    rows = []
    for attribute in ATTRIBUTES:
        classes = sorted(set(gt_train[attribute]) | set(gt_test[attribute]))
        y_train = np.array([classes.index(v) for v in gt_train[attribute]])
        y_test = np.array([classes.index(v) for v in gt_test[attribute]])
        accuracy = linear_probe_accuracy(x_train, y_train, x_test, y_test)
        n_classes = len(CLASSES[attribute])
        rows.append([attribute, n_classes, len(y_train), len(y_test), accuracy, 100.0 / n_classes])
    return pd.DataFrame(rows, columns=columns)
