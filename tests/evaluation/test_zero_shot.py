"""demo_zero_shot on the shared run's test split, with image embeddings built so the right answer is known."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BatchEncoding

from nbutils import stages
from nbutils.data.datasets import ImageTextDataset
from nbutils.demo import scenes
from nbutils.evaluation.zero_shot import ATTRIBUTES, demo_zero_shot
from nbutils.models import clip as clip_models


@pytest.fixture(scope="module")
def prepared(prepared_run):
    return stages.load_prepared(prepared_run["run_dir"])


class OneHotPrompts(torch.nn.Module):
    """A text tower that embeds prompt number k as the k-th unit vector: all prompts orthogonal."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.unused = torch.nn.Parameter(torch.zeros(1))  # embed_texts asks for the model's device

    def get_text_features(self, input_ids, attention_mask=None):
        return torch.nn.functional.one_hot(input_ids[:, 0], self.n).float()


class PromptTokenizer:
    """Maps each known prompt to one id (its position in `prompts`)."""

    def __init__(self, prompts):
        self.ids = {p: i for i, p in enumerate(prompts)}

    def __call__(self, texts, return_tensors="pt", **kwargs):
        ids = torch.tensor([[self.ids[t]] for t in texts])
        return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


@pytest.fixture(scope="module")
def prompts(prepared):
    """{attribute: (class names, prompts, ids of the prompts in the stub bundle)}."""
    out, n = {}, 0
    for attribute in ATTRIBUTES:
        classes, texts = scenes.attribute_prompts(attribute, prepared.origin.language)
        out[attribute] = (classes, texts, list(range(n, n + len(texts))))
        n += len(texts)
    return out


@pytest.fixture(scope="module")
def bundle(prompts):
    """A dual encoder whose prompt embeddings are known exactly: one-hot vectors, one dimension per prompt."""
    all_prompts = [t for _, texts, _ in prompts.values() for t in texts]
    return clip_models.ClipBundle(OneHotPrompts(len(all_prompts)), PromptTokenizer(all_prompts), None, "stub")


def _embeds(dim, ids_per_image):
    """Image embeddings that are the (unnormalised) sum of the given prompt dimensions."""
    out = torch.zeros(len(ids_per_image), dim)
    for row, ids in zip(out, ids_per_image):
        row[list(ids)] = 1.0
    return out


def _truth(prepared, dataset):
    """(positions of the single-object images, ground truth of every image), in the dataset's order."""
    gt = scenes.load_ground_truth(Path(prepared.origin.ground_truth).parent)
    by_stem = {Path(p).stem: row for p, row in zip(gt["image_path"], gt.to_dict("records"))}
    rows = [by_stem[Path(p).stem] for p in dataset.image_paths]
    return [i for i, r in enumerate(rows) if r["n_objects"] == 1], rows


def test_the_shared_run_has_single_object_test_images(prepared):
    assert prepared.origin.ground_truth and Path(prepared.origin.ground_truth).is_file()
    single, _ = _truth(prepared, prepared.dataset("test"))
    assert 0 < len(single) < 12  # some single-object images, and some images that are left out


def test_images_embedded_as_their_true_class_prompts_score_100(bundle, prompts, prepared):
    dataset = prepared.dataset("test", fixed_caption=True)
    single, rows = _truth(prepared, dataset)
    dim = bundle.model.n
    # every image (multi-object ones too) embeds as the sum of its main object's colour, shape, size prompts
    true = {a: [classes.index(r[a]) for r in rows] for a, (classes, _, _) in prompts.items()}
    right = _embeds(dim, [[prompts[a][2][true[a][i]] for a in ATTRIBUTES] for i in range(len(rows))])
    table = demo_zero_shot(bundle, dataset, right, prepared.origin.ground_truth, prepared.origin.language)
    assert table["attribute"].tolist() == list(ATTRIBUTES)
    assert table["n"].tolist() == [len(single)] * len(ATTRIBUTES)
    assert table["accuracy"].tolist() == [100.0] * len(ATTRIBUTES)
    assert table["n_classes"].tolist() == [len(prompts[a][0]) for a in ATTRIBUTES]
    assert table["chance"].tolist() == pytest.approx([100 / len(prompts[a][0]) for a in ATTRIBUTES])

    # the next class instead of the true one: always wrong
    wrong = {a: [(t + 1) % len(prompts[a][0]) for t in true[a]] for a in ATTRIBUTES}
    table = demo_zero_shot(
        bundle,
        dataset,
        _embeds(dim, [[prompts[a][2][wrong[a][i]] for a in ATTRIBUTES] for i in range(len(rows))]),
        prepared.origin.ground_truth,
        prepared.origin.language,
    )
    assert table["accuracy"].tolist() == [0.0] * len(ATTRIBUTES)

    # colour right on the first k single-object images, shape right on all, size on none
    k = len(single) // 2 + 1
    first_k = set(single[:k])
    mixed = _embeds(
        dim,
        [
            [
                prompts["colour"][2][(true if i in first_k else wrong)["colour"][i]],
                prompts["shape"][2][true["shape"][i]],
                prompts["size"][2][wrong["size"][i]],
            ]
            for i in range(len(rows))
        ],
    )
    table = demo_zero_shot(bundle, dataset, mixed, prepared.origin.ground_truth, prepared.origin.language)
    assert table["accuracy"].tolist() == pytest.approx([100 * k / len(single), 100.0, 0.0])


def test_accuracy_equals_a_naive_nearest_prompt_count(bundle, prompts, prepared):
    dataset = prepared.dataset("test", fixed_caption=True)
    single, rows = _truth(prepared, dataset)
    image_embeds = torch.randn(len(rows), bundle.model.n, generator=torch.Generator().manual_seed(0))
    table = demo_zero_shot(
        bundle, dataset, image_embeds, prepared.origin.ground_truth, prepared.origin.language
    )
    for attribute, (classes, _, ids) in prompts.items():
        # with one-hot prompts, the nearest prompt is the largest of the image's coordinates at the prompt ids
        hits = [
            int(np.argmax([float(image_embeds[i, d]) for d in ids])) == classes.index(rows[i][attribute])
            for i in single
        ]
        got = table.set_index("attribute").loc[attribute, "accuracy"]
        assert got == pytest.approx(100 * sum(hits) / len(single)), attribute
    assert 0 < table["accuracy"].sum() < 300  # random embeddings: neither all right nor all wrong


def test_no_single_object_image_gives_an_empty_table(bundle, prepared):
    dataset = prepared.dataset("test")
    single, _ = _truth(prepared, dataset)
    multi = [p for i, p in enumerate(dataset.image_paths) if i not in set(single)]
    table = prepared.tables["test"]
    only_multi = ImageTextDataset(prepared.cache, table[table["image_path"].isin(multi)])
    assert len(only_multi) == len(multi) > 0
    origin = prepared.origin
    out = demo_zero_shot(
        bundle, only_multi, torch.zeros(len(multi), bundle.model.n), origin.ground_truth, origin.language
    )
    assert isinstance(out, pd.DataFrame) and out.empty
    # the same columns as a table with rows (retrieval.zero_shot_table's)
    full = demo_zero_shot(
        bundle, dataset, torch.zeros(len(dataset), bundle.model.n), origin.ground_truth, origin.language
    )
    assert list(out.columns) == list(full.columns) == ["attribute", "n_classes", "n", "accuracy", "chance"]
