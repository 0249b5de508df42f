"""embed / embed_texts against a naive loop: one image, one caption at a time, through the model's towers."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbutils import stages
from nbutils.evaluation.embeddings import embed, embed_texts
from nbutils.models import clip as clip_models
from nbutils.models.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def prepared(prepared_run):
    return stages.load_prepared(prepared_run["run_dir"])


@pytest.fixture(scope="module")
def bundle(prepared, make_tiny_dual_encoder):
    """A tiny random demo dual encoder for the shared run's 32 px cache."""
    tokenizer = train_tokenizer(list(prepared.tables["train"]["text"]))
    model = make_tiny_dual_encoder(tokenizer, 32, max_text_length=64)
    return clip_models.ClipBundle(model.eval(), tokenizer, prepared.image_processor, "dual_encoder")


def _naive(bundle, dataset, mean, std):
    """Per image and per caption, in the dataset's order, normalised with plain division."""
    images, texts, owner = [], [], []
    with torch.no_grad():
        for i, path in enumerate(dataset.image_paths):
            pixels = torch.from_numpy(dataset.cache.pixel_values(dataset.cache.index_of(path), mean, std))
            feature = clip_models.image_features(bundle.model, pixels[None])[0]
            images.append(feature / feature.norm())
            for caption in dataset.captions[i]:
                enc = bundle.tokenizer([caption], truncation=True, max_length=64, return_tensors="pt")
                feature = clip_models.text_features(bundle.model, enc["input_ids"], enc["attention_mask"])[0]
                texts.append(feature / feature.norm())
                owner.append(i)
    return torch.stack(images), torch.stack(texts), np.array(owner)


@pytest.mark.parametrize("split, batch_size", [("test", 256), ("test", 5), ("val", 1)])
def test_embed_matches_a_per_image_and_per_caption_loop(bundle, prepared, split, batch_size):
    dataset = prepared.dataset(split, fixed_caption=True)
    mean, std = prepared.mean_std
    images, texts, text_to_image = embed(bundle, dataset, mean, std, batch_size=batch_size)
    want_images, want_texts, want_owner = _naive(bundle, dataset, mean, std)

    table = prepared.tables[split]
    assert images.shape == (table["image_path"].nunique(), 16) and texts.shape == (len(table), 16)
    assert images.dtype == texts.dtype == torch.float32 and images.device.type == texts.device.type == "cpu"
    torch.testing.assert_close(images, want_images, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(texts, want_texts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(images.norm(dim=1), torch.ones(len(images)))
    assert text_to_image.tolist() == want_owner.tolist()

    # text_to_image sends every caption to its own image: the (image, caption) pairs are the table's rows
    captions = [caption for caps in dataset.captions for caption in caps]
    pairs = Counter((dataset.image_paths[i], caption) for i, caption in zip(text_to_image, captions))
    assert pairs == Counter(zip(table["image_path"], table["text"]))
    # and the caption embeddings are those of the captions in that order
    torch.testing.assert_close(embed_texts(bundle, captions), texts, rtol=1e-5, atol=1e-5)


def test_embed_texts_is_normalised_and_independent_of_batching(bundle):
    texts = ["一个红色的圆形", "一个很长很长很长的蓝色方块在图片的中间", "绿色"]
    together = embed_texts(bundle, texts)
    assert together.shape == (3, 16) and together.dtype == torch.float32
    torch.testing.assert_close(together.norm(dim=1), torch.ones(3))
    alone = torch.cat([embed_texts(bundle, [t]) for t in texts])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        enc = bundle.tokenizer(texts[:1], return_tensors="pt")
        raw = clip_models.text_features(bundle.model, enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(together[:1], F.normalize(raw, dim=-1), rtol=1e-5, atol=1e-5)
    # max_length truncates: the long caption cut to 4 tokens is the embedding of its first 2 characters
    short = embed_texts(bundle, [texts[1]], max_length=4)
    torch.testing.assert_close(short, embed_texts(bundle, [texts[1][:2]]), rtol=1e-5, atol=1e-5)
