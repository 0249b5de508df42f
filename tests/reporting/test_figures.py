import matplotlib

matplotlib.use("Agg")
import pandas as pd
from PIL import Image

from nbutils.reporting import figures


def test_save_figure_writes_a_png_and_can_close_it(tmp_path):
    import matplotlib.pyplot as plt

    fig = figures.plot_split_counts(
        pd.DataFrame({"images": [8, 1, 1], "rows": [40, 5, 5]}, index=["train", "val", "test"])
    )
    path = figures.save_figure(fig, tmp_path, "counts", close=True)
    assert path == tmp_path / "figures" / "counts.png"
    assert Image.open(path).format == "PNG" and not plt.fignum_exists(fig.number)


def test_caption_length_histogram_has_one_series_per_split():
    fig = figures.plot_caption_lengths(
        {"train": pd.DataFrame({"text": ["一二三", "四五"]}), "test": pd.DataFrame({"text": ["六"]})}, len
    )
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["train (mean 2.5)", "test (mean 1.0)"]


def test_plot_counts_orders_bars_and_labels_them():
    fig = figures.plot_counts({"http_404": 81, "timeout": 4, "too_large": 18}, "urls", "103 failed")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["timeout", "too_large", "http_404"]
    assert [round(p.get_width()) for p in ax.patches] == [4, 18, 81]
    assert ax.get_xlabel() == "urls" and ax.get_title() == "103 failed"
