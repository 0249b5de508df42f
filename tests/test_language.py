"""The project speaks of itself only: present-tense facts about the code, no work log.

Checked text: README.md, benchmarks/*.md, the profiles (nbutils/runner/profiles/*.yaml), the notebooks'
markdown cells and code comments, and the package's docstrings and comments. Flagged: issue numbers
("issue 9", "issue #12"), sessions ("the previous session"), work rounds ("earlier rounds", "round 2"),
the first person ("I", "we", "our", "my", "us") and history narration ("previously", "no longer", "now
uses"). Code spans (`...`) and urls are not prose and are skipped, so identifiers such as `session` or
`round(x)` pass, and so do the legitimate senses: "a round trip", "rounded to 2 places", "the other
way round", "one Session per thread" (requests.Session), "US".
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_DETERMINER = (
    r"this|that|these|those|the\s+(?:previous|earlier|last|next|first|second|third|fourth|fifth|final|same)|"
    r"previous|earlier|last|next|later|prior|first|second|third|fourth|fifth|each|every|several|both|"
    r"another|two|three|four|five"
)

PATTERNS: dict[str, re.Pattern] = {
    # "issue 9", "issue #12", "issues 8 and 9", "issue 8's targets", "#12" after "issue"
    "issue number": re.compile(r"\bissues?\s*(?:no\.?\s*)?#?\s*\d+", re.IGNORECASE),
    # the work item itself: "the targets", "what the issue names / asks / requires"
    "the issue as a task": re.compile(
        r"\b(?:the|this|that)\s+issue(?:'s|\s+(?:names|asks|says|wants|requires|demands|sets|lists))\b",
        re.IGNORECASE,
    ),
    # "session" of work; a requests.Session ("one Session per thread"), an HTTP / Jupyter session or a
    # "`requests` session" (a code span before it) is fine
    "session": re.compile(
        r"(?<!HTTP )(?<!HTTPS )(?<!requests )(?<!TLS )(?<!Jupyter )(?<!kernel )(?<!browser )(?<!\uE000 )"
        r"(?:\bsessions?\b|(?:^|(?<=[.!?:;(]\s))Sessions?\b)(?!\.\w|\()"
    ),
    # "this round", "earlier rounds", "the second round", "that round's"; not "a round trip", "round-trip",
    # "rounding", "rounded", "the other way round", `round(x)`, a command-line option (`--rounds 2`)
    "work round": re.compile(
        rf"\b(?:{_DETERMINER})\s+rounds?\b(?!(?:-|\s+)(?:trips?|robin)\b)|(?<!--)\brounds?\s+(?:no\.?\s*)?#?\d+\b(?![.,]\d)",
        re.IGNORECASE,
    ),
    # first person; case-sensitive: "US" and "I/O" pass
    "first person": re.compile(
        r"(?<![\"'“])\b(?:I(?!/O\b)(?![-;\"”]|'(?![mvdl]))|I'm|I've|I'd|I'll|[Ww]e|[Ww]e're|[Ww]e've|[Ww]e'd|[Ww]e'll|[Oo]urs?|"
        r"[Oo]urselves|[Mm]y|[Mm]yself|[Mm]e|us|Us|[Ll]et's)\b(?!['’]\w)"
    ),
    # a work log instead of a description of the code
    "history": re.compile(
        r"\b(?:previously|formerly|used\s+to\s+(?:be|have|take|fail|crash|hang)|"
        r"no\s+longer(?!\s+than)|(?:kept\s+)?for\s+the\s+record|any\s?more(?=\s*(?:[.,;:)]|$))|"
        r"(?:has|have)\s+been\s+(?:fixed|renamed|removed|rewritten|reworked|changed)|"
        # "the profile now trains 440 steps", "now the default", "0.55 s, now 0.42 s"; not "fails now", "now if"
        r"now\s+(?!this\b|is\b|as\b)(?:[a-z]+s|reach|the\s+(?:\w+\s+)?default)|,\s*now\s+[\d~≈]|"
        r"(?:before|after)\s+(?:the|this)\s+(?:fix|change|rewrite|refactor)|"
        r"(?:the|an?)\s+(?:earlier|older|old|previous|last)\s+(?:version|attempt|implementation|code|fix))\b",
        re.IGNORECASE,
    ),
}

_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_CODE = "\ue000"  # what a code span becomes: not prose, but still a word before the next one
_URL = re.compile(r"https?://\S+|\bwww\.\S+")


def offences(text: str) -> list[tuple[str, str]]:
    """[(kind, offending text)] in one line of prose; code spans and urls are skipped."""
    prose = _URL.sub(_CODE, _CODE_SPAN.sub(_CODE, text))
    found = []
    for kind, pattern in PATTERNS.items():
        found += [(kind, m.group(0)) for m in pattern.finditer(prose)]
    return found


# ----------------------------------------------------------------------------- the text of each kind of file


def markdown_lines(path: Path) -> Iterator[tuple[str, str]]:
    """(line number, text) of a markdown or YAML file: all of it (fenced code included, but not code spans)."""
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        yield str(i), line


def python_comment_lines(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of the comments and docstrings (module, class, function) of Python `source`."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        tokens = []
        for i, line in enumerate(source.splitlines(), 1):  # magics and shell lines: '#' to the end
            if "#" in line:
                yield i, line[line.index("#") :]
    for token in tokens:
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                for offset, line in enumerate(first.value.value.splitlines()):
                    yield first.lineno + offset, line


def _cell_magics_blanked(source: str) -> str:
    """A code cell with IPython magics and shell lines blanked, so it tokenizes as Python."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def notebook_lines(path: Path) -> Iterator[tuple[str, str]]:
    """("cell N:line", text) of a notebook's markdown cells and its code cells' comments."""
    for n, cell in enumerate(json.loads(path.read_text(encoding="utf-8")).get("cells", [])):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if cell.get("cell_type") == "markdown":
            for i, line in enumerate(source.splitlines(), 1):
                yield f"cell {n}:{i}", line
        elif cell.get("cell_type") == "code":
            for i, line in python_comment_lines(_cell_magics_blanked(source)):
                yield f"cell {n}:{i}", line


