"""A notebook's HTML report is self-contained: nothing it shows is fetched from the network (checked statically
here; tests/reporting/test_reports_offline_in_chromium.py opens real reports in a browser with the network off)."""

import base64
import re

import pytest

from nbutils import runner
from nbutils.reporting import index_page, notebook_report
from nbutils.reporting.notebook_report import external_references, inline_local_images, strip_widget

REMOTE_ATTRIBUTE = re.compile(r"""\s(?:src|href)\s*=\s*["']?\s*(?:https?:|//)""", re.IGNORECASE)
REMOTE_IMPORT = re.compile(r"""@import\s+(?:url\()?\s*["']?\s*(?:https?:|//)""", re.IGNORECASE)


@pytest.fixture(scope="module")
def report(report_notebook, tmp_path_factory):
    html_path = tmp_path_factory.mktemp("report") / "report_fixture.html"
    notebook_report.render_report(
        report_notebook["path"], html_path, headline="12 of 14 <things> worked; 2 failed."
    )
    return html_path.read_text(encoding="utf-8")


def test_the_report_requests_nothing_from_the_network(report):
    assert not REMOTE_ATTRIBUTE.search(report) and not REMOTE_IMPORT.search(report)
    assert "//cdn" not in report and "unpkg.com" not in report
    assert external_references(report, links=True) == []
    lowered = report.lower()
    for library in ("require.js", "require.min.js", "mathjax", "mermaid.esm", "html-manager"):
        assert library not in lowered, library
    assert all(src.startswith("data:image/") for src in re.findall(r'<img[^>]*\ssrc="([^"]*)"', report))


def test_the_report_shows_every_output_with_the_code_hidden(report, report_notebook):
    assert report_notebook["code"] not in report and "hidden-code-marker" not in report
    assert report.count("data:image/png;base64,") >= 1 + 2 + 2  # the figure, the grid, the two linked files
    assert re.search(r"<style[^>]*>[^<]*#T_", report) and "1.23" in report  # the Styler table, its CSS inline
    for name in ("relative_png", "markdown_png"):  # local files became data: URIs
        assert base64.b64encode(report_notebook[name]).decode() in report
    assert "after the progress bar" in report


def test_widgets_become_their_fallback_or_a_note(report):
    assert "application/vnd.jupyter.widget" not in report  # neither views nor the saved state
    assert "VBox(children" not in report and "TqdmHBox" not in report and "FloatProgress" not in report
    assert report.count("nbutils-widget-note") == 2  # the CSS rule and the box without a fallback
    assert (
        "An interactive widget (VBox) is here in the notebook" in report and "report_fixture.ipynb" in report
    )
    assert "<b>static fallback of the box</b>" in report


def test_the_headline_opens_the_report(report, report_notebook):
    body = report[report.index("<body") :]
    headline = body.index('<p class="nbutils-headline">12 of 14 &lt;things&gt; worked; 2 failed.</p>')
    assert headline < body.index(f">{report_notebook['title']}<") and "<div" not in body[:headline]


def test_without_a_headline_there_is_no_lead_paragraph(report_notebook, tmp_path):
    page = notebook_report.render_report(report_notebook["path"], tmp_path / "r.html").read_text()
    assert '<p class="nbutils-headline">' not in page and f">{report_notebook['title']}<" in page


def test_a_non_empty_log_is_linked_relative_to_the_report(report_notebook, tmp_path):
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "nb one.log"
    log.write_text("")
    page = notebook_report.render_report(report_notebook["path"], tmp_path / "r.html", log=log).read_text()
    assert 'class="nbutils-log"' not in page  # an empty log gets no link
    log.write_text("UserWarning: something a library said\n")
    page = notebook_report.render_report(report_notebook["path"], tmp_path / "r.html", log=log).read_text()
    body = page[page.index("<body") :]
    link = body.index('<a href="logs/nb%20one.log">nb one.log</a>')
    assert link < body.index(f">{report_notebook['title']}<")  # in the header, above the notebook
    assert external_references(page) == []


