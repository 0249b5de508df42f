"""Notebook parameters: reading a notebook's `parameters` cell, merging profile and command-line values,
and every bad input failing before anything runs (no kernel is started here)."""

from pathlib import Path

import papermill
import pytest

from nbutils import runner
from nbutils.runner import ParameterError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "notebooks"
ECHO_DECLARED = ["run_dir", "output_dir", "seed", "tag", "n_items", "lr"]


# ----------------------------------------------------------------------------- bad input, nothing runs

BAD_INPUTS = [
    ({"common": {"sed": 1}}, {}, ["profile common.sed", "did you mean 'seed'"]),
    (
        {"notebooks": {"processdata_01": {"n_item": 3}}},
        {},
        [
            "processdata_01 has no parameter 'n_item'",
            "did you mean 'n_items'",
            "declared: " + ", ".join(ECHO_DECLARED),
        ],
    ),
    ({"notebooks": {"processdata_01": {"run_dir": "/elsewhere"}}}, {}, ["run_dir is set by the runner"]),
    ({"notebooks": {"processdata_01": {"n_items": "three"}}}, {}, ["n_items", "expected int", "'three'"]),
    (
        {"notebooks": {"processdata_1": {}}},
        {},
        ["'processdata_1' is not in the pipeline", "did you mean 'processdata_01'"],
    ),
    ({}, {"params": ["bogus=1"]}, ["-p bogus=1", "no selected notebook", "declares 'bogus'"]),
    (
        {},
        {"params": ["processdata_02.tag=x"]},
        ["-p processdata_02.tag=x", "processdata_02 has no parameter 'tag'"],
    ),
    ({}, {"params": ["n_items=abc"]}, ["-p n_items=abc", "expected int"]),
    ({}, {"params": ["lr=[1, 2"]}, ["-p lr=[1, 2", "cannot parse"]),
    (
        {},
        {"params": ["processdata_02.scale=2"], "only": "processdata_01"},
        ["processdata_02 is not selected"],
    ),
    ({}, {"only": "processdata_1"}, ["--only processdata_1", "did you mean 'processdata_01'"]),
    ({}, {"only": "train_clip"}, ["--only train_clip", "does not exist"]),
    ({}, {"only": "processdata_03,processdata_01"}, ["--only processdata_03", "does not exist"]),
    (
        {"notebooks": {"processdata_01": {}}},
        {"only": "processdata_02"},
        ["profile fixture_profile has no entry"],
    ),
]


@pytest.mark.parametrize("profile_changes, kwargs, expected", BAD_INPUTS)
def test_bad_input_fails_before_anything_runs(tmp_path, profile_changes, kwargs, expected, make_workspace):
    notebooks = profile_changes.get("notebooks", {"processdata_01": {}, "processdata_02": {}})
    nb_dir, profile, out = make_workspace(tmp_path, notebooks, common=profile_changes.get("common"))
    with pytest.raises(ParameterError) as info:
        runner.run_pipeline(profile, notebooks_dir=nb_dir, outputs_dir=out, **kwargs)
    for text in expected:
        assert text in str(info.value)
    assert not out.exists()  # no run folder: nothing was executed or written


# ----------------------------------------------------------------------------- pure parts


def test_notebook_parameters_reads_lines_papermill_skips():
    declared = runner.notebook_parameters(FIXTURES / "echo.ipynb")
    assert list(declared) == ECHO_DECLARED
    assert declared["tag"] == '"default"' and declared["n_items"] == "3" and declared["lr"] == "0.001"
    # papermill.inspect_notebook drops lines whose comment holds an '=' but agrees on the rest.
    reference = {k: v["default"] for k, v in papermill.inspect_notebook(str(FIXTURES / "echo.ipynb")).items()}
    assert {"tag", "n_items"} - set(reference) == {"tag", "n_items"}
    assert all(declared[k] == v for k, v in reference.items())


def _declared():
    return {
        "a": {
            "run_dir": '""',
            "output_dir": '""',
            "seed": "0",
            "name": '"x"',
            "n": "3",
            "lr": "0.1",
            "flag": "False",
            "sizes": "[1, 2]",
        },
        "b": {"run_dir": '""', "output_dir": '""', "seed": "0", "n": "3"},
    }


def test_resolve_parameters_precedence_and_typing():
    injected = {nb: {"run_dir": "/r", "output_dir": f"/r/{nb}"} for nb in "ab"}
    out = runner.resolve_parameters(
        _declared(),
        ["a", "b"],
        common={"seed": 1, "n": 5, "name": "from-common"},
        per_notebook={"a": {"n": 6, "lr": "1e-4"}},
        overrides=["a.n=8", "n=7", "name=007", "flag=true", "sizes=[3, 4]", "lr=2"],
        injected=injected,
    )
    assert out == {
        "a": {
            "run_dir": "/r",
            "output_dir": "/r/a",
            "seed": 1,
            "n": 8,
            "name": "007",
            "lr": 2.0,
            "flag": True,
            "sizes": [3, 4],
        },
        "b": {"run_dir": "/r", "output_dir": "/r/b", "seed": 1, "n": 7},
    }
    assert isinstance(out["a"]["lr"], float)
    # PyYAML reads 1e-4 as a string; a float default turns it back into a number.
    only_profile = runner.resolve_parameters(_declared(), ["a"], per_notebook={"a": {"lr": "1e-4"}})
    assert only_profile == {"a": {"lr": 1e-4}}
    # A mapping of overrides is taken as typed values.
    typed = runner.resolve_parameters(_declared(), ["a"], overrides={"a.name": "y", "n": 2})
    assert typed == {"a": {"name": "y", "n": 2}}


def test_resolve_parameters_checks_unselected_entries_and_collects_every_problem():
    with pytest.raises(ParameterError) as info:
        runner.resolve_parameters(
            _declared(), ["a"], common={"nn": 1}, per_notebook={"b": {"lr": 0.1}}, overrides=["flag=maybe"]
        )
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert "common.nn" in lines[0] and "did you mean 'n'" in lines[0]
    assert "b has no parameter 'lr'" in lines[1]
    assert "-p flag=maybe" in lines[2] and "expected bool" in lines[2]
    with pytest.raises(ParameterError, match="does not declare 'run_dir'"):
        runner.resolve_parameters(
            {"c": {"seed": "0"}}, ["c"], injected={"c": {"run_dir": "/r", "output_dir": "/r/c"}}
        )
