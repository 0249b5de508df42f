"""Image grids for notebooks and reports: HTML with captions, and a plain matplotlib grid.

Grids with captions are HTML, not matplotlib: the browser renders Chinese text with the reader's own
fonts, whereas matplotlib needs a CJK font installed or draws empty boxes. Images are embedded as PNG
data URIs, so a grid survives nbconvert's HTML export and needs no files beside the report.
No torch here: stages 01 and 02 show grids too.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.images import load_rgb


def image_grid_figure(images: np.ndarray, ncols: int = 8):
    """A matplotlib grid of uint8 HWC images (no captions), e.g. what the cache feeds the model."""
    import matplotlib.pyplot as plt

    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images):
        ax.imshow(img, interpolation="nearest")
    fig.tight_layout(pad=0.2)
    return fig


def _png_data_uri(img) -> str:
    from PIL import Image

    if isinstance(img, (str, Path)):
        img = Image.open(img)
    elif isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_grid_html(
    images: Sequence, captions: Sequence[Sequence[str] | str], ncols: int = 6, thumb_px: int = 128
) -> str:
    """An HTML grid: each image (path, PIL image or uint8 array) with its caption(s) below.

    Small images are scaled up without smoothing so 64 px demo images stay readable.
    Wrap in `IPython.display.HTML` to show it; it survives nbconvert's HTML export.
    """
    cells = []
    for img, caps in zip(images, captions):
        caps = [caps] if isinstance(caps, str) else list(caps)
        text = "<br>".join(html.escape(c) for c in caps)
        alt = html.escape(caps[0] if caps else "")
        cells.append(
            f'<div style="width:{thumb_px + 40}px;margin:4px;font-size:12px;line-height:1.3">'
            f'<img src="{_png_data_uri(img)}" alt="{alt}" style="width:{thumb_px}px;height:{thumb_px}px;'
            f'object-fit:contain;image-rendering:pixelated;border:1px solid #ccc"><br>{text}</div>'
        )
    grid = f"display:grid;grid-template-columns:repeat({ncols},auto);justify-content:start"
    return f'<div style="{grid}">{"".join(cells)}</div>'


def safe_thumbnail(path, size: int = 96, max_pixels: int = 50_000_000) -> np.ndarray:
    """A uint8 thumbnail of any file, never crashing: a grey tile for what cannot be shown safely.

    The header is read first so a decompression bomb is never decoded.
    """
    from PIL import Image

    grey = np.full((size, size, 3), 200, dtype=np.uint8)
    try:
        with Image.open(path) as probe:
            if probe.width * probe.height > max_pixels:
                return grey
        image = load_rgb(path)
        image.thumbnail((size, size))
        return np.asarray(image, dtype=np.uint8)
    except Exception:  # rejects are rejects for a reason: show a tile, not a traceback
        return grey


def rejects_grid_html(rejects: pd.DataFrame, per_reason: int = 3, limit: int = 18, ncols: int = 6) -> str:
    """A few rejected images of each reason (processdata_02's `rejects`), drawn only where that is safe."""
    # astype(str): a table without rejects has a float64 (all-empty) reason column, which .str refuses
    category = rejects["reason"].astype(str).str.split(":").str[0]
    shown = rejects.groupby(category).head(per_reason).head(limit)
    return image_grid_html(
        [safe_thumbnail(p) for p in shown["image_path"]], list(shown["reason"]), ncols=ncols
    )


def normalised_grid_html(checks: pd.DataFrame, limit: int = 12, ncols: int = 6) -> str:
    """The rewritten copies of images that needed normalising (processdata_02's `checks`), with why."""
    fixed = checks[checks["needs_normalising"] & checks["ok"]].head(limit)
    return image_grid_html(
        [safe_thumbnail(p) for p in fixed["normalised_path"]],
        [f"{m} {f}" for m, f in zip(fixed["mode"], fixed["format"])],
        ncols=ncols,
    )


def cache_samples(
    table: pd.DataFrame, cache, n: int = 12, seed: int = 0, captions_per_image: int = 3
) -> tuple[np.ndarray, list[list[str]]]:
    """`n` random images of `table` as the model sees them (read back from the image cache), with captions."""
    images = table.drop_duplicates("image_path").sample(
        min(n, table["image_path"].nunique()), random_state=seed
    )
    captions = table.groupby("image_path")["text"].apply(list)
    pixels = cache.uint8(cache.index_of(list(images["image_path"])))
    return pixels, [captions[p][:captions_per_image] for p in images["image_path"]]


def search_results_html(results: list[dict], dataset, k_label: str = "✓ ", thumb_px: int = 96) -> str:
    """Text→image search results: for each query its top images with scores, the correct one marked.

    `results` items: {"query", "target" (image number in `dataset`), "scores", "images" (image numbers)}.
    """
    parts = []
    for r in results:
        pixels = dataset.cache.uint8([int(dataset.rows[j]) for j in r["images"]])
        labels = [
            f"{k_label if int(j) == r['target'] else ''}{float(s):.3f}"
            for s, j in zip(r["scores"], r["images"])
        ]
        parts.append(
            f"<p><b>{html.escape(r['query'])}</b></p>"
            + image_grid_html(pixels, labels, ncols=len(labels), thumb_px=thumb_px)
        )
    return "".join(parts)


def captions_grid_html(
    dataset, predictions: pd.DataFrame, n: int = 12, references: int = 2, ncols: int = 6
) -> str:
    """Test images with the model's caption (marked ✎) above `references` of their reference captions.

    `dataset` is the test split's ImageTextDataset; `predictions` has image_path and prediction columns.
    """
    shown = predictions.head(n)
    number = {path: i for i, path in enumerate(dataset.image_paths)}
    pixels = dataset.cache.uint8([int(dataset.rows[number[p]]) for p in shown["image_path"]])
    captions = [
        [f"✎ {pred}", *dataset.captions[number[path]][:references]]
        for path, pred in zip(shown["image_path"], shown["prediction"])
    ]
    return image_grid_html(pixels, captions, ncols=ncols)
