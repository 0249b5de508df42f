"""Caption normalisation, the same for every corpus and language.

Segmented Chinese corpora (Flickr30k-CN, some AI Challenger dumps) put spaces between words:
"两 个 年轻 的 男子". Models and metrics expect "两个年轻的男子", so spaces between CJK
characters are removed; spaces next to Latin words ("穿着 T 恤") are kept.
"""

from __future__ import annotations

import re

# CJK ideographs, CJK punctuation, and full-width forms (，。！？：；（）).
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}])\\s+(?=[{_CJK}])")
_WHITESPACE = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """Strip, collapse whitespace runs to one space, drop spaces between CJK characters."""
    # The ideographic space U+3000 is whitespace for str.split and is treated as a space here too.
    text = _WHITESPACE.sub(" ", str(text).replace("\u3000", " ")).strip()
    return _SPACE_BETWEEN_CJK.sub("", text)


def caption_length(text: str) -> int:
    """Length used in reports: characters for Chinese, words for space-separated text."""
    has_cjk = re.search(f"[{_CJK}]", text) is not None
    return len(text.replace(" ", "")) if has_cjk else len(text.split())
