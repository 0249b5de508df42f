"""One executed notebook as a self-contained HTML report: code hidden, and nothing fetched from the network.

    render_report(executed_notebook, html_path, headline=None, log=None)   # the runner calls it for every notebook

nbconvert's lab template loads require.js, MathJax, mermaid and (for widgets) the jupyter-widgets html-manager
from CDNs. The report leaves all four out, so it opens offline, from a zip or an air-gapped machine:
- require.js: only the html-manager and old-style JavaScript outputs use it; the notebooks have neither.
- MathJax: the notebooks have no LaTeX (their markdown and outputs are plain text, tables and images), so
  `$...$` would show as typed.
- mermaid: no diagrams in the notebooks.
- widgets cannot render without the html-manager: `StripWidgets` removes their views and the notebook's widget
  state, so an output's own static fallback (text/html, an image) shows instead of a repr such as
  "VBox(children=...)"; a progress bar is dropped, and any other widget becomes a one-line note.
Images an HTML output or a markdown cell references by a local path become data: URIs (`inline_local_images`).

`external_references(html)` lists what a page would fetch from the network (the check the tests make).
"""

from __future__ import annotations

import base64
import functools
import html as html_lib
import mimetypes
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit
from urllib.request import url2pathname

from nbformat import from_dict

from ..files import write_text

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# Extends nbconvert's lab template (template_name="lab" puts its folder on the loader path).
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{#- No request may leave the file: require.js, MathJax, mermaid and the widget html-manager all come from
    CDNs and none is needed (nbutils/reporting/notebook_report.py explains why). -#}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_css -%}
<style type="text/css">
.nbutils-headline{margin:1em var(--jp-notebook-padding,10px) .5em;padding:.5em .8em;
  font-family:var(--jp-content-font-family,sans-serif);font-size:1.15em;line-height:1.4;
  color:var(--jp-content-font-color1,#222);border-left:4px solid #1976d2;background:#f5f8fc}
.nbutils-widget-note{color:#555;font-style:italic}
.nbutils-log{margin:0 var(--jp-notebook-padding,10px) .5em;font-family:var(--jp-content-font-family,sans-serif);
  font-size:.9em;color:#555}
</style>
{%- endblock html_head_css -%}
{%- block body_header -%}
{{ super() }}
{%- if resources.headline %}
<p class="nbutils-headline">{{ resources.headline | escape }}</p>
{%- endif -%}
{%- if resources.log_href %}
<p class="nbutils-log">Warnings and library messages:
  <a href="{{ resources.log_href | escape }}">{{ resources.log_name | escape }}</a></p>
{%- endif -%}
{%- endblock body_header -%}
"""


def render_report(
    executed_notebook: str | os.PathLike,
    html_path: str | os.PathLike,
    headline: str | None = None,
    log: str | os.PathLike | None = None,
    *,
    base_dirs: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write the executed notebook as self-contained HTML with the code hidden (outputs and markdown only).

    `headline`: one sentence saying what happened; when given, the report opens with it, above the notebook's
    title. `log`: the notebook's log file (warnings and library messages, nbutils/notebook_log.py); when it
    exists and is not empty, the report's header links to it, relative to the report. Local images are
    inlined, their relative paths resolved against `base_dirs`, then the executed notebook's folder, the
    report's folder, and the folder of the notebook papermill ran (its working directory under the runner).
    """
    executed_notebook, html_path = Path(executed_notebook), Path(html_path)
    resources = {"headline": headline or ""}
    if log is not None and Path(log).is_file() and Path(log).stat().st_size > 0:
        relative = Path(os.path.relpath(Path(log).resolve(), html_path.resolve().parent)).as_posix()
        resources.update(log_href=quote(relative), log_name=Path(log).name)
    body, resources = _exporter().from_filename(str(executed_notebook), resources=resources)
    bases = [Path(b) for b in base_dirs] + [executed_notebook.parent, html_path.parent]
    if resources.get("papermill_input"):
        bases.append(Path(resources["papermill_input"]).parent)
    return write_text(html_path, inline_local_images(body, bases))


@functools.lru_cache(maxsize=1)
def _exporter():
    """One exporter for the process: building it (template discovery) costs more than a small conversion."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    exporter.raw_template = _TEMPLATE
    exporter.register_preprocessor(_strip_widgets_preprocessor(), enabled=True)
    return exporter


def _strip_widgets_preprocessor():
    from nbconvert.preprocessors import Preprocessor

    class StripWidgets(Preprocessor):
        """Widget views and state out (module docstring); each output keeps its static fallback."""

        def preprocess(self, nb, resources):
            resources["papermill_input"] = (nb.metadata.get("papermill") or {}).get("input_path")
            state = nb.metadata.pop("widgets", None) or {}
            models = (state.get(WIDGET_STATE) or {}).get("state") or {}
            name = (resources.get("metadata") or {}).get("name") or "the notebook"
            headline = (resources.get("headline") or "").strip()
            for cell in nb.cells:
                if cell.get("cell_type") == "code":
                    outputs = (strip_widget(o, models, name) for o in cell.outputs)
                    # the notebook shows its headline where the stage finished; the report opens with it instead
                    cell.outputs = [o for o in outputs if o and not (headline and _is_markdown(o, headline))]
            return nb, resources

    return StripWidgets


def _is_markdown(output: dict, text: str) -> bool:
    markdown = (output.get("data") or {}).get("text/markdown")
    return markdown is not None and "".join(markdown).strip() == text


def strip_widget(output: dict, models: dict | None = None, notebook: str = "the notebook") -> dict | None:
    """An output without its widget view: itself if it has none; else its static fallback (text/html, images,
    ...), None for a progress bar, or a short note saying a kernel is needed. `models`: the notebook's widget
    state (model_id -> {model_name, state}), used to tell progress bars apart."""
    data = output.get("data") or {}
    if WIDGET_VIEW not in data:
        return output
    view = data[WIDGET_VIEW] or {}
    rest = {k: v for k, v in data.items() if k not in (WIDGET_VIEW, "text/plain")}
    if rest:
        return from_dict({**output, "data": rest})
    plain = data.get("text/plain", "")
    plain = "".join(plain) if isinstance(plain, list) else str(plain)
    if _is_progress_bar(view.get("model_id"), models or {}, plain):
        return None
    kind = re.match(r"\s*([A-Za-z_]\w*)\(", plain)
    what = f"An interactive widget ({kind.group(1)})" if kind else "An interactive widget"
    note = (
        f'<p class="nbutils-widget-note">{html_lib.escape(what)} is here in the notebook; it needs a running '
        f"kernel: open {html_lib.escape(str(notebook))}.ipynb in Jupyter to use it.</p>"
    )
    return from_dict({**output, "data": {"text/html": note}})


# tqdm's text ("label:  40%|####      | 4/10 [...]"), or the repr of a box holding a progress bar
_PROGRESS_TEXT = re.compile(r"\d+%\|.*\|\s*\d+|\b(?:Float|Int)Progress\(")
_PROGRESS_MODELS = ("FloatProgressModel", "IntProgressModel")


def _is_progress_bar(model_id, models: dict, plain: str) -> bool:
    seen, todo = set(), [model_id]
    while todo:
        mid = todo.pop()
        if not isinstance(mid, str) or mid in seen or mid not in models:
            continue
        seen.add(mid)
        model = models[mid]
        if model.get("model_name") in _PROGRESS_MODELS:
            return True
        children = (model.get("state") or {}).get("children") or []
        todo += [c.removeprefix("IPY_MODEL_") for c in children if isinstance(c, str)]
    return bool(_PROGRESS_TEXT.search(plain))


# ----------------------------------------------------------------------------- images and references

_IMG_SRC = re.compile(r"""(<img\b[^>]*?\ssrc\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


def inline_local_images(page: str, base_dirs: Iterable[str | os.PathLike]) -> str:
    """`page` with every <img src> that names a local image file (relative to the first of `base_dirs` that
    has it, absolute, or file://) replaced by a data: URI. data:, http(s) and missing files are left alone."""
    bases = [Path(b) for b in base_dirs]
    cache: dict[str, str | None] = {}

    def replace(match: re.Match) -> str:
        src = html_lib.unescape(match.group(3))
        if src not in cache:
            cache[src] = _data_uri(src, bases)
        uri = cache[src]
        return match.group(0) if uri is None else f"{match.group(1)}{match.group(2)}{uri}{match.group(2)}"

    return _IMG_SRC.sub(replace, page)


def _data_uri(src: str, bases: list[Path]) -> str | None:
    parts = urlsplit(src.strip())
    if parts.scheme == "file":
        candidates = [Path(url2pathname(parts.path))]
    elif parts.scheme or parts.netloc or not parts.path:  # data:, http(s):, //host/..., "#..."
        return None
    else:
        path = Path(unquote(parts.path))
        candidates = [path] if path.is_absolute() else [base / path for base in bases]
    for candidate in candidates:
        mime = mimetypes.guess_type(candidate.name)[0]
        if mime and mime.startswith("image/") and candidate.is_file():
            return f"data:{mime};base64,{base64.b64encode(candidate.read_bytes()).decode('ascii')}"
    return None


_TAG = re.compile(r"<([a-zA-Z][\w-]*)\b([^>]*)>")
_ATTRIBUTE = re.compile(
    r"""\s(src|href|srcset|data|poster|action|background)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""",
    re.IGNORECASE,
)
_CSS_IMPORT = re.compile(r"""@import\s+(?:url\(\s*)?["']?([^"')\s;]+)""", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*["']?([^"')\s]+)""", re.IGNORECASE)
_JS_URL = re.compile(r"""["'`]((?:https?:|wss?:)//[^"'`\s]+)""")  # any remote URL in a script's strings
_REMOTE = re.compile(r"^\s*(?:https?:|//|ftp:|wss?:)", re.IGNORECASE)
_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)


def external_references(page: str, links: bool = False) -> list[str]:
    """What `page` would fetch from the network: remote src / srcset / <link href> / CSS @import and url()
    values, and any remote URL in a script's strings. `links=True` adds <a href> (navigation, not a request)."""
    found = []
    for tag in _TAG.finditer(page):
        name = tag.group(1).lower()
        for attribute in _ATTRIBUTE.finditer(tag.group(2)):
            kind = attribute.group(1).lower()
            if kind == "href" and name in ("a", "area") and not links:
                continue
            value = html_lib.unescape(next(v for v in attribute.groups()[1:] if v is not None))
            values = [v.strip().split(" ")[0] for v in value.split(",")] if kind == "srcset" else [value]
            found += [v for v in values if _REMOTE.match(v)]
    for m in _SCRIPT_OR_STYLE.finditer(page):
        text = m.group(2)
        if m.group(1).lower() == "style":
            found += [u for u in _CSS_IMPORT.findall(text) + _CSS_URL.findall(text) if _REMOTE.match(u)]
        else:
            found += _JS_URL.findall(text)
    found += [u for u in _CSS_URL.findall(" ".join(re.findall(r'style="([^"]*)"', page))) if _REMOTE.match(u)]
    return list(dict.fromkeys(found))