def file_offences(path: Path) -> list[str]:
    """'path:line: [kind] offending text | the line' for each offence in `path`."""
    if path.suffix == ".ipynb":
        lines = notebook_lines(path)
    elif path.suffix == ".py":
        lines = ((str(i), line) for i, line in python_comment_lines(path.read_text(encoding="utf-8")))
    else:
        lines = markdown_lines(path)
    relative = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return [
        f"{relative}:{where}: [{kind}] {found!r} in: {line.strip()[:160]}"
        for where, line in lines
        for kind, found in offences(line)
    ]


CHECKED = sorted(
    [
        REPO / "README.md",
        *(REPO / "notebooks").glob("*.ipynb"),
        *(REPO / "nbutils" / "runner" / "profiles").glob("*.yaml"),
        *(REPO / "benchmarks").glob("*.md"),
        *(REPO / "nbutils").rglob("*.py"),
    ]
)


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(REPO)))
def test_the_project_speaks_of_itself_only(path):
    found = file_offences(path)
    if found:
        pytest.fail(
            "work-log language (issue numbers, sessions, rounds, first person, history); "
            "state present-tense facts about the code instead:\n" + "\n".join(found),
            pytrace=False,
        )


# ----------------------------------------------------------------------------- the checker itself

FLAGGED = [
    ("see issue 9 for the targets", "issue number"),
    ("(part of issue #12)", "issue number"),
    ("issue 8's targets in brackets", "issue number"),
    ("what the issue names is a pretrained encoder", "the issue as a task"),
    ("the previous session ran a step in 0.11 s", "session"),
    ("Session measured 0.21 s a step", "session"),
    ("I measured 0.11 s a step", "first person"),
    ("We keep the cache", "first person"),
    ("a CNN of our own", "first person"),
    ("let us see", "first person"),
    ("earlier rounds of tuning", "work round"),
    ("round 2 met the targets", "work round"),
    ("What made shape learnable (this round)", "work round"),
    ("that round's profile", "work round"),
    ("the second round", "work round"),
    ("the loader previously read the CSV", "history"),
    ("DDP no longer searches for unused parameters", "history"),
    ("kept for the record", "history"),
    ("which is why the profile now trains 440 steps", "history"),
    ("(`pooling`, now the default)", "history"),
    ("the step was 0.55 s, now 0.42 s", "history"),
    ("Hard negatives now reach the image tower", "history"),
    ("it does not import torch anymore.", "history"),
]

PASSED = [
    "rounded to 2 places",
    "python -m benchmarks.bench_downloader --n 15000 --rounds 2",
    "a round trip over HTTP",
    "one pickle round trip per chunk",
    "a JSON round-trip keeps the keys",
    "the same up to float rounding",
    "the preset's limit and the other way round",
    "seconds = round(time.perf_counter() - start, 2)",
    "`round(x, 2)` of the seconds",
    "One Session per thread: connection pooling",
    "the HTTP session of each thread",
    "`_Downloader.session` reads it",
    "session.get(url) streams the body",
    "captions no longer than 32 tokens",
    "the issue of the day: a US keyboard",
    "I/O bound: threads",
    "a my_data.yaml profile",
    "see https://github.com/huggingface/transformers/issues/12345",
    "the tokenizer used to train the decoder",
    "the first round-trip test",
    'mode "I" holds 16-bit PNGs; "I;16" too',
    "a thread pool with pooled `requests` sessions",
    "Why images were rewritten (EXIF applied)",
    "a typo fails now and not next week",
    "stop when there are not any more rows to read",
    "imported now if it already is, and now the usual finders run",
]


@pytest.mark.parametrize("text, kind", FLAGGED)
def test_the_checker_flags_work_log_language(text, kind):
    assert kind in [k for k, _ in offences(text)], offences(text)


@pytest.mark.parametrize("text", PASSED)
def test_the_checker_passes_legitimate_words(text):
    assert offences(text) == []


def test_the_checker_reads_comments_and_docstrings_but_not_code(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        '"""Module.\n\nAs measured in the last session."""\n\n'
        "session = 1  # one Session per thread\n"
        "x = round(2.5)  # I chose this\n\n"
        'def f():\n    """We return it."""\n    return "issue 9 in a string"\n',
        encoding="utf-8",
    )
    found = file_offences(module)
    assert [entry.split(": [")[0].rsplit(":", 1)[1] for entry in found] == ["6", "3", "9"], found
    notebook = tmp_path / "n.ipynb"
    notebook.write_text(
        json.dumps(
            {
                "cells": [
                    {"cell_type": "markdown", "source": ["# Title\n", "As in issue 9.\n"]},
                    {"cell_type": "code", "source": ["%matplotlib inline\n", "x = 1  # our value\n"]},
                    {"cell_type": "code", "source": ["print('session')\n"]},
                ]
            }
        ),
        encoding="utf-8",
    )
    found = file_offences(notebook)
    assert [entry.split(": [")[0] for entry in found] == [
        f"{notebook}:cell 0:2",
        f"{notebook}:cell 1:2",
    ], found
