"""What every notebook report must read like: a headline sentence first, tables and sentences, never a raw dump.

`readable_report(run_dir, notebook)` checks one executed notebook of a run and its HTML report:
- summary.json has a `headline`: one sentence, shown as Markdown in the notebook and present in the report;
- no output as a report shows it (`shown_texts`) holds a dict or list repr ("{'", '{"'), an object repr
  ("<... at 0x...>") or "Empty DataFrame".
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

# Outputs a report shows as pictures or live widgets: not text a reader reads.
NOT_TEXT = ("image/", "application/vnd.jupyter.widget-view+json")
RAW_DUMPS = re.compile(r"\{'|\{\"|<[\w.]+ (?:object )?at 0x[0-9a-f]+>|Empty DataFrame")


def shown_texts(executed_notebook: Path) -> list[str]:
    """The text of every output of an executed notebook as a report shows it: stream text, and of a rich output
    its HTML, else its Markdown, else its plain text. Pictures are left out; a widget view shows its HTML or plain
    fallback (what a report without widgets falls back on)."""
    nb = json.loads(Path(executed_notebook).read_text(encoding="utf-8"))
    texts = []
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                texts.append("".join(output["text"]))
            elif output["output_type"] in ("display_data", "execute_result"):
                data = output["data"]
                if any(key.startswith("image/") for key in data):
                    continue
                for mime in ("text/html", "text/markdown", "text/plain"):
                    if mime in data:
                        texts.append("".join(data[mime]))
                        break
    return texts


def raw_dumps(texts: list[str]) -> list[str]:
    """Each raw dict / repr dump found in `texts`, with a little context."""
    found = []
    for text in texts:
        for match in RAW_DUMPS.finditer(text):
            found.append(text[max(0, match.start() - 60) : match.end() + 60])
    return found


def _check(run_dir: Path, notebook: str) -> str:
    summary = json.loads((run_dir / notebook / "summary.json").read_text(encoding="utf-8"))
    headline = summary.get("headline")
    assert isinstance(headline, str) and headline.endswith("."), f"{notebook}: no headline sentence"
    assert "\n" not in headline and ". " not in headline, f"{notebook}: not one sentence: {headline!r}"
    assert not RAW_DUMPS.search(headline), headline
    executed = run_dir / f"{notebook}.ipynb"
    nb = json.loads(executed.read_text(encoding="utf-8"))
    markdown = [
        "".join(o["data"]["text/markdown"])
        for cell in nb["cells"]
        for o in cell.get("outputs", [])
        if "text/markdown" in o.get("data", {})
    ]
    assert headline in markdown, f"{notebook}: the headline is not displayed as Markdown"
    page = (run_dir / f"{notebook}.html").read_text(encoding="utf-8")
    assert headline in html.unescape(page), f"{notebook}: the report lacks the headline {headline!r}"
    assert "{'" not in page and "{&#x27;" not in page, f"{notebook}: a dict repr in the report"
    dumps = raw_dumps(shown_texts(executed))
    assert not dumps, f"{notebook}: raw dumps in the outputs: {dumps}"
    return headline


@pytest.fixture
def readable_report():
    """`readable_report(run_dir, notebook) -> headline`: the checks of this module's docstring."""
    return _check


@pytest.fixture
def find_raw_dumps():
    """`find_raw_dumps(texts) -> [snippet, ...]`: `raw_dumps`, for tests of the check itself."""
    return raw_dumps
