"""Caption words as image labels: each image's grounded caption words, for an auxiliary loss beside CLIP's.

Contrastive training only asks an image to beat the other captions of its batch, and on data where colour
and position already tell those apart it learns little else (README, train_clip). Predicting the words of
an image's captions from the image tower (a linear head, binary cross-entropy per word) asks for every
attribute the captions name, in every batch: it is supervision read from the captions, as in VirTex and
SuperClass (Huang et al. 2024, bag-of-words classification from captions).

Only *grounded* words are labels, learned from the captions with the lift of nbutils.data.hard_negatives
(a word that recurs among the other captions of the same image far more than among captions at large): in
the demo set the colours, shapes, sizes and places, not "a" or "picture". An image's targets are the
union over all its captions, so a word one caption leaves out is still a label. Nothing here knows what
the words mean; the same option works on any captions in either language.

    words = CaptionWords.from_captions(train_table["text"], train_table["image_path"], "zh")
    targets = words.targets(train_dataset.captions)      # (images, words), bool
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .hard_negatives import MIN_COUNT, MIN_LIFT, cached_word_spans, word_lift


@dataclass
class CaptionWords:
    """The vocabulary of grounded caption words; `targets` turns each image's captions into 0/1 labels."""

    language: str
    words: tuple[str, ...]

    @classmethod
    def from_captions(
        cls,
        captions: Sequence[str],
        image_ids: Sequence,
        language: str,
        min_lift: float = MIN_LIFT,
        min_count: int = MIN_COUNT,
    ) -> CaptionWords:
        """The words of `captions` (one per row, `image_ids[i]` naming its image) with lift >= `min_lift`.

        Raises ValueError when no word qualifies, or when no image has two captions (no lift then).
        """
        lift, _ = word_lift(list(captions), list(image_ids), language, min_count)
        return cls.from_lift(lift, language, min_lift)

    @classmethod
    def from_lift(cls, lift: dict[str, float], language: str, min_lift: float = MIN_LIFT) -> CaptionWords:
        """The words of a lift table (`word_lift`, or `HardNegatives.lift`) with lift >= `min_lift`."""
        words = tuple(sorted(w for w, value in lift.items() if value >= min_lift))
        if not words:
            raise ValueError(
                f"no caption word is grounded (lift >= {min_lift}): nothing to predict from the images"
            )
        return cls(language, words)

    def targets(self, captions_per_image: Sequence[Sequence[str]]) -> torch.Tensor:
        """(images, words) bool: True where any caption of the image contains the word (bool: a million
        images by a thousand words is 1 GB, not 4)."""
        index = {w: k for k, w in enumerate(self.words)}
        out = torch.zeros(len(captions_per_image), len(self.words), dtype=torch.bool)
        for i, captions in enumerate(captions_per_image):
            for caption in captions:
                for word, _, _ in cached_word_spans(str(caption), self.language):
                    k = index.get(word)
                    if k is not None:
                        out[i, k] = True
        return out

    def summary(self) -> dict:
        """JSON-friendly: the language and the words."""
        return {"language": self.language, "n_words": len(self.words), "words": list(self.words)}


def caption_word_loss(word_logits: torch.Tensor, word_targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of (n, V) word logits against (n, V) 0/1 (or bool) targets, summed over the V words and
    averaged over the n images (nbutils.data.caption_words: each image's grounded caption words).

    Summed, not averaged, over the words: each word keeps the weight of one binary label whatever the
    vocabulary's size, so `word_loss_weight` means the same on any data set.
    """
    if word_logits.shape != word_targets.shape:
        raise ValueError(
            f"word_logits {tuple(word_logits.shape)} and word_targets {tuple(word_targets.shape)} differ"
        )
    per_word = F.binary_cross_entropy_with_logits(
        word_logits, word_targets.to(word_logits.dtype), reduction="none"
    )
    return per_word.sum(dim=1).mean()
