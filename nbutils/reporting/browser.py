"""A caption browser for notebooks: step through images, compare models, re-caption, sort and filter.

    browser = CaptionBrowser.from_infer(run, captioners)   # an infer run (nbutils.infer) and its captioners
    browser.widget()                                        # ipywidgets: buttons, slider, preset, sort, filter
    browser                                                 # the same widget, with a note for static reports

The logic (`CaptionBrowser`: the order of images, the current one, what it shows, re-captioning) is plain Python
and is tested without a kernel; `widget()` only wires ipywidgets to it. Widgets cannot run in an exported HTML
report, so reports also carry infer's static gallery, and displaying the browser itself (the notebook's last
expression) gives the widget view together with a `text/html` note (`STATIC_NOTE`): a kernel shows the widget, a
report that drops widget views shows the note instead of a repr.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..models.decoding import PRESETS

SORTS = ("order", "cider", "clipscore")  # "cider" and "clipscore": the worst first, over the models shown
STATIC_NOTE = (
    "Interactive caption browser: open this notebook in JupyterLab or Voilà to step through the images; "
    "the static gallery in this report shows the same captions."
)


@dataclass
class CaptionBrowser:
    """Images with each model's caption and per-image scores; a position in a sorted, filtered order.

    `per_image`: one row per (image_path, model) with `caption` and any scores (`cider`, `clipscore`,
    `attribute_errors`). `pixels`: image_path -> uint8 (H, W, 3). `references`: image_path -> captions.
    `captioners`: model name -> LoadedCaptioner, for re-captioning the current image with another preset.
    """

    per_image: pd.DataFrame
    pixels: dict
    references: dict = field(default_factory=dict)
    captioners: dict = field(default_factory=dict)
    preset: str = "beam"
    sort: str = "order"
    errors_only: bool = False
    position: int = 0
    recaptioned: dict = field(default_factory=dict)  # (image_path, model, preset) -> caption

    def __post_init__(self):
        self.paths = list(dict.fromkeys(self.per_image["image_path"]))
        self.order = list(self.paths)

    @classmethod
    def from_infer(cls, run, captioners: dict | None = None, preset: str | None = None) -> CaptionBrowser:
        """A browser over an `nbutils.infer.InferRun` (its images, captions, scores and image cache)."""
        cache = next(iter(run.caches.values()))
        paths = list(dict.fromkeys(run.per_image["image_path"]))
        images = cache.uint8(cache.index_of(paths))
        references = dict(zip(run.images.paths, run.images.references or [[] for _ in run.images.paths]))
        return cls(
            run.per_image,
            dict(zip(paths, images)),
            references,
            captioners or {},
            preset
            or (
                run.summary["decoding"]["given"] if run.summary["decoding"]["given"] in PRESETS else "greedy"
            ),
        )

    # -- the order -------------------------------------------------------------------------------------------

    def set_view(self, sort: str | None = None, errors_only: bool | None = None) -> None:
        """Re-order: `sort` ("order", "cider" or "clipscore": worst first), `errors_only` (images where some model's
        caption gets an attribute wrong). The current image stays current if it is still shown."""
        if sort is not None:
            if sort not in SORTS:
                raise ValueError(f"sort must be one of {SORTS}, got {sort!r}")
            if sort != "order" and sort not in self.per_image:
                raise ValueError(f"sort={sort!r}: these captions have no {sort} scores")
            self.sort = sort
        if errors_only is not None:
            if errors_only and "attribute_errors" not in self.per_image:
                raise ValueError(
                    "errors_only: these captions have no attribute_errors (the demo set has them)"
                )
            self.errors_only = errors_only
        current = self.current_path() if self.order else None
        paths = list(self.paths)
        if self.errors_only:
            wrong = set(self.per_image[self.per_image["attribute_errors"].fillna("") != ""]["image_path"])
            paths = [p for p in paths if p in wrong]
        if self.sort != "order":
            worst = self.per_image.groupby("image_path")[self.sort].min()
            # a stable sort of paths already in their original order: ties keep that order
            paths = sorted(paths, key=lambda p: worst.get(p, np.inf))
        self.order = paths
        self.position = paths.index(current) if current in paths else 0

    def go(self, position: int) -> None:
        """Show the image at `position` of the current order (clamped to it)."""
        self.position = max(0, min(int(position), len(self.order) - 1)) if self.order else 0

    def next(self) -> None:
        self.go(self.position + 1)

    def previous(self) -> None:
        self.go(self.position - 1)

    # -- what is shown ---------------------------------------------------------------------------------------

    def current_path(self) -> str | None:
        return self.order[self.position] if self.order else None

    def current(self) -> dict:
        """The shown image: {"image_path", "position", "count", "references", "rows": [{model, caption, scores}]}."""
        path = self.current_path()
        if path is None:
            return {"image_path": None, "position": 0, "count": 0, "references": [], "rows": []}
        rows = []
        for row in self.per_image[self.per_image["image_path"] == path].to_dict(orient="records"):
            key = (path, row["model"], self.preset)
            if key in self.recaptioned:
                row = {**row, "caption": self.recaptioned[key], "preset": self.preset}
            rows.append(row)
        return {
            "image_path": path,
            "position": self.position,
            "count": len(self.order),
            "references": list(self.references.get(path, [])),
            "rows": rows,
        }

    def recaption(self, preset: str) -> dict:
        """Caption the current image again with every loaded captioner and `preset`; returns `current()`."""
        import torch

        if preset not in PRESETS:
            raise ValueError(f"unknown decoding preset {preset!r}; allowed: {', '.join(sorted(PRESETS))}")
        self.preset = preset
        path = self.current_path()
        if path is None:
            return self.current()
        image = torch.from_numpy(np.asarray(self.pixels[path])).permute(2, 0, 1)[None]
        for name, captioner in self.captioners.items():
            key = (path, name, preset)
            if key not in self.recaptioned:
                self.recaptioned[key] = captioner.caption(image, preset, seed=0)[0][0]["caption"]
        return self.current()

    def caption_html(self) -> str:
        """The shown image's captions and scores as HTML (what the widget displays beside the image)."""
        shown = self.current()
        if shown["image_path"] is None:
            return "<i>no image matches this filter</i>"
        lines = [f"<b>{shown['position'] + 1} / {shown['count']}</b> {html.escape(shown['image_path'])}"]
        for row in shown["rows"]:
            scores = ", ".join(
                f"{name} {row[name]:.2f}"
                for name in ("cider", "clipscore", "refclipscore")
                if isinstance(row.get(name), float) and not np.isnan(row[name])
            )
            errors = row.get("attribute_errors") or ""
            extra = " · ".join(x for x in (scores, f"wrong: {errors}" if errors else "") if x)
            model, preset = html.escape(row["model"]), html.escape(row.get("preset", "as run"))
            note = f" <small>({html.escape(extra)})</small>" if extra else ""
            lines.append(
                f'<div class="caption"><b>✎ {model}</b> [{preset}]: {html.escape(row["caption"])}{note}</div>'
            )
        lines += [f"<div>ref: {html.escape(r)}</div>" for r in shown["references"][:3]]
        return "\n".join(lines)

    # -- the widget ------------------------------------------------------------------------------------------

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """What a notebook shows for the browser: the widget view (a running kernel renders it) beside a
        `text/html` and `text/plain` note saying where it runs, which static HTML reports show instead."""
        bundle = dict(self.widget()._repr_mimebundle_(include=include, exclude=exclude) or {})
        bundle["text/html"] = f'<p class="caption-browser-note"><i>{html.escape(STATIC_NOTE)}</i></p>'
        bundle["text/plain"] = STATIC_NOTE
        return bundle

    def widget(self, thumb_px: int = 256):
        """ipywidgets around this browser: ◀ / ▶ buttons, a slider, preset, sort and filter controls."""
        import io

        import ipywidgets as widgets
        from PIL import Image

        image = widgets.Image(format="png", width=thumb_px, height=thumb_px)
        text = widgets.HTML()
        previous = widgets.Button(description="◀ previous")
        following = widgets.Button(description="next ▶")
        slider = widgets.IntSlider(min=0, max=max(0, len(self.order) - 1), description="image")
        preset = widgets.Dropdown(options=sorted(PRESETS), value=self.preset, description="preset")
        sort = widgets.Dropdown(
            options=[s for s in SORTS if s == "order" or s in self.per_image],
            value=self.sort,
            description="sort",
        )
        errors = widgets.Checkbox(
            value=self.errors_only,
            description="attribute errors only",
            disabled="attribute_errors" not in self.per_image,
        )

        def render():
            path = self.current_path()
            if path is not None:
                buffer = io.BytesIO()
                Image.fromarray(np.asarray(self.pixels[path])).resize(
                    (thumb_px, thumb_px), Image.NEAREST
                ).save(buffer, "PNG")
                image.value = buffer.getvalue()
            slider.max = max(0, len(self.order) - 1)
            slider.value = self.position
            text.value = self.caption_html()

        def step(move):
            move()
            render()

        previous.on_click(lambda _: step(self.previous))
        following.on_click(lambda _: step(self.next))
        slider.observe(lambda change: step(lambda: self.go(change["new"])), names="value")
        preset.observe(lambda change: step(lambda: self.recaption(change["new"])), names="value")
        sort.observe(lambda change: step(lambda: self.set_view(sort=change["new"])), names="value")
        errors.observe(lambda change: step(lambda: self.set_view(errors_only=change["new"])), names="value")
        render()
        box = widgets.VBox(
            [
                widgets.HBox([previous, following, slider]),
                widgets.HBox([preset, sort, errors]),
                widgets.HBox([image, text]),
            ]
        )
        box.controls = {"previous": previous, "next": following, "slider": slider, "preset": preset, "sort": sort,
                        "errors": errors, "image": image, "text": text}  # fmt: skip
        return box
