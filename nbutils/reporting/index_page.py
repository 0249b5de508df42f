"""The run's report: each executed notebook as HTML (code hidden), and index.html linking them all."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from ..files import read_json, write_text


def render_report(executed_notebook: str | os.PathLike, html_path: str | os.PathLike) -> Path:
    """Write the executed notebook as HTML with the code hidden (outputs and markdown only)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_filename(str(executed_notebook))
    return write_text(html_path, body)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#555;font-size:.9em} .meta td{padding:0 1em 0 0;vertical-align:top}
section{border-top:1px solid #ddd;padding:.6em 0 1em}
.status{display:inline-block;padding:0 .5em;border-radius:3px;font-size:.8em;color:#fff;vertical-align:middle}
.ok{background:#2e7d32} .failed,.interrupted{background:#c62828} .skipped{background:#888} .running{background:#f9a825}
table.summary{border-collapse:collapse;font-size:.9em;margin:.5em 0}
table.summary td{border:1px solid #ddd;padding:2px 8px} table.summary td:first-child{color:#555}
.figures a{display:inline-block;margin:4px;text-align:center;font-size:.8em;color:#555;text-decoration:none}
.figures img{max-width:320px;max-height:240px;border:1px solid #ddd;display:block}
pre.error{background:#fdecea;padding:.5em;white-space:pre-wrap} details{font-size:.85em;color:#555}
"""


def write_index(run_dir: str | os.PathLike) -> Path:
    """Write `<run_dir>/index.html` from its run.json: status, links, summary numbers, figure thumbnails.

    All links are relative, so the folder can be zipped and opened elsewhere.
    """
    run_dir = Path(run_dir)
    record = read_json(run_dir / "run.json")
    e = html.escape
    git = record.get("git") or {}
    meta = [
        ("profile", record.get("profile")),
        ("status", record.get("status")),
        ("started", record.get("started_at")),
        ("finished", record.get("finished_at")),
        ("device", record.get("device")),
        ("seed", record.get("seed")),
        (
            "git",
            f"{git.get('commit') or 'no commit'}{' (dirty)' if git.get('dirty') else ''}" if git else None,
        ),
        ("versions", ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items())),
        ("command", " ".join(record.get("command") or [])),
    ]
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(str(record.get("run")))}'
        f"</title>\n<style>{_CSS}</style></head><body>",
        f'<h1>{e(str(record.get("run")))} <span class="status {e(str(record.get("status")))}">'
        f"{e(str(record.get('status')))}</span></h1>",
    ]
    if record.get("description"):
        parts.append(f"<p>{e(record['description'])}</p>")
    parts.append(
        '<table class="meta">'
        + "".join(f"<tr><td>{k}</td><td>{e(str(v))}</td></tr>" for k, v in meta if v is not None)
        + "</table>"
    )
    for entry in record.get("notebooks", []):
        parts.append(_index_section(run_dir, entry))
    parts.append("</body></html>\n")
    return write_text(run_dir / "index.html", "\n".join(parts))


def _index_section(run_dir: Path, entry: dict) -> str:
    e = html.escape
    nb, status = entry["name"], entry.get("status", "")
    title = f'<a href="{quote(entry["report"])}">{e(nb)}</a>' if entry.get("report") else e(nb)
    secs = f" {entry['seconds']:.1f} s" if isinstance(entry.get("seconds"), (int, float)) else ""
    out = [
        f'<section id="{e(nb)}"><h2>{title} <span class="status {e(status)}">{e(status)}</span>'
        f"<small>{secs}</small></h2>"
    ]
    notes = [
        entry.get("note"),
        "from an earlier invocation of this run" if entry.get("carried_over") else None,
    ]
    if entry.get("executed_notebook"):
        notes.append(f'<a href="{quote(entry["executed_notebook"])}">executed notebook</a>')
    out += [f'<p class="meta">{" · ".join(n if n.startswith("<a") else e(n) for n in notes if n)}</p>']
    err = entry.get("error")
    if err:
        cell = f"cell {err.get('cell_index')}: " if err.get("cell_index") is not None else ""
        out.append(
            f'<pre class="error">{e(cell)}{e(str(err.get("ename")))}: {e(str(err.get("evalue")))}</pre>'
        )
    if entry.get("summary"):
        try:
            rows = list(_flatten(read_json(run_dir / entry["summary"])))
            out.append(
                '<table class="summary">'
                + "".join(f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>" for k, v in rows)
                + "</table>"
            )
        except (OSError, ValueError) as ex:
            out.append(f'<p class="meta">summary.json unreadable: {e(str(ex))}</p>')
    if status in ("ok", "failed"):
        figs = sorted((run_dir / nb / "figures").glob("*.png"))
        if figs:
            out.append(
                '<div class="figures">'
                + "".join(
                    f'<a href="{quote(f"{nb}/figures/{p.name}")}"><img src="{quote(f"{nb}/figures/{p.name}")}" '
                    f'alt="{e(p.stem)}" loading="lazy">{e(p.stem)}</a>'
                    for p in figs
                )
                + "</div>"
            )
    if entry.get("parameters"):
        out.append(
            "<details><summary>parameters</summary><pre>"
            f"{e(json.dumps(entry['parameters'], ensure_ascii=False, indent=1))}</pre></details>"
        )
    out.append("</section>")
    return "\n".join(out)


def _flatten(obj, prefix=""):
    """Yield (dotted key, scalar) pairs of a summary; lists and other containers are left out."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif obj is None or isinstance(obj, (str, int, float, bool)):
        yield prefix[:-1], obj


def _fmt(v) -> str:
    if isinstance(v, float) and not isinstance(v, bool):
        if v == 0 or 1e-3 <= abs(v) < 1e4:
            return f"{v:.4g}"
        return f"{v:,.1f}" if abs(v) >= 1e4 else f"{v:.3e}"
    return str(v)
