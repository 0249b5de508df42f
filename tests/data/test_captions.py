import pytest

from nbutils.data.captions import caption_length, normalize_caption


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("  两 个 年轻 的 男子 ， 在 户外 。 ", "两个年轻的男子，在户外。"),  # Flickr30k-CN word segmentation
        ("一个\u3000红色  圆形", "一个红色圆形"),  # ideographic space
        ("穿着 T 恤 的 男人", "穿着 T 恤的男人"),  # spaces next to Latin are kept
        ("  Two   young\tguys\n", "Two young guys"),
        ("", ""),
    ],
)
def test_normalize_caption(raw, clean):
    assert normalize_caption(raw) == clean


def test_normalize_is_idempotent():
    for s in ["两 个 年轻 的 男子", "a  b", "穿着 T 恤"]:
        once = normalize_caption(s)
        assert normalize_caption(once) == once


def test_caption_length_counts_characters_for_chinese_and_words_otherwise():
    assert caption_length("一个红色的圆形") == 7
    assert caption_length("穿着 T 恤") == 4
    assert caption_length("a big red circle") == 4
