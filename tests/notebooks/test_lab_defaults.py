"""The notebooks as a JupyterLab user runs them: opened from notebooks/, top to bottom, in pipeline order, with no
run_dir or output_dir given. Their defaults point at one run folder, ../outputs/lab, which they build together.

Only the sizes are made tiny (the tiny profile's values); every path comes from the notebooks' own defaults.
"""

import json
import shutil
from pathlib import Path

import papermill
import yaml

from nbutils.runner.execute import KERNEL_NAME, _this_interpreter_kernel_manager
from nbutils.runner.profiles import PIPELINE

REPO = Path(__file__).resolve().parents[2]
TINY_PROFILE = REPO / "tests" / "fixtures" / "profiles" / "tiny.yaml"


def test_the_notebooks_build_one_run_in_order_from_their_defaults(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    sizes = yaml.safe_load(TINY_PROFILE.read_text())["notebooks"]
    for nb in PIPELINE:
        shutil.copy(REPO / "notebooks" / f"{nb}.ipynb", notebooks)
        # processdata_01's source is the tiny demo set's; the later notebooks read their own defaults' sources
        parameters = {
            k: v for k, v in (sizes.get(nb) or {}).items() if k != "source" or nb == "processdata_01"
        }
        assert not {"run_dir", "output_dir", "data_dir"} & set(parameters)
        assert "data_dir" not in parameters.get("source", "")
        papermill.execute_notebook(
            str(notebooks / f"{nb}.ipynb"),
            str(tmp_path / f"{nb}.executed.ipynb"),
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            kernel_manager_class=_this_interpreter_kernel_manager(),
            cwd=str(notebooks),
            progress_bar=False,
        )
    lab = tmp_path / "outputs" / "lab"
    assert sorted(p.name for p in lab.iterdir()) == sorted(PIPELINE)  # one folder per notebook, no other run
    for nb in PIPELINE:
        assert (lab / nb / "summary.json").is_file(), nb
    assert (tmp_path / "data" / "demo").is_dir()  # data_dir's default, ../data, beside notebooks/
    validated = json.loads((lab / "processdata_02" / "summary.json").read_text())
    prepared = json.loads((lab / "processdata_03" / "summary.json").read_text())
    # processdata_03 split what processdata_02 kept (its default source), not the generated set itself
    assert prepared["train_images"] + prepared["val_images"] + prepared["test_images"] == validated["clean"]
    inferred = json.loads((lab / "infer" / "summary.json").read_text())
    assert set(inferred["models"]) == {"train_encoder_decoder", "train_clipcap"}
    compared = json.loads((lab / "analyze_loss" / "summary.json").read_text())
    assert compared["n_runs"] == 1 and compared["n_trainings"] == 3
