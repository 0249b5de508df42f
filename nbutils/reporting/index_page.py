"""The run's report pages: `<run>/index.html` linking each notebook's report, and `outputs/index.html` listing runs.

    write_index(run_dir)             # <run>/index.html: status, links, summary tables, figure thumbnails
    write_runs_index(outputs_dir)    # outputs/index.html: every run, its status, dates and headline figures
    summary_headline(run_dir, nb)    # the "headline" sentence of <run>/<nb>/summary.json, or None

Both pages are self-contained (no request leaves them) and link relatively, so a folder can be zipped and
shared. Each notebook's own report is `render_report` (notebook_report.py), re-exported here.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote

from .. import summaries
from ..files import read_json, write_text
from .notebook_report import render_report
from .tables import MISSING

__all__ = ["HEADLINE_FIGURES", "render_report", "summary_headline", "write_index", "write_runs_index"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#555;font-size:.9em} .meta td{padding:0 1em 0 0;vertical-align:top}
p.headline{font-size:1.1em;margin:.4em 0 .8em}
section{border-top:1px solid #ddd;padding:.6em 0 1em}
.status{display:inline-block;padding:0 .5em;border-radius:3px;font-size:.8em;color:#fff;vertical-align:middle}
.ok{background:#2e7d32} .failed,.interrupted{background:#c62828} .skipped{background:#888}
.running{background:#f9a825} .unreadable{background:#6a1b9a}
.tables{display:flex;flex-wrap:wrap;gap:.4em 1.2em;align-items:flex-start}
table.summary{border-collapse:collapse;font-size:.9em;margin:.5em 0}
table.summary caption{text-align:left;font-weight:600;color:#444;padding-bottom:2px}
table.summary td,table.summary th{border:1px solid #ddd;padding:2px 8px}
table.summary td:first-child{color:#555} table.summary th{font-weight:normal;color:#555;background:#fafafa}
table.summary td.n{text-align:right;font-variant-numeric:tabular-nums}
table.runs{border-collapse:collapse;font-size:.9em;width:100%}
table.runs th,table.runs td{border:1px solid #ddd;padding:3px 8px;vertical-align:top}
table.runs th{background:#fafafa;font-weight:600;text-align:left}
table.runs td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.runs td.when{white-space:nowrap} body.runs{max-width:none}
.figures a{display:inline-block;margin:4px;text-align:center;font-size:.8em;color:#555;text-decoration:none}
.figures img{max-width:320px;max-height:240px;border:1px solid #ddd;display:block}
pre.error{background:#fdecea;padding:.5em;white-space:pre-wrap} details{font-size:.85em;color:#555}
"""


# --------------------------------------------------------------------------------------------- summary tables


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _is_row_list(v) -> bool:
    """A list of flat dicts (a small table, e.g. train_clipcap's `comparison`)."""
    return (
        isinstance(v, list)
        and bool(v)
        and all(isinstance(r, Mapping) and r and all(_is_scalar(x) for x in r.values()) for r in v)
    )


def summary_tables(summary: Mapping, stage: str | None = None, skip: tuple[str, ...] = ("headline",)) -> str:
    """A summary.json as small HTML tables: its top-level numbers in one, each nested group (e.g. failures by
    kind) in its own, side by side. Groups of alike flat groups (per_attribute / single_object) become one
    table with a column per key; lists of flat rows a table with a row each; other lists are left out. Values
    are formatted as `stage`'s schema says (`nbutils.summaries.format_value`; None: any stage's)."""
    tables: list[str] = []
    _group(stage, None, {k: v for k, v in summary.items() if k not in skip}, (), tables)
    return f'<div class="tables">{"".join(tables)}</div>' if tables else ""


def _group(
    stage: str | None, title: str | None, mapping: Mapping, path: tuple[str, ...], out: list[str]
) -> None:
    e = html.escape

    def shown(value, *keys) -> str:
        return summaries.format_value(stage, ".".join((*path, *keys)), value)

    caption = f"<caption>{e(title)}</caption>" if title else ""
    scalars = [(str(k), v) for k, v in mapping.items() if _is_scalar(v)]
    if scalars:
        out.append(_table(caption, None, [(k, [shown(v, k)]) for k, v in scalars]))
    children = [(str(k), v) for k, v in mapping.items() if isinstance(v, Mapping) and v]
    alike: dict[tuple, list] = {}  # flat groups with the same keys: one table, a row each, a column per key
    for k, v in children:
        if all(_is_scalar(x) for x in v.values()):
            alike.setdefault(tuple(map(str, v)), []).append(k)
    in_matrix = set()
    for columns, names in alike.items():
        if len(names) >= 2:
            in_matrix.update(names)
            rows = [(k, [shown(v, k, str(c)) for c, v in mapping[k].items()]) for k in names]
            out.append(_table(caption, list(columns), rows))
    for k, v in children:
        if k not in in_matrix:
            _group(stage, f"{title} › {k}" if title else k, v, (*path, k), out)
    for k, v in mapping.items():
        if _is_row_list(v):
            columns = list(dict.fromkeys(str(c) for row in v for c in row))
            rows = [[shown(row.get(c), str(k), c) for c in columns] for row in v]
            name = f"{title} › {k}" if title else str(k)
            out.append(_table(f"<caption>{e(name)}</caption>", columns, [(None, r) for r in rows]))


