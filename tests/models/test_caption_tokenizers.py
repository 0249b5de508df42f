"""Caption-decoder tokenizers: byte-level BPE for English, the character vocabulary for Chinese, their special ids."""

import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer, GPT2TokenizerFast

from nbutils.models.tokenizer import (
    END_OF_TEXT,
    caption_special_ids,
    train_bpe_tokenizer,
    train_caption_tokenizer,
    train_tokenizer,
)

EN = [
    "a red circle in the top left corner",
    "two blue squares on a plain background",
    "a small green triangle",
    "three objects: a red star, a blue circle and a yellow square",
    "the picture shows a big purple hexagon",
]


def test_bpe_tokenizer_is_gpt2_style_and_round_trips_any_text(tmp_path):
    tok = train_bpe_tokenizer(EN, vocab_size=300)
    assert isinstance(tok, GPT2TokenizerFast)
    assert tok.convert_ids_to_tokens(0) == END_OF_TEXT == tok.bos_token == tok.eos_token == tok.pad_token
    for text in [*EN, "unseen words, 中文 too!"]:  # byte level: nothing is unknown, decode inverts encode
        ids = tok(text, add_special_tokens=False).input_ids
        assert 0 not in ids and tok.decode(ids) == text
    assert tok(EN[0]).input_ids == tok(EN[0], add_special_tokens=False).input_ids  # GPT-2 adds no specials
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert [again(t).input_ids for t in EN] == [tok(t).input_ids for t in EN]


def test_bpe_tokenizer_is_the_same_in_every_process():
    code = (
        "import json, sys; from nbutils.models.tokenizer import train_bpe_tokenizer; "
        "t = train_bpe_tokenizer(json.loads(sys.argv[1]), vocab_size=290); "
        "print(json.dumps(t.get_vocab(), sort_keys=True))"
    )
    vocabs = {
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(EN * 3)], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(vocabs) == 1 and len(json.loads(vocabs.pop())) == 290


def test_caption_tokenizer_per_language_and_special_ids():
    zh = train_caption_tokenizer(["一个红色的圆形", "两个蓝色的方块"], "zh")
    assert zh.get_vocab() == train_tokenizer(["一个红色的圆形", "两个蓝色的方块"]).get_vocab()
    assert caption_special_ids(zh) == {
        "start": zh.cls_token_id,
        "end": zh.sep_token_id,
        "pad": zh.pad_token_id,
    }
    assert caption_special_ids(zh) == {"start": 2, "end": 3, "pad": 0}
    en = train_caption_tokenizer(EN, "en", vocab_size=300)
    assert isinstance(en, GPT2TokenizerFast) and caption_special_ids(en) == {"start": 0, "end": 0, "pad": 0}
    with pytest.raises(ValueError, match="language"):
        train_caption_tokenizer(EN, "fr")


def test_special_ids_fall_back_to_eos_for_padding_and_name_what_is_missing():
    tok = train_bpe_tokenizer(EN, vocab_size=300)
    tok.pad_token = None
    assert caption_special_ids(tok)["pad"] == tok.eos_token_id
    tok.bos_token = None
    with pytest.raises(ValueError, match="start"):
        caption_special_ids(tok)
