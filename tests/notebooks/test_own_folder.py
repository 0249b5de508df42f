"""The README's "your own data in three steps", run as written with small models: an example folder written by
`python -m nbutils.demo.folder`, the own_folder profile through the runner, and infer's captions of it."""

import json
import subprocess
import sys

import pandas as pd

from nbutils import runner
from nbutils.runner.profiles import load_profile

# the profile's models and step counts, shrunk to seconds; everything else is the template's own
TINY = [
    "train_clip.max_steps=3",
    "train_clip.batch_size=8",
    "train_clip.projection_dim=16",
    "train_clip.vision_width=32",
    "train_encoder_decoder.max_steps=4",
    "train_encoder_decoder.batch_size=8",
    "train_encoder_decoder.hidden_size=32",
    "train_encoder_decoder.encoder_layers=1",
    "train_encoder_decoder.intermediate_size=64",
    "infer.max_new_tokens=6",
    "infer.throughput=false",
]


def test_an_example_folder_goes_through_the_own_folder_profile(tmp_path):
    folder = tmp_path / "my_photos"
    done = subprocess.run(
        [sys.executable, "-m", "nbutils.demo.folder", str(folder), "--n-images", "40"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith(f"wrote {folder / 'captions.csv'}")
    table = pd.read_csv(folder / "captions.csv")
    assert list(table.columns) == ["image_path", "text"]
    assert table["image_path"].nunique() == 44  # 40 generated images and the 4 untidy files
    assert (folder / "images" / "notes.jpg").is_file() and not (folder / "objects.jsonl").exists()
    again = subprocess.run(
        [sys.executable, "-m", "nbutils.demo.folder", str(folder)], capture_output=True, text=True
    )
    assert again.returncode == 2 and "exists and is not empty" in again.stderr  # nothing overwritten

    profile = load_profile("own_folder")
    assert profile["notebooks"]["processdata_02"]["source"] == "../data/my_photos/captions.csv"
    record = runner.run_pipeline(
        "own_folder",
        params=[f"processdata_02.source={folder / 'captions.csv'}", f"data_dir={tmp_path / 'data'}", *TINY],
        outputs_dir=tmp_path / "outputs",
        command=["pytest"],
    )
    assert [e["name"] for e in record["notebooks"]] == [
        "processdata_02",
        "processdata_03",
        "train_clip",
        "train_encoder_decoder",
        "infer",
    ]
    run_dir = tmp_path / "outputs" / "mine"
    validated = json.loads((run_dir / "processdata_02" / "summary.json").read_text())
    assert validated["checked"] == 44
    assert validated["rejected"] == 2  # the truncated JPEG and the text file named .jpg
    assert validated["duplicates"] == 1 and validated["normalised"] >= 1  # the copy; the greyscale PNG
    inferred = json.loads((run_dir / "infer" / "summary.json").read_text())
    assert list(inferred["models"]) == ["train_encoder_decoder"]
    assert inferred["n_images"] >= 4 and inferred["models"]["train_encoder_decoder"]["metrics"]["cider"] >= 0
