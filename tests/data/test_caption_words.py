"""Caption words as image labels, on small corpora whose grounded words are known by construction."""

import math

import pytest
import torch

from nbutils.data.caption_words import CaptionWords, caption_word_loss
from nbutils.data.hard_negatives import HardNegatives
from tests.data.test_hard_negatives import (
    COLOURS,
    FRAMES,
    SHAPES,
    ZH_COLOURS,
    ZH_FRAMES,
    ZH_SHAPES,
    _corpus,
)


def test_the_vocabulary_is_the_grounded_words():
    corpus = _corpus(COLOURS, SHAPES, FRAMES)
    words = CaptionWords.from_captions(*corpus, language="en")
    assert set(words.words) == set(COLOURS) | set(SHAPES)  # frame words ("a", "picture") have lift ~1
    assert list(words.words) == sorted(words.words)
    # train_clip reuses the hard negatives' statistics: the same vocabulary
    assert CaptionWords.from_lift(HardNegatives.from_captions(*corpus, language="en").lift, "en") == words
    zh = CaptionWords.from_captions(*_corpus(ZH_COLOURS, ZH_SHAPES, ZH_FRAMES), language="zh")
    assert set(zh.words) == set(ZH_COLOURS) | set(ZH_SHAPES)
    assert zh.summary() == {"language": "zh", "n_words": 6, "words": list(zh.words)}


def test_targets_are_the_union_over_each_images_captions():
    words = CaptionWords("en", ("blue", "circle", "red", "square"))
    got = words.targets(
        [
            ["A red circle.", "Red, round: a circle"],  # case-blind, punctuation ignored
            ["a blue square", "a square"],  # the second caption leaves blue out: still a label
            ["nothing grounded here"],
        ]
    )
    want = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(got, want)


def test_captions_without_grounded_words_are_an_error():
    captions = [f"picture number {i % 3}" for i in range(60)]
    images = [f"img{i // 3}" for i in range(60)]
    with pytest.raises(ValueError, match="no caption word is grounded"):
        CaptionWords.from_captions(captions, images, "en")
    with pytest.raises(ValueError, match="several captions per image"):
        CaptionWords.from_captions(["a red circle", "a blue star"], ["a", "b"], "en")


def test_caption_word_loss_matches_a_naive_loop():
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    targets = (torch.rand(4, 6) > 0.5).float()
    want = 0.0
    for i in range(4):
        for k in range(6):
            p = 1 / (1 + math.exp(-logits[i, k].item()))
            y = targets[i, k].item()
            want -= y * math.log(p) + (1 - y) * math.log(1 - p)
    assert caption_word_loss(logits, targets).item() == pytest.approx(want / 4, rel=1e-5)  # summed, per image
    with pytest.raises(ValueError, match="differ"):
        caption_word_loss(logits, targets[:, :5])
