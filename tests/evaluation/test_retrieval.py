import numpy as np
import pytest
import torch

from nbutils.errors import DataError
from nbutils.evaluation import retrieval


def _pool(seed, n_images, dim=8, max_captions=5):
    """Random embeddings with 1..max_captions captions per image, captions in shuffled order."""
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(n_images), rng.integers(1, max_captions + 1, n_images))
    owner = rng.permutation(owner)
    return rng.normal(size=(n_images, dim)), rng.normal(size=(len(owner), dim)), owner


def _naive_ranks(images, texts, owner):
    """Plain-Python ranks: 1 + number of wrong candidates scoring >= the (best) correct one."""
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    sim = images @ texts.T
    i2t, t2i = [], []
    for i in range(len(images)):
        best = max(sim[i, t] for t in range(len(texts)) if owner[t] == i)
        i2t.append(1 + sum(1 for t in range(len(texts)) if owner[t] != i and sim[i, t] >= best))
    for t in range(len(texts)):
        correct = sim[owner[t], t]
        t2i.append(1 + sum(1 for i in range(len(images)) if i != owner[t] and sim[i, t] >= correct))
    return np.array(i2t), np.array(t2i)


@pytest.mark.parametrize("seed,n_images,chunk_size", [(0, 7, 3), (1, 30, 4), (2, 40, 1), (3, 25, 1024)])
def test_retrieval_metrics_match_a_naive_double_loop(seed, n_images, chunk_size):
    images, texts, owner = _pool(seed, n_images)
    got = retrieval.retrieval_metrics(torch.tensor(images), texts, owner, chunk_size=chunk_size)
    i2t, t2i = _naive_ranks(images, texts, owner)
    expected = {
        f"{d}_r{k}": 100 * np.mean(r <= k) for d, r in (("i2t", i2t), ("t2i", t2i)) for k in (1, 5, 10)
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    assert got["mean_recall"] == pytest.approx(np.mean(list(expected.values())))
    assert got["median_rank_i2t"] == np.median(i2t) and got["median_rank_t2i"] == np.median(t2i)
    assert got["mean_rank_i2t"] == pytest.approx(i2t.mean())
    assert got["mean_rank_t2i"] == pytest.approx(t2i.mean())
    assert got["chance_r1"] == pytest.approx(100 / n_images)
    assert (got["n_test_images"], got["n_test_texts"]) == (n_images, len(owner))
    assert 0 < got["t2i_r1"] < 100  # random pool: neither degenerate case


def test_perfect_embeddings_score_100_even_with_identical_captions():
    images, _, owner = _pool(4, 50)
    metrics = retrieval.retrieval_metrics(images, images[owner], owner, chunk_size=16)
    assert all(metrics[f"{d}_r{k}"] == 100 for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert metrics["mean_recall"] == 100
    assert metrics["median_rank_i2t"] == metrics["median_rank_t2i"] == 1


def test_constant_model_gets_worst_rank_not_100_percent():
    owner = np.repeat(np.arange(20), 5)
    metrics = retrieval.retrieval_metrics(np.ones((20, 4)), np.ones((100, 4)), owner)
    assert metrics["i2t_r1"] == metrics["t2i_r1"] == metrics["t2i_r10"] == 0
    assert metrics["median_rank_t2i"] == 20  # behind all 19 wrong images
    assert metrics["median_rank_i2t"] == 96  # behind all 95 wrong captions
    assert metrics["chance_r1"] == 5


def test_retrieval_metrics_reject_bad_input():
    images, texts, owner = _pool(5, 6)
    with pytest.raises(DataError, match="text_to_image"):
        retrieval.retrieval_metrics(images, texts, owner[:-1])
    with pytest.raises(DataError, match=r"text_to_image\[\d+\] = 6"):
        retrieval.retrieval_metrics(images, texts, np.where(owner == 0, 6, owner))
    with pytest.raises(DataError, match=r"image_embeds\[0\] has no caption"):
        retrieval.retrieval_metrics(images, texts, np.maximum(owner, 1))
    with pytest.raises(DataError, match="dimension"):
        retrieval.retrieval_metrics(images[:, :4], texts, owner)
    with pytest.raises(DataError, match="NaN"):
        retrieval.retrieval_metrics(np.full_like(images, np.nan), texts, owner)


def test_zero_shot_accuracy_matches_naive_loop_and_averages_templates():
    rng = np.random.default_rng(6)
    images, classes, labels = rng.normal(size=(200, 8)), rng.normal(size=(4, 8)), rng.integers(0, 4, 200)
    unit = classes / np.linalg.norm(classes, axis=1, keepdims=True)
    naive = 100 * np.mean([np.argmax([img @ c for c in unit]) == y for img, y in zip(images, labels)])
    assert retrieval.zero_shot_accuracy(images, classes, labels) == pytest.approx(naive)
    # Templates: each class given twice at different norms averages back to the same direction.
    templates = np.stack([classes, 3 * classes], axis=1)
    assert retrieval.zero_shot_accuracy(torch.tensor(images), templates, labels) == pytest.approx(naive)
    with pytest.raises(DataError, match=r"labels\[0\] = 4"):
        retrieval.zero_shot_accuracy(images, classes, np.r_[4, labels[1:]])


def test_zero_shot_table_one_row_per_attribute_with_names_and_missing_labels():
    rng = np.random.default_rng(7)
    colours = rng.normal(size=(3, 8))
    images = colours[[0, 1, 2, 0]] + 0.01 * rng.normal(size=(4, 8))
    shapes = rng.normal(size=(2, 8))
    table = retrieval.zero_shot_table(
        images,
        {"colour": colours, "shape": shapes},
        {"colour": ["red", "green", "blue", None], "shape": [0, 1, -1, 1]},
        {"colour": ["red", "green", "blue"], "shape": ["circle", "square"]},
    )
    assert list(table.columns) == ["attribute", "n_classes", "n", "accuracy", "chance"]
    assert table["attribute"].tolist() == ["colour", "shape"]
    assert table["n"].tolist() == [3, 3]
    assert table.loc[0, "accuracy"] == 100
    assert table["chance"].tolist() == pytest.approx([100 / 3, 50])
    with pytest.raises(DataError, match=r"\['purple'\] not in its class names"):
        retrieval.zero_shot_table(
            images, {"colour": colours}, {"colour": ["purple"] * 4}, {"colour": ["red", "green", "blue"]}
        )


def test_search_matches_topk_on_a_naive_similarity_matrix():
    rng = np.random.default_rng(8)
    queries = torch.randn(10, 8, generator=torch.Generator().manual_seed(8))
    gallery = rng.normal(size=(30, 8))
    unit_q = queries / queries.norm(dim=1, keepdim=True)
    unit_g = torch.tensor(gallery, dtype=torch.float32)
    unit_g = unit_g / unit_g.norm(dim=1, keepdim=True)
    expected = (unit_q @ unit_g.T).topk(5, dim=1)
    scores, indices = retrieval.search(queries, gallery, k=5, chunk_size=3)
    assert torch.equal(indices, expected.indices)
    assert torch.allclose(scores, expected.values, atol=1e-6)
    one_scores, one_indices = retrieval.search(queries[0], gallery, k=50)  # k capped at the gallery size
    assert one_indices.shape == (30,) and torch.equal(one_indices[:5], expected.indices[0])
    assert torch.allclose(one_scores[:5], expected.values[0], atol=1e-6)
    assert torch.all(one_scores[:-1] >= one_scores[1:]) and sorted(one_indices.tolist()) == list(range(30))


def test_metrics_table_rows_columns_and_gain():
    images, texts, owner = _pool(9, 20)
    before = retrieval.retrieval_metrics(images, texts, owner)
    after = retrieval.retrieval_metrics(images, images[owner], owner)
    table = retrieval.metrics_table(before, after)
    assert table.shape == (9, 3) and list(table.columns) == ["initial", "trained", "gain"]
    assert table.index.tolist() == [
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "mean_recall",
        "median_rank_i2t",
        "median_rank_t2i",
    ]
    assert table.loc["mean_recall", "trained"] == 100
    assert table.loc["t2i_r1", "gain"] == pytest.approx(100 - before["t2i_r1"])
    with pytest.raises(DataError, match="mean_recall"):
        retrieval.metrics_table({}, after)
