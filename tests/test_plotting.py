import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from PIL import Image

from nbutils import plotting


def test_save_figure_writes_a_png_and_can_close_it(tmp_path):
    import matplotlib.pyplot as plt

    fig = plotting.plot_split_counts(pd.DataFrame({"images": [8, 1, 1], "rows": [40, 5, 5]},
                                                  index=["train", "val", "test"]))
    path = plotting.save_figure(fig, tmp_path, "counts", close=True)
    assert path == tmp_path / "figures" / "counts.png"
    assert Image.open(path).format == "PNG" and not plt.fignum_exists(fig.number)


def test_image_grid_html_embeds_every_image_and_escapes_captions():
    images = [np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)]
    html = plotting.image_grid_html(images, ["一个<红色>圆形", ["a", "b"]], ncols=2)
    assert html.count("<img ") == 2 and html.count("data:image/png;base64,") == 2
    assert "一个&lt;红色&gt;圆形" in html and "<红色>" not in html
    assert "grid-template-columns:repeat(2" in html


def test_safe_thumbnail_never_decodes_a_bomb_and_never_raises(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((200, 100, 3), 7, np.uint8)).save(good)
    thumb = plotting.safe_thumbnail(good, size=50)
    assert thumb.shape == (50, 25, 3) and (thumb == 7).all()

    html_page = tmp_path / "page.jpg"
    html_page.write_bytes(b"<html>error</html>")
    assert (plotting.safe_thumbnail(html_page, size=10) == 200).all()

    big = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(big)
    decoded = []
    monkeypatch.setattr("nbutils.image_cache.load_rgb", lambda p: decoded.append(p))
    assert (plotting.safe_thumbnail(big, size=10, max_pixels=1000) == 200).all()
    assert decoded == []                      # refused from the header alone


def test_caption_length_histogram_has_one_series_per_split():
    fig = plotting.plot_caption_lengths({"train": pd.DataFrame({"text": ["一二三", "四五"]}),
                                         "test": pd.DataFrame({"text": ["六"]})}, len)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["train (mean 2.5)", "test (mean 1.0)"]


def test_plot_counts_orders_bars_and_labels_them():
    fig = plotting.plot_counts({"http_404": 81, "timeout": 4, "too_large": 18}, "urls", "103 failed")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["timeout", "too_large", "http_404"]
    assert [round(p.get_width()) for p in ax.patches] == [4, 18, 81]
    assert ax.get_xlabel() == "urls" and ax.get_title() == "103 failed"