def _table(caption: str, columns: list[str] | None, rows: list[tuple[str | None, list[str]]]) -> str:
    """A small table: `caption` (HTML), optional column heads, rows of (label or None, formatted values)."""
    e = html.escape
    labelled = any(label is not None for label, _ in rows)
    head = ""
    if columns is not None:
        head = (
            "<tr>"
            + ("<th></th>" if labelled else "")
            + "".join(f"<th>{e(c)}</th>" for c in columns)
            + "</tr>"
        )
    body = "".join(
        "<tr>"
        + (f"<td>{e(label)}</td>" if labelled else "")
        + "".join(f'<td class="n">{e(v)}</td>' for v in values)
        + "</tr>"
        for label, values in rows
    )
    return f'<table class="summary">{caption}{head}{body}</table>'


def _read_summary(path: Path) -> dict | None:
    try:
        summary = read_json(path)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def summary_headline(run_dir: str | os.PathLike, notebook: str) -> str | None:
    """The one-sentence `headline` of `<run_dir>/<notebook>/summary.json` (what render_report opens with)."""
    summary = _read_summary(Path(run_dir) / notebook / "summary.json")
    headline = (summary or {}).get("headline")
    return headline.strip() if isinstance(headline, str) and headline.strip() else None


def _when(stamp) -> str:
    """An ISO timestamp as "2025-12-06 08:38" (its own time zone), or "–"."""
    if not isinstance(stamp, str) or not stamp:
        return MISSING
    try:
        return dt.datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp


# --------------------------------------------------------------------------------------------- one run


def run_headline(record: Mapping) -> str:
    """One sentence on a run: how many notebooks ran, how they ended, how long it took."""
    entries = [e for e in record.get("notebooks") or [] if isinstance(e, Mapping)]
    counts: dict[str, int] = {}
    for entry in entries:
        counts[str(entry.get("status"))] = counts.get(str(entry.get("status")), 0) + 1
    seconds = sum(e["seconds"] for e in entries if isinstance(e.get("seconds"), (int, float)))
    status = record.get("status")
    ran = counts.get("ok", 0) + counts.get("failed", 0)
    parts = [f"{counts.get('ok', 0)} of {len(entries)} notebooks ran ok"]
    for kind in ("failed", "running", "interrupted", "skipped"):
        if counts.get(kind):
            parts.append(f"{counts[kind]} {kind}")
    failed = [e["name"] for e in entries if e.get("status") == "failed"]
    tail = f" ({', '.join(failed)} failed)" if failed else ""
    took = f" in {seconds / 60:.1f} min" if ran and seconds >= 60 else f" in {seconds:.0f} s" if ran else ""
    return f"Run {status}{took}: {', '.join(parts)}{tail}."


