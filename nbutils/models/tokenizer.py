"""Tokenizers trained locally on the captions, for models built from small configs (no download).

Pretrained checkpoints bring their own tokenizer (`AutoTokenizer.from_pretrained`); the demo models
and tests need one without a hub, so these train a vocabulary on the captions themselves,
deterministically: `train_tokenizer` a BERT-style WordPiece one (CJK characters are single tokens),
`train_bpe_tokenizer` a byte-level BPE like GPT-2's. `caption_special_ids` says which ids a caption
decoder starts, ends and pads with for either family.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, in this order


def _check_texts(texts: Iterable[str], vocab_size: int, n_special: int, min_frequency: int) -> list[str]:
    texts = list(texts)
    if not texts:
        raise DataError("texts is empty: need at least one caption to train a tokenizer")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"texts[{i}] is {type(text).__name__} ({text!r}), not a string")
    if int(vocab_size) <= n_special:
        raise ValueError(f"vocab_size must be > {n_special}, got {vocab_size}")
    if int(min_frequency) < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    return texts


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

    texts = _check_texts(texts, vocab_size, len(SPECIAL_TOKENS), min_frequency)

    # Borrow the normaliser and pre-tokeniser from an empty BertTokenizerFast, so training sees the
    # text exactly as the returned tokenizer (and any reload of it) will.
    reference = BertTokenizerFast().backend_tokenizer
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = reference.normalizer
    backend.pre_tokenizer = reference.pre_tokenizer
    # The trainer numbers characters in hash-map order (seeded per process) and breaks ties between
    # equally frequent merges by those numbers, so the vocabulary would change from run to run. Seeding
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


# ----------------------------------------------------------------------------- captioning decoders

END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token: start, end and (for batching) padding


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 1):
    """Train a byte-level BPE tokenizer like GPT-2's on captions; return a `GPT2TokenizerFast`.

    Byte-level: any text encodes, no unknown token. `<|endoftext|>` (id 0) is bos, eos and pad, as in
    the `gpt2` checkpoint (which has no pad token; padding is masked by the attention mask, never by id).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    texts = _check_texts(texts, vocab_size, 1, min_frequency)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        min_frequency=int(min_frequency),
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
    )


def train_caption_tokenizer(texts: Iterable[str], language: str, vocab_size: int = 3000):
    """The demo captioner's tokenizer: Chinese gets a BERT-style character vocabulary (what the Chinese
    GPT-2 checkpoints such as uer/gpt2-chinese-cluecorpussmall use), English a byte-level BPE like GPT-2's."""
    if language == "zh":
        return train_tokenizer(texts, vocab_size=vocab_size)
    if language == "en":
        return train_bpe_tokenizer(texts, vocab_size=vocab_size)
    raise ValueError(f"language must be 'zh' or 'en', got {language!r}")


def caption_special_ids(tokenizer) -> dict[str, int]:
    """{"start", "end", "pad"} token ids a caption decoder uses with this tokenizer.

    BERT-style vocabularies (the Chinese GPT-2 checkpoints, BERT decoders): start [CLS], end [SEP],
    pad [PAD]. GPT-2's byte-level BPE: start = end = <|endoftext|>, and pad = end when it has no pad token.
    The ids must come from the tokenizer: the UER config's bos/eos 50256 lies outside its 21128-token vocab.
    """
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        ids = {"start": tokenizer.cls_token_id, "end": tokenizer.sep_token_id, "pad": tokenizer.pad_token_id}
    else:
        ids = {
            "start": tokenizer.bos_token_id,
            "end": tokenizer.eos_token_id,
            "pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        }
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no {', '.join(missing)} token: a caption decoder "
            "needs start, end and pad ids ([CLS]/[SEP]/[PAD] or a bos/eos token)"
        )
    return ids
