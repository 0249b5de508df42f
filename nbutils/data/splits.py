"""Clean caption tables and split them by image.

Splitting is by image, never by caption: an image with five captions in both train and test
makes retrieval and captioning scores meaningless (ClipCap-Chinese made exactly this mistake).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError, check_columns
from .captions import normalize_caption
from .images import image_exists

SPLITS = ("train", "val", "test")


def clean_captions(
    table: pd.DataFrame, source: str = "table", max_caption_chars: int = 0, check_images: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Normalise captions and drop rows that cannot be trained on.

    Returns `(clean, dropped)`: `clean` has columns image_path,text; `dropped` has
    row (0-based position in `table`), image_path, text, reason — one reason per dropped row,
    checked in this order: missing image path, empty caption, caption too long,
    image file not found, duplicate row.
    """
    check_columns(table, ("image_path", "text"), source)

    df = pd.DataFrame(
        {
            "row": np.arange(len(table)),
            "image_path": table["image_path"].fillna("").astype(str).str.strip().to_numpy(),
            "text": [normalize_caption(t) if isinstance(t, str) else "" for t in table["text"]],
        }
    )
    reason = pd.Series("", index=df.index, dtype=object)

    def flag(mask, why):
        reason[(reason == "") & mask] = why

    flag(df["image_path"] == "", "missing image path")
    flag(df["text"] == "", "empty caption")
    if max_caption_chars and max_caption_chars > 0:
        flag(df["text"].str.len() > max_caption_chars, f"caption longer than {max_caption_chars} characters")
    if check_images:
        # One stat per distinct image, not per caption: real corpora have 5 captions per image. An image
        # embedded in a dataset file exists when the file has its row (`images.image_exists`).
        paths = df.loc[reason == "", "image_path"].unique()
        exists = {p: image_exists(p) for p in paths}
        flag(~df["image_path"].map(exists).fillna(True).astype(bool), "image file not found")
    flag(df.duplicated(["image_path", "text"]) & (reason == ""), "duplicate row")

    keep = reason == ""
    clean = df.loc[keep, ["image_path", "text"]].reset_index(drop=True)
    dropped = df.loc[~keep].assign(reason=reason[~keep]).reset_index(drop=True)
    return clean, dropped


def drop_images(table: pd.DataFrame, failed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove rows whose image is listed in `failed` (image_path, reason), e.g. the cache's undecodable images."""
    if failed is None or len(failed) == 0:
        return table, pd.DataFrame(columns=["row", "image_path", "text", "reason"])
    why = dict(zip(failed["image_path"], failed["reason"]))
    bad = table["image_path"].isin(why.keys())
    dropped = table.loc[bad].reset_index(names="row")
    dropped["reason"] = "unreadable image: " + dropped["image_path"].map(why).astype(str)
    return table.loc[~bad].reset_index(drop=True), dropped


def split_by_image(
    table: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """Split rows into train/val/test so that every image lands in exactly one split.

    Images are shuffled with `seed`; each non-zero fraction gets at least one image.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")

    images = np.array(sorted(table["image_path"].unique()))
    n = len(images)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(
            f"only {n} images: too few to split into train/val/test "
            f"(val_fraction={val_fraction}, test_fraction={test_fraction})"
        )
    order = np.random.default_rng(seed).permutation(n)
    split_of = {}
    for i, idx in enumerate(order):
        split_of[images[idx]] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    assigned = table["image_path"].map(split_of)
    return {s: table.loc[assigned == s, ["image_path", "text"]].reset_index(drop=True) for s in SPLITS}


def image_subset(table: pd.DataFrame, n_images: int, seed: int = 0) -> pd.DataFrame:
    """All caption rows of `n_images` images drawn with `seed` (the whole table if it has fewer)."""
    images = table["image_path"].unique()
    if n_images >= len(images):
        return table.reset_index(drop=True)
    chosen = set(np.random.default_rng(seed).choice(images, size=n_images, replace=False))
    return table[table["image_path"].isin(chosen)].reset_index(drop=True)


def assert_no_leakage(splits: dict[str, pd.DataFrame]) -> None:
    """Raise if any image appears in two splits."""
    seen: dict[str, str] = {}
    for name, df in splits.items():
        for path in df["image_path"].unique():
            if path in seen and seen[path] != name:
                raise DataError(f"image {path} is in both {seen[path]} and {name}")
            seen[path] = name


def split_counts(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Images, rows and captions per image of each split, as a small table."""
    rows = []
    for name, df in splits.items():
        n_img = df["image_path"].nunique()
        rows.append(
            {
                "split": name,
                "images": n_img,
                "rows": len(df),
                "captions_per_image": round(len(df) / n_img, 2) if n_img else 0.0,
            }
        )
    return pd.DataFrame(rows).set_index("split")
