"""An executed notebook with every kind of output a report must show offline, built in-process (no kernel).

The outputs are the real objects' own mime bundles: a matplotlib figure (PNG), a pandas Styler table, an image grid
(nbutils.reporting.grids), an HTML output and a markdown cell that name image files by relative path, a tqdm
notebook progress bar and an ipywidgets box, with the notebook's widget state as Jupyter saves it.
"""

from __future__ import annotations

import base64
import io
import json

import nbformat
import numpy as np
import pytest
from nbformat import v4

CODE = "# hidden-code-marker: code must not reach the HTML report"
TITLE = "Report fixture"


def _png(width: int, height: int, color: tuple) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def report_notebook(tmp_path_factory) -> dict:
    """{"path": the executed notebook, "folder", "relative_png" / "markdown_png" (bytes of the two linked files),
    "code" (the text of every code cell), "title" (the markdown title)}."""
    import ipywidgets as widgets
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from tqdm.notebook import tqdm

    from nbutils.reporting.grids import image_grid_html

    folder = tmp_path_factory.mktemp("report_fixture")
    (folder / "figures").mkdir()
    relative_png, markdown_png = _png(20, 10, (200, 30, 30)), _png(12, 12, (30, 30, 200))
    (folder / "figures" / "grid cell.png").write_bytes(relative_png)
    (folder / "figures" / "from markdown.png").write_bytes(markdown_png)

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 4, 9])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    plt.close(fig)
    styler = pd.DataFrame({"CIDEr": [1.234, 0.5]}, index=["a", "b"]).style.format(precision=2).highlight_max()
    grid = image_grid_html([np.full((8, 8, 3), 90, np.uint8)] * 2, ["one", "two"], ncols=2, thumb_px=32)
    progress = tqdm.status_printer(None, total=10, desc="loading")
    box = widgets.VBox([widgets.HTML("caption"), widgets.Button(description="next ▶")])
    state = widgets.Widget.get_manager_state(
        drop_defaults=True, widgets=[progress, *progress.children, box, *box.children]
    )

    def display(data):
        return v4.new_output("display_data", data=data)

    cells = [
        v4.new_markdown_cell(
            f"# {TITLE}\n\nA figure, a table, a grid and widgets.\n\n![blue](figures/from%20markdown.png)"
        ),
        v4.new_code_cell(
            CODE,
            outputs=[
                display({"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"})
            ],
        ),
        v4.new_code_cell(CODE, outputs=[display({"text/html": styler.to_html(), "text/plain": "<Styler>"})]),
        v4.new_code_cell(
            CODE,
            outputs=[
                display({"text/html": grid, "text/plain": "<HTML>"}),
                display({"text/html": '<p>linked: <img src="figures/grid%20cell.png" alt="red"></p>'}),
            ],
        ),
        v4.new_code_cell(
            CODE,
            outputs=[
                display(progress._repr_mimebundle_()),
                v4.new_output("stream", name="stdout", text="after the progress bar\n"),
                display(box._repr_mimebundle_()),
                display({**box._repr_mimebundle_(), "text/html": "<b>static fallback of the box</b>"}),
            ],
        ),
    ]
    nb = v4.new_notebook(cells=cells)
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": state}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "report_fixture.ipynb"
    nbformat.write(nb, str(path))
    assert json.loads(path.read_text())["metadata"]["widgets"]  # the state Jupyter would have saved
    return {
        "path": path,
        "folder": folder,
        "relative_png": relative_png,
        "markdown_png": markdown_png,
        "code": CODE,
        "title": TITLE,
    }
