"""The matplotlib figures notebooks show: counts, split sizes, caption lengths, loss curves.

Every figure worth a thumbnail in the run's index.html is saved under `<output_dir>/figures/` with
`save_figure`. Image grids with captions are HTML (see nbutils.reporting.grids).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_path


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
        ax.hist(
            v, bins=bins, alpha=0.5, density=True, label=f"{name} (mean {v.mean():.1f})" if len(v) else name
        )
    ax.set_xlabel("caption length (characters for Chinese, words otherwise)")
    ax.set_ylabel("share of captions")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_loss_curve(
    log_history: list[dict],
    chance: float | None = None,
    title: str = "training loss",
    ylabel: str = "contrastive loss",
):
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
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_loss_curves(histories: dict[str, list[dict]], title: str = "training loss", ylabel: str = "loss"):
    """Several runs' train (solid) and eval (dashed, dots) loss against step on shared axes, one colour per run.

    `histories` maps a label (e.g. a mapping type) to a Trainer's `state.log_history`.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (label, log_history) in enumerate(histories.items()):
        colour = f"C{i}"
        for key, style, suffix in (("loss", "-", "train"), ("eval_loss", "o--", "validation")):
            points = [(h["step"], h[key]) for h in log_history if key in h]
            if points:
                ax.plot(*zip(*points), style, color=colour, label=f"{label}, {suffix}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
