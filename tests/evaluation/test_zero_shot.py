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
    """{attribute: (class names, prompt ensembles)}."""
    return {a: scenes.attribute_prompts(a, prepared.origin.language) for a in ATTRIBUTES}


@pytest.fixture(scope="module")
def vocabulary(prompts):
    """Every distinct prompt once (ensembles of different attributes share phrases)."""
    return sorted({p for _, ensembles in prompts.values() for ensemble in ensembles for p in ensemble})


@pytest.fixture(scope="module")
def bundle(vocabulary):
    """A dual encoder whose prompt embeddings are known exactly: one-hot vectors, one dimension per prompt."""
    return clip_models.ClipBundle(OneHotPrompts(len(vocabulary)), PromptTokenizer(vocabulary), None, "stub")


def _class_vector(vocabulary, ensemble):
    """What zero-shot compares images with: the normalised mean of the ensemble's (one-hot) embeddings."""
    v = torch.zeros(len(vocabulary))
    v[[vocabulary.index(p) for p in ensemble]] = 1.0
    return v / v.norm()


def _embeds(vocabulary, prompts, classes_per_image):
    """Image embeddings: the sum of the class vectors of the given {attribute: class index} per image."""
    return torch.stack(
        [
            sum(_class_vector(vocabulary, prompts[a][1][k]) for a, k in classes.items())
            for classes in classes_per_image
        ]
    )


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


def test_images_embedded_as_their_true_class_prompts_score_100(bundle, prompts, vocabulary, prepared):
    dataset = prepared.dataset("test", fixed_caption=True)
    single, rows = _truth(prepared, dataset)
    language = prepared.origin.language
    # every image (multi-object ones too) embeds as the sum of its main object's colour, shape, size classes
    true = {a: [classes.index(r[a]) for r in rows] for a, (classes, _) in prompts.items()}
    right = _embeds(vocabulary, prompts, [{a: true[a][i] for a in ATTRIBUTES} for i in range(len(rows))])
    table = demo_zero_shot(bundle, dataset, right, prepared.origin.ground_truth, language)
    assert table["attribute"].tolist() == list(ATTRIBUTES)
    assert table["n"].tolist() == [len(single)] * len(ATTRIBUTES)
    assert table["accuracy"].tolist() == [100.0] * len(ATTRIBUTES)
    assert table["n_classes"].tolist() == [len(prompts[a][0]) for a in ATTRIBUTES]
    assert table["chance"].tolist() == pytest.approx([100 / len(prompts[a][0]) for a in ATTRIBUTES])
    assert table["prompts_per_class"].tolist() == [len(prompts[a][1][0]) for a in ATTRIBUTES]

    # the next class instead of the true one: always wrong
    wrong = {a: [(t + 1) % len(prompts[a][0]) for t in true[a]] for a in ATTRIBUTES}
    embeds = _embeds(vocabulary, prompts, [{a: wrong[a][i] for a in ATTRIBUTES} for i in range(len(rows))])
    table = demo_zero_shot(bundle, dataset, embeds, prepared.origin.ground_truth, language)
    assert table["accuracy"].tolist() == [0.0] * len(ATTRIBUTES)

    # colour right on the first k single-object images, shape right on all, size on none
    k = len(single) // 2 + 1
    first_k = set(single[:k])
    mixed = [
        {
            "colour": (true if i in first_k else wrong)["colour"][i],
            "shape": true["shape"][i],
            "size": wrong["size"][i],
        }
        for i in range(len(rows))
    ]
    table = demo_zero_shot(
        bundle, dataset, _embeds(vocabulary, prompts, mixed), prepared.origin.ground_truth, language
    )
    assert table["accuracy"].tolist() == pytest.approx([100 * k / len(single), 100.0, 0.0])


def test_accuracy_equals_a_naive_nearest_ensemble_count(bundle, prompts, vocabulary, prepared):
    dataset = prepared.dataset("test", fixed_caption=True)
    single, rows = _truth(prepared, dataset)
    image_embeds = torch.randn(len(rows), bundle.model.n, generator=torch.Generator().manual_seed(0))
    table = demo_zero_shot(
        bundle, dataset, image_embeds, prepared.origin.ground_truth, prepared.origin.language
    )
    for attribute, (classes, ensembles) in prompts.items():
        vectors = [_class_vector(vocabulary, e) for e in ensembles]
        hits = [
            int(np.argmax([float(image_embeds[i] @ v) for v in vectors])) == classes.index(rows[i][attribute])
            for i in single
        ]
        got = table.set_index("attribute").loc[attribute, "accuracy"]
        assert got == pytest.approx(100 * sum(hits) / len(single)), attribute


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
    assert list(out.columns) == ["attribute", "n_classes", "n", "accuracy", "chance"]
    assert list(full.columns) == [*out.columns, "prompts_per_class", "example_prompts"]
