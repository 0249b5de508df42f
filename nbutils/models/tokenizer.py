"""Tokenizers trained locally on the captions, for models built from small configs (no download).

Pretrained checkpoints bring their own tokenizer (`AutoTokenizer.from_pretrained`); the demo models
and tests need one without a hub, so `train_tokenizer` trains a BERT-style WordPiece vocabulary on the
captions themselves, deterministically.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, in this order


def train_tokenizer(texts: Iterable[str], vocab_size: int = 3000, min_frequency: int = 1):
    """Train a BERT-style WordPiece tokenizer on captions; return a `BertTokenizerFast`.

    BERT's normaliser and pre-tokeniser: English is lowercased (accents stripped) and split on
    whitespace and punctuation, every CJK character becomes its own token (as in bert-base-chinese).
    Special tokens [PAD] [UNK] [CLS] [SEP] [MASK] get ids 0-4, then every character seen (alone and as
    "##" continuation, always kept even past `vocab_size`), then merged pieces and whole words.
    Same texts, same vocabulary and ids, in any process.
    """
    from tokenizers import Tokenizer, models, trainers
    from transformers import BertTokenizerFast

    texts = list(texts)
    if not texts:
        raise DataError("texts is empty: need at least one caption to train a tokenizer")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"texts[{i}] is {type(text).__name__} ({text!r}), not a string")
    if int(vocab_size) <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
    if int(min_frequency) < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")

    # Borrow the normaliser and pre-tokeniser from an empty BertTokenizerFast, so training sees the
    # text exactly as the returned tokenizer (and any reload of it) will.
    reference = BertTokenizerFast().backend_tokenizer
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = reference.normalizer
    backend.pre_tokenizer = reference.pre_tokenizer
    # The trainer numbers characters in hash-map order (seeded per process) and breaks ties between
    # equally frequent merges by those numbers, so the vocabulary changed from run to run. Seeding
    # every character and "##" continuation in sorted order, as leading tokens, fixes all numbers.
    first, inner = set(), set()
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            first.update(word)
            inner.update("##" + ch for ch in word[1:])
    seeds = SPECIAL_TOKENS + sorted(first) + sorted(inner)
    trainer = trainers.WordPieceTrainer(
        vocab_size=int(vocab_size),
        min_frequency=int(min_frequency),
        special_tokens=seeds,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return BertTokenizerFast(vocab=backend.get_vocab(with_added_tokens=False))
