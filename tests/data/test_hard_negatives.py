"""Hard-negative captions learned from a small corpus whose grounded words are known by construction."""

import random

import pytest
import torch

from nbutils.data.datasets import ContrastiveCollator
from nbutils.data.hard_negatives import HardNegatives, word_spans
from nbutils.models.tokenizer import train_tokenizer

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "star"]
# Paraphrase frames: each image's captions use different ones, so their words are not grounded.
FRAMES = [
    "A {c} {s} on the page.",
    "There is a {c} {s} here.",
    "Look, a {c} {s} and nothing else.",
    "We see a {c} {s} in this picture.",
    "Only a {c} {s} is drawn.",
]
ZH_COLOURS = ["红色", "蓝色", "绿色"]
ZH_SHAPES = ["圆形", "正方形", "三角形"]
ZH_FRAMES = ["图中有一个{c}的{s}", "这是一张画着{c}{s}的图片", "画面里只有{c}的{s}", "可以看到一个{c}的{s}"]


def _corpus(colours, shapes, frames, n_images=400, seed=0):
    rng = random.Random(seed)
    captions, images = [], []
    for i in range(n_images):
        c, s = rng.choice(colours), rng.choice(shapes)
        for frame in rng.sample(frames, 3):
            captions.append(frame.format(c=c, s=s))
            images.append(f"img{i}")
    return captions, images


def test_english_substitutes_are_the_grounded_words_of_a_kind():
    negatives = HardNegatives.from_captions(*_corpus(COLOURS, SHAPES, FRAMES), language="en")
    assert set(negatives.substitutes("red")) == set(COLOURS) - {"red"}
    assert set(negatives.substitutes("Square")) == set(SHAPES) - {"square"}
    # Frame words recur only by chance among one image's captions: lift about 1, never replaced.
    for word in ("a", "there", "picture", "only", "and"):
        assert negatives.lift[word] < 1.4
        assert negatives.substitutes(word) == []
    assert min(negatives.lift[w] for w in COLOURS + SHAPES) > 2


def test_a_negative_changes_one_word_and_keeps_the_form():
    negatives = HardNegatives.from_captions(*_corpus(COLOURS, SHAPES, FRAMES), language="en")
    rng = random.Random(0)
    for text in ["There is a red star here.", "Red circle, big.", "A blue square on the page."]:
        for _ in range(20):
            new = negatives.negative(text, rng)
            old_words, new_words = text.split(" "), new.split(" ")
            changed = [(a, b) for a, b in zip(old_words, new_words) if a != b]
            assert len(old_words) == len(new_words) and len(changed) == 1
            a, b = changed[0]
            assert a[0].isupper() == b[0].isupper()  # "Red" -> "Blue", not "blue"
            assert a.strip(",.").lower() in COLOURS + SHAPES and b.strip(",.").lower() in COLOURS + SHAPES
    assert negatives.negative("nothing to replace here", rng) is None
    assert negatives.negatives(["nothing to replace here"], rng) == ["nothing to replace here"]


def test_chinese_words_come_from_jieba_and_negatives_keep_the_rest():
    negatives = HardNegatives.from_captions(*_corpus(ZH_COLOURS, ZH_SHAPES, ZH_FRAMES), language="zh")
    assert set(negatives.substitutes("红色")) == {"蓝色", "绿色"}
    assert set(negatives.substitutes("圆形")) == {"正方形", "三角形"}
    text = "图中有一个红色的圆形"
    spans = word_spans(text, "zh")
    assert "".join(w for w, _, _ in spans) == text and all(text[s:e] == w for w, s, e in spans)
    seen = {negatives.negative(text, random.Random(k)) for k in range(40)}
    assert seen == {
        "图中有一个蓝色的圆形",
        "图中有一个绿色的圆形",
        "图中有一个红色的正方形",
        "图中有一个红色的三角形",
    }
    summary = negatives.summary()
    assert summary["language"] == "zh" and summary["replaceable_words"] == 6


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2 captions but 1 image ids"):
        HardNegatives.from_captions(["a", "b"], ["x"], language="en")
    with pytest.raises(ValueError, match="several captions per image"):
        HardNegatives.from_captions(["a red circle", "a blue star"], ["x", "y"], language="en")
    with pytest.raises(ValueError, match="language"):
        word_spans("hello", "fr")


def test_collator_pads_negatives_with_the_captions_and_repeats_its_choice():
    captions, images = _corpus(COLOURS, SHAPES, FRAMES)
    negatives = HardNegatives.from_captions(captions, images, language="en")
    tokenizer = train_tokenizer(captions)
    collate = ContrastiveCollator(tokenizer, 32, negatives)
    items = [
        {"pixel_values": torch.zeros(3, 4, 4, dtype=torch.uint8), "text": t, "image_index": k}
        for k, t in enumerate(
            ["A red star on the page.", "nothing to replace", "Only a blue circle is drawn."]
        )
    ]
    batch = collate(items)
    assert batch["negative_input_ids"].shape == batch["input_ids"].shape
    again = collate(items)
    assert torch.equal(batch["negative_input_ids"], again["negative_input_ids"])  # seeded by the batch
    decoded = tokenizer.batch_decode(batch["negative_input_ids"], skip_special_tokens=True)
    assert decoded[1] == tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)[1]
    assert batch["negative_groups"][1] == batch["text_groups"][1]  # unchanged: the loss masks it
    assert batch["negative_groups"][0] != batch["text_groups"][0]
    assert "negative_input_ids" not in ContrastiveCollator(tokenizer, 32)(items)

    # two per caption, each replacing another word; a caption with no such word is repeated (and masked)
    two = ContrastiveCollator(tokenizer, 32, negatives, negatives_per_caption=2)(items)
    texts = tokenizer.batch_decode(two["negative_input_ids"], skip_special_tokens=True)
    assert len(texts) == 6 and texts[2] == texts[3] == decoded[1]
    assert texts[0] != texts[1] and texts[4] != texts[5]
    assert (two["negative_groups"][2:4] == two["text_groups"][1]).all()
