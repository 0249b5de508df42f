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


def ema_smooth(values, weight: float) -> np.ndarray:
    """TensorBoard's smoothing of a curve: an exponential moving average with `weight` in [0, 1), debiased.

    smoothed[i] = sum_j weight^(i-j) (1-weight) v[j] / (1 - weight^(n_i)) over the n_i finite values up to i:
    a weighted mean of the points so far, so the start is not pulled towards 0 (a plain EMA started at 0 is) and
    a constant curve stays where it is. Non-finite values pass through and do not enter the average.
    `weight` 0 returns the values unchanged.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    values = np.asarray(values, dtype=float)
    out = values.copy()
    if weight == 0.0:
        return out
    last, n = 0.0, 0
    for i, v in enumerate(values):
        if not np.isfinite(v):
            continue
        last = last * weight + (1.0 - weight) * v
        n += 1
        out[i] = last / (1.0 - weight**n)
    return out


def plot_loss_panels(
    curves,
    x: str = "step",
    chance_lines=(),
    smoothing: float = 0.0,
    log_scale: bool = False,
    title: str = "",
    colours: dict | None = None,
    notes: dict | None = None,
):
    """Several trainings' loss curves against `x` ("step" or "epoch"), one panel per kind of loss, shared x axis.

    `curves`: a long table with columns `label` (one colour per label, the same in every panel and figure drawn
    from the same table), `panel` (its title and y label: e.g. "contrastive loss"), `split` ("train": solid,
    "eval": dashed with dots), `x` and `loss`. `smoothing` > 0 draws the training curves smoothed with
    `ema_smooth` over the raw curve in a light shade (eval points are never smoothed). `chance_lines`: dicts with
    `panel`, `label`, `value` and `text`, drawn as dotted horizontal lines in the label's colour. `notes`: label ->
    text added to its training curve's legend entry (e.g. what its loss adds to the panel's).
    Returns a matplotlib Figure that no pyplot state holds (a notebook shows it with `display(fig)`).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    panels = list(dict.fromkeys(curves["panel"]))
    labels = list(dict.fromkeys(curves["label"]))
    if colours is None:
        palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
        colours = {label: palette(i % palette.N) for i, label in enumerate(labels)}
    fig = Figure(figsize=(10, 3.4 * max(1, len(panels))))
    axes = fig.subplots(max(1, len(panels)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        part = curves[curves["panel"] == panel]
        for label in dict.fromkeys(part["label"]):
            colour = colours[label]
            mine = part[part["label"] == label]
            train = mine[(mine["split"] == "train") & mine[x].notna()]
            training = f"training {notes[label]}" if notes and notes.get(label) else "training"
            if len(train):
                xs, ys = train[x].to_numpy(float), train["loss"].to_numpy(float)
                if smoothing:
                    ax.plot(xs, ys, "-", color=colour, alpha=0.25, linewidth=1)
                    ax.plot(
                        xs,
                        ema_smooth(ys, smoothing),
                        "-",
                        color=colour,
                        label=f"{label}, {training} (smoothed)",
                    )
                else:
                    ax.plot(xs, ys, "-", color=colour, label=f"{label}, {training}")
            evaluation = mine[(mine["split"] == "eval") & mine[x].notna()]
            if len(evaluation):
                ax.plot(
                    evaluation[x].to_numpy(float),
                    evaluation["loss"].to_numpy(float),
                    "o--",
                    color=colour,
                    markersize=3,
                    label=f"{label}, eval",
                )
        for line in chance_lines:
            if line["panel"] == panel:
                ax.axhline(line["value"], color=colours[line["label"]], linestyle=":", linewidth=1.5,
                           label=line["text"])  # fmt: skip
        ax.set_ylabel(panel)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xlabel(x)
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    return fig
