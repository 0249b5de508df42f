"""train_tokenizer: a deterministic BERT-style WordPiece tokenizer trained on the captions (no download)."""

import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer, BertTokenizerFast

from nbutils.errors import DataError
from nbutils.models.tokenizer import SPECIAL_TOKENS, train_tokenizer


def test_tokenizer_splits_cjk_characters_and_lowercases_english(tokenizer):
    assert isinstance(tokenizer, BertTokenizerFast)
    ids = tokenizer("一个红色的圆形").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["[CLS]", "一", "个", "红", "色", "的", "圆", "形", "[SEP]"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.tokenize("A RED Circle") == ["a", "red", "circle"]
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    # a character never seen in training is unknown, not dropped
    assert tokenizer.convert_ids_to_tokens(tokenizer("龘").input_ids) == ["[CLS]", "[UNK]", "[SEP]"]


def test_tokenizer_round_trips_through_autotokenizer(tokenizer, captions, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = captions + ["混合 mixed 文本!"]
    assert reloaded(texts).input_ids == tokenizer(texts).input_ids
    assert reloaded.get_vocab() == tokenizer.get_vocab()


def test_tokenizer_is_deterministic(tokenizer, captions):
    assert train_tokenizer(captions, vocab_size=3000).get_vocab() == tokenizer.get_vocab()
    # the Rust trainer's hash maps are seeded per process: a second process must agree too
    code = (
        "import json, sys; from nbutils.models.tokenizer import train_tokenizer; "
        "print(json.dumps(train_tokenizer(json.loads(sys.stdin.read()), vocab_size=3000).get_vocab()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(captions), capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == tokenizer.get_vocab()


def test_tokenizer_rejects_bad_texts():
    with pytest.raises(DataError, match="texts is empty"):
        train_tokenizer([])
    with pytest.raises(DataError, match=r"texts\[1\]"):
        train_tokenizer(["好", None])
