"""Fixtures shared by the whole suite: image factories, and one tiny prepared run built once per test run.

The tests mirror the package (`tests/data/` tests `nbutils/data/`, ...); notebook tests live in
`tests/notebooks/` and run the real notebooks through the runner (papermill).
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nbutils import runner
from nbutils.demo.source import DemoSource

# The shared prepared run: processdata_03 on the demo set, through the real notebook. The demo set's image_size
# and data_dir are processdata_03's (32 px; the fixture's data_dir).
PREPARED_PARAMS = {
    "source": "demo?n_images=60",
    "image_size": 32,
    "val_fraction": 0.15,
    "test_fraction": 0.2,
    "small_train_images": 5,
    "small_test_images": 2,
    "num_workers": 1,
}


# Towers small enough to train in a test: the shape of the demo model at a fraction of its size.
TINY_TOWERS = {
    "patch_size": 8,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 64,
    "projection_dim": 16,
}


def photo(width: int, height: int, seed: int = 0, noise: float = 4.0) -> np.ndarray:
    """A photo-like uint8 (height, width, 3) array: smooth gradients plus Gaussian noise of std `noise`.

    Gradients give resampling filters something to get wrong; mild noise keeps JPEG round trips close.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), 128 + 100 * np.sin((x + 2 * y) / 9)],
        axis=-1,
    )
    return np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)


def jpeg_bytes(
    width: int = 64,
    height: int = 48,
    color=None,
    seed: int = 0,
    noise: float = 4.0,
    quality: int = 90,
    **save,
) -> bytes:
    """JPEG bytes of a plain `color` image, or of `photo(width, height, seed, noise)` when color is None."""
    image = (
        Image.new("RGB", (width, height), color)
        if color is not None
        else Image.fromarray(photo(width, height, seed, noise))
    )
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


@pytest.fixture(scope="session")
def make_jpeg():
    """`make_jpeg(path, width=64, height=48, color=None, seed=0, noise=4.0, quality=90, **save) -> Path`."""

    def make(path, width: int = 64, height: int = 48, **kwargs) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(width, height, **kwargs))
        return path

    return make


@pytest.fixture(scope="session")
def make_jpeg_bytes():
    """`make_jpeg_bytes(width=64, height=48, color=None, seed=0, noise=4.0, quality=90, **save) -> bytes`."""
    return jpeg_bytes


@pytest.fixture(scope="session")
def make_photo():
    """`make_photo(width, height, seed=0, noise=4.0) -> uint8 array`."""
    return photo


@pytest.fixture(scope="session")
def make_tiny_dual_encoder():
    """`make_tiny_dual_encoder(tokenizer, image_size, max_text_length=32, seed=0)`: a TINY_TOWERS demo model."""
    from nbutils.models.clip import build_demo_dual_encoder

    def make(tokenizer, image_size: int, max_text_length: int = 32, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        return build_demo_dual_encoder(
            tokenizer, image_size=image_size, max_text_length=max_text_length, **TINY_TOWERS
        )

    return make


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory) -> dict:
    """processdata_03's output for 60 demo images at 32 px, built ONCE per test run by the real notebook.

    Returns {"run_dir", "data_dir", "result" (the runner's record), "params", "demo" (the DemoSource the notebook
    generated)}. Treat it as read-only: a test that writes into a run folder copies it first (`copy_prepared_run`).
    """
    return _prepare(tmp_path_factory.mktemp("prepared"), PREPARED_PARAMS)


@pytest.fixture(scope="session")
def shard_run(tmp_path_factory) -> dict:
    """`prepared_run`'s data with the image cache as JPEG tar shards (processdata_03's cache_format "shards")."""
    return _prepare(tmp_path_factory.mktemp("shards"), {**PREPARED_PARAMS, "cache_format": "shards"})


def _prepare(tmp, prepared_params: dict) -> dict:
    params = [f"{k}={v}" for k, v in prepared_params.items()] + [f"data_dir={tmp / 'data'}"]
    result = runner.run_pipeline(
        "demo", only=["processdata_03"], params=params, run_name="tiny", outputs_dir=tmp / "outputs"
    )
    demo = DemoSource.parse(
        PREPARED_PARAMS["source"], image_size=PREPARED_PARAMS["image_size"], data_dir=str(tmp / "data")
    )
    return {
        "run_dir": tmp / "outputs" / "tiny",
        "data_dir": tmp / "data",
        "result": result,
        "params": dict(prepared_params),
        "demo": demo,
    }


@pytest.fixture
def copy_prepared_run(prepared_run, tmp_path):
    """A private copy of the shared prepared run folder (the image cache it points to stays shared)."""

    def copy(name: str = "run") -> Path:
        target = tmp_path / "outputs" / name
        shutil.copytree(prepared_run["run_dir"], target)
        return target

    return copy


# The whole pipeline, tiny: every notebook once per test run (tests/fixtures/profiles/tiny.yaml, ~2.5 min on 2 cores).
TINY_PROFILE = Path(__file__).parent / "fixtures" / "profiles" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_pipeline_run(tmp_path_factory) -> dict:
    """The tiny profile through the runner: {outputs, run_dir, record, failure, run(*params, **kwargs)}.

    `run` invokes the same run again (same run folder and data_dir) with extra `-p` parameters and returns the
    run.json record; tests that rerun stages must leave it in a state the report tests can still read.
    """
    import time

    tmp = tmp_path_factory.mktemp("tiny")
    outputs = tmp / "outputs"
    # processdata_01's demo set lives in its source's data_dir, which the data_dir parameter does not reach.
    demo = DemoSource.parse(runner.load_profile(TINY_PROFILE)["notebooks"]["processdata_01"]["source"])
    source = dataclasses.replace(demo, data_dir=str(tmp / "data")).spec()

    def run(*params, **kwargs) -> dict:
        return runner.run_pipeline(
            TINY_PROFILE,
            params=[f"data_dir={tmp / 'data'}", f"processdata_01.source={source}", *params],
            outputs_dir=outputs,
            command=["pytest"],
            **kwargs,
        )

    start, failure = time.perf_counter(), None
    try:
        run()
    except runner.RunFailed as e:
        failure = str(e)
    print(f"tiny run: {time.perf_counter() - start:.1f} s")  # not asserted: a shared machine's timing
    run_dir = outputs / "tiny"
    return {
        "outputs": outputs,
        "run_dir": run_dir,
        "record": json.loads((run_dir / "run.json").read_text()),
        "failure": failure,
        "run": run,
    }
