"""`make lab` starts JupyterLab on the project's environment as root (CI, most containers) and as a user, and passes
LAB_ARGS through to `jupyter lab`."""

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.reporting.jupyterlab_browser import free_port

REPO = Path(__file__).resolve().parents[1]


def test_make_lab_serves_the_notebooks_with_the_options_given(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # nothing of JupyterLab's lands in the real home
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    options = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token=lab-test"
    lab = subprocess.Popen(
        ["make", "--no-print-directory", "lab", f"LAB_ARGS={options}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # make, the shell and jupyter: stopped together below
    )
    try:
        contents = None
        deadline = time.monotonic() + 90
        while contents is None and time.monotonic() < deadline and lab.poll() is None:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/contents", headers={"Authorization": "token lab-test"}
                )
                with urllib.request.urlopen(request, timeout=2) as response:
                    contents = json.load(response)
            except OSError:
                time.sleep(0.5)
        assert contents is not None, f"JupyterLab did not answer on port {port}; make said:\n{_output(lab)}"
        # the server's root is notebooks/: the pipeline notebooks are right there
        names = {item["name"] for item in contents["content"]}
        assert {"processdata_01.ipynb", "infer.ipynb", "train_clip.ipynb"} <= names
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(timeout=30)
    said = _output(lab)
    command = said.splitlines()[0]
    assert f"--port={port}" in command  # LAB_ARGS reach jupyter lab
    assert ("--allow-root" in command) == (os.getuid() == 0), command
    assert "Running as root is not recommended" not in said


def _output(process) -> str:
    if process.poll() is None:
        return "(still running)"
    return process.stdout.read()
