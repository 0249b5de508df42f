import pandas as pd
import pytest

from nbutils.data import splits
from nbutils.errors import DataError


def _table(tmp_path, n_images=20, caps=3):
    rows = []
    for i in range(n_images):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(b"x")
        rows += [{"image_path": str(p), "text": f"caption {i} {j}"} for j in range(caps)]
    return pd.DataFrame(rows)


def test_clean_captions_drops_each_bad_row_with_its_reason(tmp_path):
    ok = tmp_path / "ok.jpg"
    ok.write_bytes(b"x")
    table = pd.DataFrame(
        {
            "image_path": [str(ok), str(ok), str(ok), "", str(tmp_path / "missing.jpg"), str(ok), str(ok)],
            "text": ["两 个 男子", "两个男子", "   ", "a caption", "a caption", None, "x" * 50],
        }
    )
    clean, dropped = splits.clean_captions(table, max_caption_chars=40)
    assert clean.to_dict("records") == [{"image_path": str(ok), "text": "两个男子"}]
    assert dict(zip(dropped["row"], dropped["reason"])) == {
        1: "duplicate row",  # same as row 0 once normalised
        2: "empty caption",
        3: "missing image path",
        4: "image file not found",
        5: "empty caption",
        6: "caption longer than 40 characters",
    }


def test_clean_captions_names_missing_columns():
    with pytest.raises(DataError, match=r"captions.csv: missing column\(s\) \['text'\]"):
        splits.clean_captions(pd.DataFrame({"image_path": ["a"]}), source="captions.csv")


def test_split_by_image_has_no_leakage_and_keeps_every_row(tmp_path):
    table = _table(tmp_path, n_images=50)
    parts = splits.split_by_image(table, val_fraction=0.1, test_fraction=0.2, seed=3)
    images = {s: set(df["image_path"]) for s, df in parts.items()}
    assert (
        not images["train"] & images["val"]
        and not images["train"] & images["test"]
        and not images["val"] & images["test"]
    )
    assert (len(images["train"]), len(images["val"]), len(images["test"])) == (35, 5, 10)
    # every row kept exactly once, all captions of an image in the same split
    merged = pd.concat(parts.values()).sort_values(["image_path", "text"]).reset_index(drop=True)
    assert merged.equals(table.sort_values(["image_path", "text"]).reset_index(drop=True))
    splits.assert_no_leakage(parts)


def test_split_is_deterministic_and_depends_on_seed(tmp_path):
    table = _table(tmp_path)
    a = splits.split_by_image(table, 0.1, 0.2, seed=0)
    b = splits.split_by_image(table, 0.1, 0.2, seed=0)
    c = splits.split_by_image(table, 0.1, 0.2, seed=1)
    assert all(a[s].equals(b[s]) for s in splits.SPLITS)
    assert set(a["test"]["image_path"]) != set(c["test"]["image_path"])


def test_split_rejects_bad_fractions_and_tiny_tables(tmp_path):
    table = _table(tmp_path, n_images=2)
    with pytest.raises(ValueError, match="test_fraction"):
        splits.split_by_image(table, 0.1, 1.5)
    with pytest.raises(DataError, match="only 2 images"):
        splits.split_by_image(table, 0.3, 0.3)


def test_assert_no_leakage_catches_a_shared_image():
    parts = {"train": pd.DataFrame({"image_path": ["a", "b"]}), "test": pd.DataFrame({"image_path": ["b"]})}
    with pytest.raises(DataError, match="image b is in both train and test"):
        splits.assert_no_leakage(parts)


def test_image_subset_keeps_all_captions_of_chosen_images(tmp_path):
    table = _table(tmp_path, n_images=10, caps=4)
    sub = splits.image_subset(table, 3, seed=0)
    assert sub["image_path"].nunique() == 3 and len(sub) == 12
    assert len(splits.image_subset(table, 100)) == len(table)


def test_drop_images_reports_the_decoder_reason(tmp_path):
    table = _table(tmp_path, n_images=3, caps=2)
    failed = pd.DataFrame({"image_path": [table["image_path"][0]], "reason": ["truncated file"]})
    kept, dropped = splits.drop_images(table, failed)
    assert len(kept) == 4 and len(dropped) == 2
    assert set(dropped["reason"]) == {"unreadable image: truncated file"}
