"""CLIPScore and RefCLIPScore against a direct computation written out per caption."""

import math

import pytest
import torch

from nbutils.evaluation.clipscore import clipscores, score_captions
from nbutils.evaluation.embeddings import embed_texts
from nbutils.models.tokenizer import train_tokenizer


def _cos(a, b):
    a, b = a.tolist(), b.tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))


def test_clipscore_and_refclipscore_equal_the_papers_formulas():
    torch.manual_seed(0)
    images, captions = torch.randn(6, 8), torch.randn(6, 8)
    captions[0] = -images[0]  # negative cosine: CLIPScore 0, RefCLIPScore 0
    references = [torch.randn(k, 8) for k in (1, 2, 3, 4, 5, 1)]
    table = clipscores(images, captions, references)
    for i in range(6):
        clip_s = 2.5 * max(_cos(images[i], captions[i]), 0.0)
        ref = max(max(_cos(captions[i], r) for r in references[i]), 0.0)
        harmonic = 2 * clip_s * ref / (clip_s + ref) if clip_s + ref > 0 else 0.0
        assert table["clipscore"][i] == pytest.approx(clip_s, abs=1e-6)
        assert table["reference_similarity"][i] == pytest.approx(ref, abs=1e-6)
        assert table["refclipscore"][i] == pytest.approx(harmonic, abs=1e-6)
    assert table["clipscore"][0] == 0.0 and table["refclipscore"][0] == 0.0
    # scale-free: embeddings need not be normalised
    torch.testing.assert_close(
        torch.tensor(clipscores(3 * images, 0.5 * captions)["clipscore"].to_numpy()),
        torch.tensor(table["clipscore"].to_numpy()),
    )
    assert "refclipscore" not in clipscores(images, captions)


def test_bad_shapes_and_missing_references_are_named():
    with pytest.raises(ValueError, match="must both be"):
        clipscores(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="2 reference sets for 3 captions"):
        clipscores(torch.ones(3, 4), torch.ones(3, 4), [torch.ones(1, 4)] * 2)
    with pytest.raises(ValueError, match="at least one reference"):
        clipscores(torch.ones(1, 4), torch.ones(1, 4), [torch.zeros(0, 4)])


def test_score_captions_embeds_with_the_clips_text_tower_and_the_prompt(make_tiny_dual_encoder):
    tokenizer = train_tokenizer(["一个红色的圆形", "蓝色的方形", "一张图片：绿色的星形"])
    model = make_tiny_dual_encoder(tokenizer, 32).eval()
    bundle = type("Bundle", (), {"model": model, "tokenizer": tokenizer})()
    images = torch.randn(2, model.config.projection_dim)
    captions, references = ["一个红色的圆形", "蓝色的方形"], [["红色的圆形", "圆形"], ["方形"]]
    table = score_captions(bundle, images, captions, references, prompt="一张图片：")
    direct = clipscores(
        images,
        embed_texts(bundle, ["一张图片：" + c for c in captions]),
        [embed_texts(bundle, ["一张图片：" + r for r in refs]) for refs in references],
    )
    for column in ("clipscore", "refclipscore"):
        assert table[column].tolist() == pytest.approx(direct[column].tolist(), abs=1e-6)
