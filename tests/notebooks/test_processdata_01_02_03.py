"""processdata_01 -> 02 -> 03 through the runner, on the faulty demo server (127.0.0.1 only).

Every fault must end as a counted, reasoned failure or a normalised image, nothing may crash,
and processdata_03's splits may contain only images that decode.
"""

import json

import pandas as pd
import pytest

from nbutils import runner, stages


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    params = [
        f"processdata_01.source=demo?n_images=150&image_size=48&data_dir={tmp / 'data'}",
        f"data_dir={tmp / 'data'}",  # processdata_03's image cache
        "processdata_03.image_size=32",
        "small_train_images=5",
        "small_test_images=2",
        "processdata_03.num_workers=1",
        "processdata_02.num_workers=1",
    ]
    result = runner.run_pipeline(
        "demo",
        only=["processdata_01", "processdata_02", "processdata_03"],
        params=params,
        run_name="e2e",
        outputs_dir=tmp / "outputs",
    )
    return result, tmp / "outputs" / "e2e"


def _summary(run_dir, nb):
    return json.loads((run_dir / nb / "summary.json").read_text())


def test_every_url_ends_as_the_demo_expects(demo_run):
    result, run_dir = demo_run
    assert [nb["status"] for nb in result["notebooks"] if nb["name"].startswith("processdata")] == ["ok"] * 3
    s1 = _summary(run_dir, "processdata_01")
    assert {"rows", "ok", "failed", "failed_by_kind", "rows_per_second"} <= set(s1)
    # Each download fault kind is counted under its own name.
    assert {"http_404", "timeout", "truncated", "bad_content_type", "too_many_redirects", "too_large"} <= set(
        s1["failed_by_kind"]
    )
    assert s1["ok"] + s1["failed"] == s1["images"] and s1["failed"] == sum(s1["failed_by_kind"].values())


def test_validation_counts_every_reason_and_normalises(demo_run):
    _, run_dir = demo_run
    s1, s2 = _summary(run_dir, "processdata_01"), _summary(run_dir, "processdata_02")
    assert {"checked", "clean", "rejected", "rejected_by_reason", "duplicates"} <= set(s2)
    assert s2["checked"] == s1["ok"]
    assert {"truncated or corrupt", "too small", "too large", "placeholder"} <= set(s2["rejected_by_reason"])
    assert s2["duplicates"] >= 1 and s2["normalised"] >= 4  # cmyk, 16-bit, palette, exif
    assert s2["clean"] + s2["rejected"] + s2["duplicates"] == s2["checked"]


def test_splits_contain_only_images_that_decode(demo_run):
    _, run_dir = demo_run
    s2, s3 = _summary(run_dir, "processdata_02"), _summary(run_dir, "processdata_03")
    assert s3["train_images"] + s3["val_images"] + s3["test_images"] == s2["clean"]
    assert s3["dropped_rows"] == 0  # nothing processdata_02 passed fails later
    prepared = stages.load_prepared(run_dir)
    # The demo's ground truth survived the trip over HTTP: 01 -> 02 -> 03 hand it on in stage.json.
    assert prepared.origin.ground_truth and prepared.origin.ground_truth.endswith("objects.jsonl")
    cache = prepared.cache
    assert len(cache.failed) == 0
    for split in ("train", "val", "test"):
        table = pd.read_csv(run_dir / "processdata_03" / f"{split}.csv")
        assert set(table["image_path"]) <= set(cache.paths)


def test_reports_open_with_a_headline_and_hold_no_raw_dumps(demo_run, readable_report):
    _, run_dir = demo_run
    s1, s2, s3 = (_summary(run_dir, nb) for nb in ("processdata_01", "processdata_02", "processdata_03"))
    assert readable_report(run_dir, "processdata_01").startswith(
        f"{s1['ok']:,} of {s1['images']:,} images downloaded; {s1['failed']:,} failed ("
    )
    assert readable_report(run_dir, "processdata_02").startswith(
        f"{s2['clean']:,} of {s2['checked']:,} images are valid ("
    )
    assert readable_report(run_dir, "processdata_03").endswith(
        f"image cache of {s2['clean']:,} images at 32 px."
    )
    # Failures and rejections by kind as small tables (kind, count, share), not as dicts or dotted keys.
    page = (run_dir / "processdata_01.html").read_text(encoding="utf-8")
    assert ">kind<" in page and ">urls<" in page and ">share<" in page and "failed_by_kind" not in page
    page = (run_dir / "processdata_02.html").read_text(encoding="utf-8")
    assert (
        ">reason<" in page
        and ">images<" in page
        and "placeholder" in page
        and "rejected_by_reason" not in page
    )
