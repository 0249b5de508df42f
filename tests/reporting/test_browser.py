"""The caption browser's logic and its widget wiring, without a kernel."""

import numpy as np
import pandas as pd
import pytest

from nbutils.reporting.browser import CaptionBrowser


class FakeCaptioner:
    """Captions an image with its preset and the image's mean value, so a re-caption is visible and checkable."""

    def __init__(self, name):
        self.name, self.calls = name, []

    def caption(self, images, decoding, seed=None):
        self.calls.append((tuple(images.shape), decoding))
        return [
            [{"caption": f"{self.name}/{decoding}/{int(images[i].float().mean())}"}]
            for i in range(len(images))
        ]


def _browser(**kwargs):
    paths = ["a.jpg", "b.jpg", "c.jpg"]
    per_image = pd.DataFrame(
        {
            "image_path": paths * 2,
            "model": ["m1"] * 3 + ["m2"] * 3,
            "caption": ["a1", "b1", "c1", "a2", "b2", "c2"],
            "cider": [1.0, 0.2, 0.5, 0.9, 0.8, 0.1],
            "clipscore": [0.7, 0.6, 0.9, 0.8, 0.4, 0.95],
            "attribute_errors": ["", "shape", "", "", "", "colour, size"],
        }
    )
    pixels = {p: np.full((4, 4, 3), 10 * (i + 1), dtype=np.uint8) for i, p in enumerate(paths)}
    references = {"a.jpg": ["ref a"], "b.jpg": ["ref b"], "c.jpg": ["ref c"]}
    captioners = {"m1": FakeCaptioner("m1"), "m2": FakeCaptioner("m2")}
    return CaptionBrowser(per_image, pixels, references, captioners, **kwargs)


def test_stepping_stays_inside_the_order():
    b = _browser()
    assert b.current()["image_path"] == "a.jpg" and b.current()["count"] == 3
    b.previous()
    assert b.position == 0
    b.next(), b.next(), b.next()
    assert b.current_path() == "c.jpg"
    b.go(1)
    shown = b.current()
    assert shown["image_path"] == "b.jpg" and shown["references"] == ["ref b"]
    assert [r["caption"] for r in shown["rows"]] == ["b1", "b2"]


def test_sorting_puts_the_worst_first_and_keeps_the_current_image():
    b = _browser()
    b.go(2)  # c.jpg
    b.set_view(sort="cider")  # worst cider over the models: b 0.2, c 0.1, a 0.9 -> c, b, a
    assert b.order == ["c.jpg", "b.jpg", "a.jpg"] and b.current_path() == "c.jpg"
    b.set_view(sort="clipscore")  # b 0.4, a 0.7, c 0.9
    assert b.order == ["b.jpg", "a.jpg", "c.jpg"]
    b.set_view(sort="order")
    assert b.order == ["a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(ValueError, match="sort must be one of"):
        b.set_view(sort="bleu")


def test_filtering_to_attribute_errors():
    b = _browser()
    b.set_view(errors_only=True)
    assert b.order == ["b.jpg", "c.jpg"] and b.current_path() == "b.jpg"
    b.set_view(errors_only=False)
    assert b.order == ["a.jpg", "b.jpg", "c.jpg"]
    plain = CaptionBrowser(pd.DataFrame({"image_path": ["a"], "model": ["m"], "caption": ["x"]}), {"a": None})
    with pytest.raises(ValueError, match="no attribute_errors"):
        plain.set_view(errors_only=True)


def test_recaptioning_the_current_image_with_another_preset():
    b = _browser()
    b.go(1)
    shown = b.recaption("greedy")
    assert [r["caption"] for r in shown["rows"]] == ["m1/greedy/20", "m2/greedy/20"]
    assert all(r["preset"] == "greedy" for r in shown["rows"])
    assert b.captioners["m1"].calls == [((1, 3, 4, 4), "greedy")]
    b.recaption("greedy")  # cached: no second call
    assert len(b.captioners["m1"].calls) == 1
    b.next()
    assert [r["caption"] for r in b.current()["rows"]] == ["c1", "c2"]  # not re-captioned yet
    with pytest.raises(ValueError, match="unknown decoding preset"):
        b.recaption("fastest")


def test_the_widget_buttons_slider_and_controls_drive_the_browser():
    b = _browser()
    box = b.widget(thumb_px=32)
    c = box.controls
    first_image, first_text = c["image"].value, c["text"].value
    assert "1 / 3" in first_text and "a1" in first_text and first_image
    c["next"].click()
    assert b.current_path() == "b.jpg" and c["slider"].value == 1 and "b1" in c["text"].value
    assert c["image"].value != first_image
    c["slider"].value = 2
    assert b.current_path() == "c.jpg" and "c2" in c["text"].value
    c["preset"].value = "greedy"
    assert "m1/greedy/30" in c["text"].value
    c["errors"].value = True
    assert b.order == ["b.jpg", "c.jpg"] and "2 / 2" in c["text"].value
    c["sort"].value = "cider"
    assert b.order == ["c.jpg", "b.jpg"]
    c["previous"].click()
    assert c["slider"].value == 0


def test_the_browser_displays_as_its_widget_with_a_note_for_static_reports():
    from IPython.core.interactiveshell import InteractiveShell

    from nbutils.reporting.browser import STATIC_NOTE

    data, _ = InteractiveShell.instance().display_formatter.format(_browser())
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"]  # a kernel renders the widget
    # What an exported report shows once the widget view is stripped: the note, not a repr of the widget.
    assert "JupyterLab or Voilà" in data["text/html"] and "static gallery" in data["text/html"]
    assert data["text/plain"] == STATIC_NOTE and "VBox" not in data["text/plain"]
