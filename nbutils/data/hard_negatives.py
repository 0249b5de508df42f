"""Hard-negative captions: each caption with one visually grounded word replaced by a word of its kind.

Contrastive training takes shortcuts. When the captions of a batch can be told apart by colour and
position, nothing forces the image tower to see shape: "a red circle" is never contrasted with
"a red square". Replace-style hard negatives (NegCLIP, Yuksekgonul et al. 2023; SVLC, Doveh et al.
2023) add such captions: the image must score its true caption above a copy that differs in one word.

Those papers pick the words with a parser and hand-made word lists. Here both are learned from the
training captions, so the same option works on any data set in any language, and nothing here knows
what the words mean:

- A word is *grounded* when it says something about the image: it recurs among the other captions of
  the same image far more often than among captions at large (the lift `P(w in another caption of
  the image | w in this caption) / P(w in a caption)`). Colour, object and place words have lifts of
  3-5 on the demo set; "and", "a", "picture" about 1 (paraphrases vary between captions of one image).
- Two grounded words are *substitutes* when they are used in the same contexts (cosine similarity of
  their (previous word, next word) counts). "red" sits where "blue" sits, "circle" where "square" does.

A negative replaces one grounded word that has substitutes with one of them, in the original string
(case, spacing and punctuation untouched, so the text tower cannot tell negatives by their form).

    negatives = HardNegatives.from_captions(train_captions, language="zh")
    negatives.substitutes("红色")                       # ["橙色", "黄色", ...]
    negatives.negative("一个红色的圆形在中间", rng)       # "一个红色的星形在中间"
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Defaults measured on the demo set (README, train_clip): the grounded words there have lifts of
# 1.4 ("big") to 4.6 ("orange"); paraphrase words ("and" / "as well as") 1.3 at most.
MIN_LIFT = 1.4
MIN_SIMILARITY = 0.95  # substitutes share at least this (cosine) much of their contexts
MIN_COUNT = 5  # words seen in fewer training captions are neither replaced nor used
MAX_CAPTIONS = 200_000  # statistics from at most this many captions (a fixed sample beyond)
_EN_WORD = re.compile(r"[A-Za-z0-9]+")


def word_spans(text: str, language: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of each word of `text`: jieba's precise mode for zh, letter/digit runs for en.

    Words are lower-cased for en (their statistics are case-blind); spans index the original text.
    """
    if language == "zh":
        import jieba

        return [(w, s, e) for w, s, e in jieba.tokenize(text) if w.strip()]
    if language == "en":
        return [(m.group().lower(), m.start(), m.end()) for m in _EN_WORD.finditer(text)]
    raise ValueError(f"language must be 'zh' or 'en'; got {language!r}")


@dataclass
class HardNegatives:
    """Substitution table learned from training captions; `negative` makes one hard negative."""

    language: str
    substitute_table: dict[str, tuple[str, ...]]
    lift: dict[str, float]

    @classmethod
    def from_captions(
        cls,
        captions: Sequence[str],
        image_ids: Sequence,
        language: str,
        min_lift: float = MIN_LIFT,
        min_similarity: float = MIN_SIMILARITY,
        min_count: int = MIN_COUNT,
        max_captions: int = MAX_CAPTIONS,
    ) -> HardNegatives:
        """Learn grounded words and their substitutes from `captions` (one per row) and their `image_ids`.

        `image_ids[i]` names the image of `captions[i]` (e.g. its path): the lift needs several
        captions per image. Raises ValueError when no image has two captions.
        """
        lift, words = word_lift(captions, image_ids, language, min_count, max_captions)
        grounded = sorted(w for w, value in lift.items() if value >= min_lift)
        similarity = _context_similarity(words, grounded)
        table = {}
        for k, word in enumerate(grounded):
            others = [grounded[j] for j in np.flatnonzero(similarity[k] >= min_similarity) if j != k]
            if others:
                table[word] = tuple(others)
        return cls(language, table, lift)

    def substitutes(self, word: str) -> list[str]:
        """The words that may replace `word` (empty when it is not grounded or has none)."""
        return list(self.substitute_table.get(word.lower() if self.language == "en" else word, ()))

    def negative(self, text: str, rng: random.Random) -> str | None:
        """`text` with one replaceable word swapped for a substitute, or None when it has no such word."""
        found = self.negatives_of(text, 1, rng)
        return found[0] if found else None

    def negatives_of(self, text: str, k: int, rng: random.Random) -> list[str]:
        """Up to `k` negatives of `text`, each replacing a different word (fewer when it has fewer)."""
        spans = [
            (w, s, e) for w, s, e in cached_word_spans(text, self.language) if w in self.substitute_table
        ]
        out = []
        for word, start, end in rng.sample(spans, min(k, len(spans))):
            new = rng.choice(self.substitute_table[word])
            if self.language == "en" and text[start].isupper():
                new = new[:1].upper() + new[1:]
            out.append(text[:start] + new + text[end:])
        return out

    def negatives(self, texts: Sequence[str], rng: random.Random, k: int = 1) -> list[str]:
        """`k` negatives per text, text by text (k * len(texts)); missing ones are the text itself.

        The loss masks a negative equal to its own caption (same text group), so a text with fewer
        than `k` replaceable words simply has fewer hard negatives.
        """
        out = []
        for text in texts:
            found = self.negatives_of(text, k, rng)
            out.extend(found + [text] * (k - len(found)))
        return out

    def summary(self) -> dict:
        """The learned table in a JSON-friendly form (for stage.json / summary.json)."""
        return {
            "language": self.language,
            "replaceable_words": len(self.substitute_table),
            "substitutes": {w: list(s) for w, s in sorted(self.substitute_table.items())},
        }