def test_external_references_lists_what_a_page_would_fetch():
    page = """<html><head><script src="https://cdn.example/a.js"></script>
    <link rel="stylesheet" href='//fonts.example/b.css'><link rel="icon" href="data:,">
    <style>@import url("https://x.example/c.css"); .a{background:url(http://x.example/d.png)}
    .b{background:url(data:image/png;base64,AA==)}</style>
    <script type="module">const m = await import("https://x.example/e.mjs");</script></head>
    <body><img src="data:image/png;base64,AAAA" srcset="ok.png 1x, https://x.example/f.png 2x">
    <div style="background-image:url('https://x.example/g.png')"></div>
    <a href="https://example.org/docs">a link</a><a href="#section">local</a><img src=relative.png></body></html>"""
    found = external_references(page)
    assert found == [
        "https://cdn.example/a.js",
        "//fonts.example/b.css",
        "https://x.example/f.png",
        "https://x.example/c.css",
        "http://x.example/d.png",
        "https://x.example/e.mjs",
        "https://x.example/g.png",
    ]
    with_links = external_references(page, links=True)
    assert len(with_links) == 8 and set(with_links) - set(found) == {"https://example.org/docs"}


def test_local_images_are_inlined_and_everything_else_left_alone(tmp_path):
    (tmp_path / "a b.png").write_bytes(b"\x89PNG-a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jpg").write_bytes(b"jpeg-c")
    (tmp_path / "notes.txt").write_text("not an image")
    page = (
        '<img src="a%20b.png"><img alt="x" src=\'c.jpg\'><img src="missing.png"><img src="data:image/png;base64,QQ==">'
        f'<img src="file://{tmp_path}/a%20b.png"><img src="{tmp_path / "sub" / "c.jpg"}"><img src="notes.txt">'
        '<img src="https://example.org/x.png"><p>src="a%20b.png"</p>'
    )
    out = inline_local_images(page, [tmp_path / "nowhere", tmp_path, tmp_path / "sub"])
    a, c = base64.b64encode(b"\x89PNG-a").decode(), base64.b64encode(b"jpeg-c").decode()
    assert out == (
        f'<img src="data:image/png;base64,{a}"><img alt="x" src=\'data:image/jpeg;base64,{c}\'>'
        '<img src="missing.png"><img src="data:image/png;base64,QQ==">'
        f'<img src="data:image/png;base64,{a}"><img src="data:image/jpeg;base64,{c}"><img src="notes.txt">'
        '<img src="https://example.org/x.png"><p>src="a%20b.png"</p>'
    )


def test_strip_widget_keeps_fallbacks_and_drops_progress_bars():
    view = {"application/vnd.jupyter.widget-view+json": {"model_id": "m1", "version_major": 2}}
    plain = {"output_type": "display_data", "data": {"text/plain": "Label(value='x')", **view}}
    assert strip_widget({"output_type": "stream", "text": "x"}) == {"output_type": "stream", "text": "x"}
    with_html = {"output_type": "display_data", "data": {**plain["data"], "text/html": "<b>x</b>"}}
    assert strip_widget(with_html)["data"] == {"text/html": "<b>x</b>"}
    assert "An interactive widget (Label)" in strip_widget(plain, notebook="nb")["data"]["text/html"]
    tqdm_text = {
        "output_type": "display_data",
        "data": {"text/plain": "step:  40%|####      | 4/10 [00:01<00:02]", **view},
    }
    assert strip_widget(tqdm_text) is None
    models = {
        "m1": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_m2"]}},
        "m2": {"model_name": "FloatProgressModel", "state": {}},
    }
    assert strip_widget(plain, models) is None  # a box holding a progress bar, from the saved state
    box = {"text/plain": "HBox(children=(HTML(value='x'), FloatProgress(value=1.0)))", **view}
    assert strip_widget({"output_type": "display_data", "data": box}) is None  # or from its repr


def test_the_runner_and_index_page_export_render_report():
    assert runner.render_report is notebook_report.render_report is index_page.render_report


def test_the_notebooks_own_copy_of_the_headline_moves_to_the_top(tmp_path):
    import nbformat
    from nbformat import v4

    headline = "3 of 4 images downloaded; 1 failed (timeout 1)."
    shown = v4.new_output("display_data", data={"text/markdown": headline, "text/plain": headline})
    other = v4.new_output("display_data", data={"text/markdown": "**a table below**", "text/plain": "x"})
    nb = v4.new_notebook(
        cells=[v4.new_markdown_cell("# Title"), v4.new_code_cell("x", outputs=[shown, other])]
    )
    nbformat.write(nb, tmp_path / "nb.ipynb")
    notebook_report.render_report(tmp_path / "nb.ipynb", tmp_path / "with.html", headline=headline)
    page = (tmp_path / "with.html").read_text(encoding="utf-8")
    assert page.count(headline) == 1 and page.index(headline) < page.index(">Title<")
    assert "a table below" in page
    notebook_report.render_report(tmp_path / "nb.ipynb", tmp_path / "without.html")
    assert (tmp_path / "without.html").read_text(encoding="utf-8").count(headline) == 1  # kept where it was
