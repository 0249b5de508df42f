"""A kernel's warnings and library messages go to <notebook>.log, not into the notebook and its report.

The redirection itself runs in a fresh interpreter (this test process imported transformers long ago, and library
loggers keep the stream they found at their import); the whole tiny pipeline (tests/conftest.py) then shows that
the executed notebooks hold no stderr output at all and that the logs hold what the libraries said.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from nbutils import notebook_log, runner

REPO = Path(__file__).resolve().parents[1]

# What a notebook's first code cell leads to: nbutils imported, then libraries talking.
CHATTY = """
import logging, warnings
import nbutils
from transformers.utils import logging as transformers_logging
transformers_logging.get_logger("transformers.modeling_utils").warning("a transformers warning")
warnings.warn("a python warning")
logging.getLogger("some.library").warning("a library record")
for _ in transformers_logging.tqdm(range(3), desc="Loading weights"):
    pass
for _ in transformers_logging.tqdm(range(3), desc="Fetching 4 files"):
    pass
import jieba
jieba.lcut("一个红色的圆形")
print("printed output")
"""

# stderr blocks the project chooses to show in a report (none: a note for the reader is printed or displayed)
ALLOWED_STDERR: dict[str, list[str]] = {}


def _run(code: str, log: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != notebook_log.LOG_ENV}
    if log is not None:
        env[notebook_log.LOG_ENV] = str(log)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )


def test_warnings_logging_and_transformers_bars_go_to_the_log_file(tmp_path):
    log = tmp_path / "nb.log"
    done = _run(CHATTY, log)
    assert done.stdout == "printed output\n" and done.stderr == ""
    text = log.read_text()
    for said in (
        "[transformers] a transformers warning",
        "UserWarning: a python warning",
        "a library record",
    ):
        assert said in text
    assert "Fetching 4 files: 100%" in text and "3/3" in text  # a bar that says something, as text
    assert "Loading weights" not in text  # one that says nothing a reader needs (notebook_log.SILENT_BARS)
    assert "Building prefix dict" not in text  # jieba's notices on loading its dictionary


def test_without_the_variable_stderr_is_left_alone(tmp_path):
    """JupyterLab, tests, the command-line entries: the same messages show on stderr, and no file appears."""
    done = _run(CHATTY, None)
    assert done.stdout == "printed output\n"
    assert "a transformers warning" in done.stderr and "UserWarning: a python warning" in done.stderr
    assert "a library record" in done.stderr
    assert "Fetching 4 files: 100%" in done.stderr and "Loading weights" not in done.stderr
    assert "Building prefix dict" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_tiny_pipeline_s_notebooks_show_no_stderr_and_log_what_libraries_said(tiny_pipeline_run):
    run_dir = tiny_pipeline_run["run_dir"]
    executed = sorted(run_dir.glob("*.ipynb"))
    assert {p.stem for p in executed} == set(runner.PIPELINE)
    for path in executed:
        cells = json.loads(path.read_text())["cells"]
        stderr = [
            "".join(o["text"])
            for c in cells
            for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stderr"
        ]
        assert stderr == ALLOWED_STDERR.get(path.stem, []), (path.name, stderr)
    entries = {e["name"]: e for e in json.loads((run_dir / "run.json").read_text())["notebooks"]}
    logs = {nb: e["log"] for nb, e in entries.items() if e["log"]}
    for nb, log in logs.items():
        assert (
            log == f"{nb}.log" and f'<a href="{nb}.log">{nb}.log</a>' in (run_dir / f"{nb}.html").read_text()
        )
        said = (run_dir / log).read_text()
        # notebook_log.quiet_library_chatter: jieba's dictionary notices (the notebooks that tokenise Chinese
        # captions load it) and transformers' "Loading weights" bars are not shown, not even in the log
        assert "Building prefix dict" not in said and "Loading weights" not in said, nb
    log = run_dir / "train_encoder_decoder.log"
    assert not log.exists() or "50256" not in log.read_text()  # the config's ids are the tokenizer's