def word_lift(
    captions: Sequence[str],
    image_ids: Sequence,
    language: str,
    min_count: int = MIN_COUNT,
    max_captions: int = MAX_CAPTIONS,
) -> tuple[dict[str, float], list[list[str]]]:
    """Each word's lift (module docstring) over `captions` of `image_ids`, and the captions' words.

    Words seen in fewer than `min_count` captions get no lift; beyond `max_captions` captions a fixed
    sample is used (and the words returned are that sample's). Raises ValueError when no image has two
    captions: grounded words cannot be told from paraphrase then.
    """
    if len(captions) != len(image_ids):
        raise ValueError(f"{len(captions)} captions but {len(image_ids)} image ids")
    rows = list(range(len(captions)))
    if len(rows) > max_captions:
        rows = sorted(random.Random(0).sample(rows, max_captions))
    words = [[w for w, _, _ in word_spans(str(captions[i]), language)] for i in rows]
    by_image = defaultdict(list)
    for i, ws in zip(rows, words):
        by_image[image_ids[i]].append(set(ws))
    if not any(len(caps) > 1 for caps in by_image.values()):
        raise ValueError(
            "grounded words need several captions per image (to tell them from paraphrase); "
            "every image here has one"
        )
    return _lift(words, by_image, min_count), words


@lru_cache(maxsize=65536)
def cached_word_spans(text: str, language: str) -> tuple:
    """`word_spans` as a tuple, remembered for the last 65,536 distinct texts."""
    # Training draws the same captions every epoch; segmenting once per distinct caption is enough.
    return tuple(word_spans(text, language))


def _lift(words: list[list[str]], by_image: dict, min_count: int) -> dict[str, float]:
    """Per word: P(in another caption of the same image | in this caption) / P(in a caption)."""
    document_frequency = Counter(w for ws in words for w in set(ws))
    n = len(words)
    hits, trials = Counter(), Counter()
    for caps in by_image.values():
        for i, caption in enumerate(caps):
            others = caps[:i] + caps[i + 1 :]
            for w in caption:
                trials[w] += len(others)
                hits[w] += sum(w in other for other in others)
    return {
        w: (hits[w] / trials[w]) / (df / n)
        for w, df in document_frequency.items()
        if df >= min_count and trials[w]
    }


def _context_similarity(words: list[list[str]], vocabulary: list[str]) -> np.ndarray:
    """Cosine similarity of the (previous, next) word counts of each pair of `vocabulary` words."""
    index = {w: k for k, w in enumerate(vocabulary)}
    contexts: dict[tuple, int] = {}
    counts = Counter()
    for ws in words:
        padded = ["<s>", *ws, "</s>"]
        for k in range(1, len(padded) - 1):
            if padded[k] in index:
                context = contexts.setdefault((padded[k - 1], padded[k + 1]), len(contexts))
                counts[index[padded[k]], context] += 1
    matrix = np.zeros((len(vocabulary), max(1, len(contexts))))
    for (row, column), count in counts.items():
        matrix[row, column] = count
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return matrix @ matrix.T
