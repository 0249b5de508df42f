"""Figures and image grids that notebooks show.

Image grids with captions are HTML, not matplotlib: the browser renders Chinese text with
the reader's own fonts, whereas matplotlib needs a CJK font installed or draws empty boxes.
Every figure worth a thumbnail in the run's index.html is saved under `<output_dir>/figures/`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import atomic_path


def save_figure(fig, output_dir, name: str, close: bool = False) -> Path:
    """Save a matplotlib figure to `<output_dir>/figures/<name>.png` (atomically).

    `close=True` keeps it out of the notebook (for figures meant only for the run's index.html).
    """
    path = Path(output_dir) / "figures" / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def plot_split_counts(counts):
    """Bar chart of images and caption rows per split (`counts` from splits.split_counts)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, col in zip(axes, ("images", "rows")):
        bars = ax.bar(counts.index, counts[col], color=["#4c72b0", "#dd8452", "#55a868"][: len(counts)])
        ax.bar_label(bars)
        ax.set_title(f"{col} per split")
    fig.tight_layout()
    return fig


def plot_counts(counts: dict, unit: str, title: str):
    """Horizontal bars of counts by kind or reason (e.g. a summary's failed_by_kind), largest on top."""
    import matplotlib.pyplot as plt

    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(items) + 1))
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color="#c44e52")
    ax.bar_label(bars)
    ax.set_xlabel(unit)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_caption_lengths(tables: dict, length_fn):
    """Histogram of caption lengths per split; `length_fn` maps a caption to its length."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    lengths = {name: np.array([length_fn(t) for t in df["text"]]) for name, df in tables.items()}
    hi = max((int(v.max()) for v in lengths.values() if len(v)), default=1)
    bins = np.arange(0, hi + 2) - 0.5
    for name, v in lengths.items():
        ax.hist(v, bins=bins, alpha=0.5, density=True, label=f"{name} (mean {v.mean():.1f})" if len(v) else name)
    ax.set_xlabel("caption length (characters for Chinese, words otherwise)")
    ax.set_ylabel("share of captions")
    ax.legend()
    fig.tight_layout()
    return fig


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


def image_grid_html(images: Sequence, captions: Sequence[Sequence[str] | str], ncols: int = 6,
                    thumb_px: int = 128) -> str:
    """An HTML grid: each image (path, PIL image or uint8 array) with its caption(s) below.

    Small images are scaled up without smoothing so 64 px demo images stay readable.
    Wrap in `IPython.display.HTML` to show it; it survives nbconvert's HTML export.
    """
    cells = []
    for img, caps in zip(images, captions):
        caps = [caps] if isinstance(caps, str) else list(caps)
        text = "<br>".join(html.escape(c) for c in caps)
        cells.append(
            f'<div style="width:{thumb_px + 40}px;margin:4px;font-size:12px;line-height:1.3">'
            f'<img src="{_png_data_uri(img)}" alt="{html.escape(caps[0] if caps else "")}" style="width:{thumb_px}px;height:{thumb_px}px;'
            f'object-fit:contain;image-rendering:pixelated;border:1px solid #ccc"><br>{text}</div>'
        )
    return ('<div style="display:grid;grid-template-columns:repeat(%d,auto);justify-content:start">%s</div>'
            % (ncols, "".join(cells)))


def safe_thumbnail(path, size: int = 96, max_pixels: int = 50_000_000) -> np.ndarray:
    """A uint8 thumbnail of any file, never crashing: a grey tile for what cannot be shown safely.

    The header is read first so a decompression bomb is never decoded.
    """
    from PIL import Image

    from .image_cache import load_rgb

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


def plot_loss_curve(log_history: list[dict], chance: float | None = None, title: str = "training loss"):
    """Train (and eval) loss against step from a Trainer's `state.log_history`; `chance` draws ln(batch)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, style in (("loss", "-"), ("eval_loss", "o--")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            ax.plot(*zip(*points), style, label={"loss": "train", "eval_loss": "validation"}[key])
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label=f"chance = ln(batch) = {chance:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