def write_index(run_dir: str | os.PathLike) -> Path:
    """Write `<run_dir>/index.html` from its run.json: status, links, summary tables, figure thumbnails.

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
        f'<p class="headline">{e(run_headline(record))}</p>',
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
    if (run_dir.parent / "index.html").is_file():
        parts.append('<p class="meta"><a href="../index.html">all runs</a></p>')
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
    summary, summary_error = None, None
    if entry.get("summary"):
        try:
            summary = read_json(run_dir / entry["summary"])
            if not isinstance(summary, dict):
                summary, summary_error = None, "not a JSON object"
        except (OSError, ValueError) as ex:
            summary_error = str(ex)
    headline = (summary or {}).get("headline")
    if isinstance(headline, str) and headline.strip():
        out.append(f'<p class="headline">{e(headline.strip())}</p>')
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
    if summary is not None:
        out.append(summary_tables(summary, nb if nb in summaries.SCHEMAS else None))
    elif summary_error:
        out.append(f'<p class="meta">summary.json unreadable: {e(summary_error)}</p>')
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
        rows = "".join(
            f"<tr><td>{e(str(k))}</td><td>{e(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}</td></tr>"
            for k, v in entry["parameters"].items()
        )
        out.append(f'<details><summary>parameters</summary><table class="summary">{rows}</table></details>')
    out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- all runs


# The runs table's figure columns: (column title, stage, keys of its summary.json, how to combine a key's values).
# A key with a "*" stands for all its values ("zero_shot_accuracy.*": one per attribute), of which `combine`
# shows one; several keys are shown side by side ("2,269 / 267"). Values are formatted as the stage's schema
# says (nbutils.summaries); a run without the stage, the summary or the key shows "–".
HEADLINE_FIGURES: list[tuple[str, str, tuple[str, ...], Callable | None]] = [
    ("images downloaded", "processdata_01", ("ok",), None),
    ("download failures", "processdata_01", ("failed",), None),
    ("clean images", "processdata_02", ("clean",), None),
    ("train / test images", "processdata_03", ("train_images", "test_images"), None),
    ("CLIP R@1 image→text", "train_clip", ("i2t_r1",), None),
    ("CLIP zero-shot accuracy (mean)", "train_clip", ("zero_shot_accuracy.*",), statistics.fmean),
    ("encoder-decoder CIDEr", "train_encoder_decoder", ("cider",), None),
    ("ClipCap CIDEr", "train_clipcap", ("cider",), None),
    ("CLIPScore (best captioner)", "infer", ("clipscore.*",), max),
]


def _figure(summary: dict | None, stage: str, keys: tuple[str, ...], combine: Callable | None) -> str:
    """One cell of the runs table: the values of `keys` in `summary`, each formatted as the schema says."""
    numbers = summaries.flatten(summary)
    shown = []
    for key in keys:
        wanted = summaries.field(stage, key)  # a "*" key: every key of that field
        values = [v for k, v in numbers.items() if math.isfinite(v) and summaries.field(stage, k) == wanted]
        value = (combine(values) if combine else values[0]) if values and wanted else None
        shown.append(summaries.format_value(stage, key, value))
    return MISSING if all(s == MISSING for s in shown) else " / ".join(shown)


def _run_row(run_dir: Path) -> dict:
    """What the runs table shows about one run folder; status "unreadable" when run.json cannot be read."""
    row = {"name": run_dir.name, "status": "unreadable", "started": None, "finished": None, "profile": None}
    row["description"] = ""
    try:
        record = read_json(run_dir / "run.json")
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        entries = {
            e.get("name"): e
            for e in record.get("notebooks") or []
            if isinstance(e, Mapping) and e.get("name")
        }
        row.update(
            status=str(record.get("status") or "unknown"),
            started=record.get("started_at"),
            finished=record.get("finished_at"),
            profile=record.get("profile"),
            description=str(record.get("description") or ""),
        )
    except (OSError, ValueError, TypeError, AttributeError) as ex:
        entries, row["error"] = {}, f"run.json unreadable: {ex}"
    read: dict[str, dict | None] = {}
    figures = []
    for _, nb, keys, combine in HEADLINE_FIGURES:
        if nb not in read:
            rel = (entries.get(nb) or {}).get("summary") or f"{nb}/summary.json"
            read[nb] = _read_summary(run_dir / rel)
        figures.append(_figure(read[nb], nb, keys, combine))
    row["figures"] = figures
    return row


def write_runs_index(outputs_dir: str | os.PathLike) -> Path:
    """Write `<outputs_dir>/index.html`: every run folder with a run.json, newest first, with its status, dates,
    profile and headline figures (HEADLINE_FIGURES) side by side, each linking to the run's own index.html."""
    outputs_dir = Path(outputs_dir)
    runs = [_run_row(p.parent) for p in outputs_dir.glob("*/run.json") if p.parent.is_dir()]
    runs.sort(key=lambda r: r["name"])
    runs.sort(key=lambda r: str(r["started"] or ""), reverse=True)
    e = html.escape
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    what = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda x: -x[1]))
    sentence = f"{len(runs)} run{'s' if len(runs) != 1 else ''} in this folder" + (
        f": {what}." if runs else "."
    )
    header = ["run", "status", "started", "finished", "profile", *(title for title, *_ in HEADLINE_FIGURES)]
    rows = []
    for r in runs:
        name = e(r["name"])
        if (outputs_dir / r["name"] / "index.html").is_file():
            name = f'<a href="{quote(r["name"])}/index.html">{name}</a>'
        title = (
            f' title="{e(r.get("error") or r["description"])}"' if r.get("error") or r["description"] else ""
        )
        rows.append(
            f"<tr><td{title}>{name}</td>"
            f'<td><span class="status {e(r["status"])}">{e(r["status"])}</span></td>'
            f'<td class="when">{e(_when(r["started"]))}</td><td class="when">{e(_when(r["finished"]))}</td>'
            f"<td>{e(str(r['profile'] or MISSING))}</td>"
            + "".join(f'<td class="n">{e(f)}</td>' for f in r["figures"])
            + "</tr>"
        )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>runs</title>\n'
        f'<style>{_CSS}</style></head><body class="runs">\n'
        f'<p class="headline">{e(sentence)}</p>\n<h1>Runs</h1>\n'
        '<table class="runs"><tr>'
        + "".join(f"<th>{e(h)}</th>" for h in header)
        + "</tr>\n"
        + "\n".join(rows)
        + "\n</table>\n</body></html>\n"
    )
    return write_text(outputs_dir / "index.html", page)
