"""A caption browser for notebooks: step through images, compare models, re-caption, sort and filter.

    browser = CaptionBrowser.from_infer(run, captioners)   # an infer run (nbutils.infer) and its captioners
    browser.widget()                                        # ipywidgets: buttons, slider, preset, sort, filter
    browser                                                 # the same widget, with a note for static reports

The logic (`CaptionBrowser`: the order of images, the current one, what it shows, re-captioning and re-scoring)
is plain Python and is tested without a kernel; `widget()` only wires ipywidgets to it. Widgets cannot run in an
exported HTML report, so reports also carry infer's static gallery, and displaying the browser itself (the
notebook's last expression) gives the widget view together with a `text/html` note (`STATIC_NOTE`): a kernel
shows the widget, a report that drops widget views shows the note instead of a repr.

Re-captioning. The presets menu starts at the run's own decoding. Choosing another preset re-captions the shown
image and then every image shown while it stays chosen, each once per model and preset (cached). A preset changes
the search, not the caption budget: infer's `max_new_tokens` (0: each preset's own limit) and
`num_return_sequences` go on top of it as infer passes them to the captioners, with the run's seed, and each
captioner gets the image at its own geometry (the run's image cache of that model). A re-captioned caption is
scored the way infer scores the run's (`CaptionScorer`: CIDEr-D with the test set's document frequencies,
CLIPScore with the run's CLIP, attribute errors against the demo's ground truth); a score that cannot be
recomputed is marked "not scored" rather than showing the run caption's. Sorting and the errors filter use the
run's captions: ordering by a re-captioned score would mean re-captioning every image.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..models.decoding import PRESETS, decoding_request, resolve_decoding

SORTS = ("order", "cider", "clipscore")  # "cider" and "clipscore": the worst first, over the models shown
SCORE_COLUMNS = ("cider", "clipscore", "refclipscore", "attribute_errors")  # per_image columns of one caption
STATIC_NOTE = (
    "Interactive caption browser: open this notebook in JupyterLab or Voilà to step through the images; "
    "the static gallery in this report shows the same captions."
)


@dataclass
class CaptionScorer:
    """Scores one image's caption as infer scores the run's, one image at a time.

    `references`: image_path -> references for every image of the scored set, {} for none. An image's CIDEr-D
    uses the document frequencies of all of them (as the test set's scoring does), so a caption scores here what
    it scores in infer's per-image table. `language` and `tokenization` (None: the language's default) as infer's
    metrics. `truth`: the demo's ground truth (`scenes.load_ground_truth`) for attribute errors, or None.
    `clip`: (ClipBundle, image embeddings) with `clip_paths` naming the embeddings' rows, for CLIPScore (and
    RefCLIPScore with references) with `clipscore_prompt` in front of the caption, or None.
    """

    references: dict = field(default_factory=dict)
    language: str = "zh"
    tokenization: str | None = None
    truth: pd.DataFrame | None = None
    clip: tuple | None = None
    clip_paths: list = field(default_factory=list)
    clipscore_prompt: str = ""
    _tokenized_references: dict | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_infer(cls, run, config=None) -> CaptionScorer:
        """The scoring tools of an `nbutils.infer.InferResult`: its images' references, the demo's ground truth
        (infer attributes errors only where there are references), its CLIP and CLIPScore prompt; `config`
        (an InferConfig) gives the metrics' tokenization."""
        from ..demo import scenes

        images = run.images
        references = dict(zip(images.paths, images.references)) if images.references is not None else {}
        truth = None
        if references and images.ground_truth:
            truth = scenes.load_ground_truth(Path(images.ground_truth).parent)
        return cls(
            references,
            images.language or "zh",  # infer's default for a set without a recorded language
            (config.tokenization if config is not None else "") or None,
            truth,
            run.clip,
            list(images.paths),
            run.summary.get("clipscore_prompt") or "",
        )

    def score(self, path: str, caption: str) -> dict:
        """The scores of `caption` for image `path` that these tools give: `cider` (with references),
        `attribute_errors` (with ground truth: the wrong statements, ", "-joined as in infer's per-image table),
        `clipscore` and, with references, `refclipscore` (with a CLIP)."""
        scores = {}
        if path in self.references:
            scores["cider"] = self._cider(path, caption)
        if self.truth is not None:
            from ..evaluation.attributes import attribute_errors

            scores["attribute_errors"] = ", ".join(
                attribute_errors({path: caption}, self.truth, self.language)[path]
            )
        if self.clip is not None:
            scores.update(self._clipscores(path, caption))
        return scores

    def _cider(self, path: str, caption: str) -> float:
        """pycocoevalcap's CIDEr-D of one caption. The other images get empty captions: an image's score depends
        only on its own caption, its references and the document frequencies, which come from the references."""
        from pycocoevalcap.cider.cider import Cider

        from ..evaluation.caption_metrics import tokenize_caption

        if self._tokenized_references is None:  # tokenised once: jieba over a test set is the slow part
            self._tokenized_references = {
                key: [tokenize_caption(r, self.language, self.tokenization) for r in refs]
                for key, refs in self.references.items()
            }
        gts = self._tokenized_references
        res = {key: [""] for key in gts}
        res[path] = [tokenize_caption(caption, self.language, self.tokenization)]
        _, per_image = Cider().compute_score(gts, res)
        return float(per_image[list(gts).index(path)])

    def _clipscores(self, path: str, caption: str) -> dict:
        from ..evaluation.clipscore import score_captions

        bundle, image_embeds = self.clip
        row = self.clip_paths.index(path)
        references = [self.references[path]] if self.references else None
        table = score_captions(
            bundle, image_embeds[row : row + 1], [caption], references, prompt=self.clipscore_prompt
        )
        return {name: float(table[name].iloc[0]) for name in ("clipscore", "refclipscore") if name in table}


@dataclass
class CaptionBrowser:
    """Images with each model's caption and per-image scores; a position in a sorted, filtered order.

    `per_image`: one row per (image_path, model) with `caption` and any scores (`cider`, `clipscore`,
    `refclipscore`, `attribute_errors`). `pixels`: image_path -> uint8 (H, W, 3), what the widget shows.
    `references`: image_path -> captions. `captioners`: model name -> LoadedCaptioner, for re-captioning.
    `preset`: the chosen entry of `presets()` (default: the run's own decoding, `run_preset`).
    `decoding`: how per_image's captions were made, as infer's `decoding` parameter (a preset name or JSON
    settings; "" when not known). `max_new_tokens` (0: each preset's own), `num_return_sequences` and `seed`:
    what re-captioning puts on top of a preset, as infer does (`decoding_for`). `caches`: model name -> the image
    cache that model captioned from (ImageCache: `index_of`, `uint8`); a model without one re-captions `pixels`.
    `scorer`: re-scores re-captioned captions (None: they are shown "not scored").
    """

    per_image: pd.DataFrame
    pixels: dict
    references: dict = field(default_factory=dict)
    captioners: dict = field(default_factory=dict)
    preset: str | None = None
    sort: str = "order"
    errors_only: bool = False
    position: int = 0
    decoding: str = ""
    max_new_tokens: int = 0
    num_return_sequences: int = 1
    seed: int | None = 0
    caches: dict = field(default_factory=dict)
    scorer: CaptionScorer | None = None
    recaptioned: dict = field(default_factory=dict)  # (image_path, model, preset) -> {caption, scores}

    def __post_init__(self):
        self.paths = list(dict.fromkeys(self.per_image["image_path"]))
        self.order = list(self.paths)
        self.preset = self.run_preset if self.preset is None else self.preset
        self._check_preset(self.preset)

    @classmethod
    def from_infer(
        cls, run, captioners: dict | None = None, preset: str | None = None, config=None
    ) -> CaptionBrowser:
        """A browser over an `nbutils.infer.InferResult`: its images, captions, scores and image caches;
        re-captioning with `captioners` (model name -> LoadedCaptioner, e.g. `run.captioners`) under the run's
        decoding settings, re-scoring with its references, ground truth and CLIP (`CaptionScorer.from_infer`).

        `config`: the InferConfig the run was made with (decoding, max_new_tokens, num_return_sequences, seed,
        tokenization); by default `run.config` where the run carries one, else the settings run.summary
        recorded (the limit the run's captions had becomes every preset's, seed 0 as the stage's default).
        `preset`: the preset chosen at the start (default: the run's own decoding).
        """
        config = config if config is not None else getattr(run, "config", None)
        display = next(iter(run.caches.values()))
        paths = list(dict.fromkeys(run.per_image["image_path"]))
        references = dict(zip(run.images.paths, run.images.references or [[] for _ in run.images.paths]))
        return cls(
            run.per_image,
            dict(zip(paths, display.uint8(display.index_of(paths)))),
            references,
            captioners or {},
            preset,
            caches=dict(run.caches),
            scorer=CaptionScorer.from_infer(run, config),
            **_run_decoding(run, config),
        )

    # -- the order -------------------------------------------------------------------------------------------

    def set_view(self, sort: str | None = None, errors_only: bool | None = None) -> None:
        """Re-order: `sort` ("order", "cider" or "clipscore": worst first), `errors_only` (images where some model's
        caption gets an attribute wrong). Shows the first image of the new order. Both use the run's captions."""
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
        paths = list(self.paths)
        if self.errors_only:
            wrong = set(self.per_image[self.per_image["attribute_errors"].fillna("") != ""]["image_path"])
            paths = [p for p in paths if p in wrong]
        if self.sort != "order":
            worst = self.per_image.groupby("image_path")[self.sort].min()
            # a stable sort of paths already in their original order: ties keep that order
            paths = sorted(paths, key=lambda p: worst.get(p, np.inf))
        self.order = paths
        self.position = 0

    def go(self, position: int) -> None:
        """Show the image at index `position` (from 0) of the current order, clamped to it. The slider and the
        header count from 1: image k of n is position k - 1."""
        self.position = max(0, min(int(position), len(self.order) - 1)) if self.order else 0

    def next(self) -> None:
        self.go(self.position + 1)

    def previous(self) -> None:
        self.go(self.position - 1)

    # -- the decoding ----------------------------------------------------------------------------------------

    @property
    def run_preset(self) -> str:
        """The run's own decoding as the presets menu and the rows name it: its preset, "custom" for explicit
        JSON settings, "as run" when not known."""
        if self.decoding in PRESETS:
            return self.decoding
        return "custom" if self.decoding.strip().startswith("{") else "as run"

    def presets(self) -> list[str]:
        """What the presets menu offers: the decoding presets, after the run's own decoding if it is not one."""
        return ([] if self.run_preset in PRESETS else [self.run_preset]) + sorted(PRESETS)

    def decoding_for(self, preset: str) -> str | dict:
        """What the captioners get to re-caption with `preset`: its search with the run's caption budget and
        candidates on top (infer's `decoding_request` and `resolve_decoding`), or the preset's name alone where
        nothing goes on top (the captioners resolve it to the same settings)."""
        if preset not in PRESETS:
            raise ValueError(f"unknown decoding preset {preset!r}; allowed: {', '.join(sorted(PRESETS))}")
        search = PRESETS[preset]
        # The best of n candidates is what the run shows. Greedy and beam search give at most num_beams, and
        # their best does not depend on n; sampling's best of n does.
        n = self.num_return_sequences
        if not search.get("do_sample", False):
            n = min(n, search.get("num_beams", 1))
        if not self.max_new_tokens and n == 1:
            return preset
        return resolve_decoding(decoding_request(preset, self.max_new_tokens, num_return_sequences=n))

    def _check_preset(self, preset: str) -> None:
        if preset not in self.presets():
            raise ValueError(f"unknown decoding preset {preset!r}; allowed: {', '.join(self.presets())}")

    # -- what is shown ---------------------------------------------------------------------------------------

    def current_path(self) -> str | None:
        return self.order[self.position] if self.order else None

    def current(self) -> dict:
        """The shown image: {"image_path", "position" (from 0), "number" (from 1, as the slider and header),
        "count", "references", "rows"}. A row per model: the per_image row with `preset` (the decoding that made
        the caption); with a preset other than the run's chosen, the model's caption of this image with it,
        scored (`recaptioned_row`), where the model has a captioner."""
        path = self.current_path()
        if path is None:
            return {"image_path": None, "position": 0, "number": 0, "count": 0, "references": [], "rows": []}
        rows = []
        for row in self.per_image[self.per_image["image_path"] == path].to_dict(orient="records"):
            if self.preset != self.run_preset and row["model"] in self.captioners:
                row = {**row, **self.recaptioned_row(path, row["model"], self.preset)}
            else:
                row = {**row, "preset": self.run_preset}
            rows.append(row)
        return {
            "image_path": path,
            "position": self.position,
            "number": self.position + 1,
            "count": len(self.order),
            "references": list(self.references.get(path, [])),
            "rows": rows,
        }

    def recaption(self, preset: str) -> dict:
        """Choose `preset` (an entry of `presets()`): the current image is re-captioned now, every image shown
        later when first shown, while it differs from the run's own decoding; returns `current()`."""
        self._check_preset(preset)
        self.preset = preset
        return self.current()

    def recaptioned_row(self, path: str, model: str, preset: str) -> dict:
        """`model`'s caption of image `path` with `preset` (`decoding_for`), and its scores (`scorer`), cached:
        {"caption", "preset", each score of the per_image columns the scorer gave, the others None,
        "not_scored": the names of those it could not give}."""
        key = (path, model, preset)
        if key not in self.recaptioned:
            caption = self._caption(path, model, preset)
            self.recaptioned[key] = {
                "caption": caption,
                **(self.scorer.score(path, caption) if self.scorer else {}),
            }
        done = self.recaptioned[key]
        shown = [name for name in SCORE_COLUMNS if name in self.per_image]
        return {
            "caption": done["caption"],
            "preset": preset,
            **{name: done.get(name) for name in shown},
            "not_scored": [name for name in shown if name not in done],
        }

    def _caption(self, path: str, model: str, preset: str) -> str:
        """The best caption `model` gives image `path` with `preset`, from the image at its own geometry."""
        import torch

        cache = self.caches.get(model)
        pixels = cache.uint8(cache.index_of(path)) if cache is not None else self.pixels[path]
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
        candidates = self.captioners[model].caption(image, self.decoding_for(preset), seed=self.seed)
        return candidates[0][0]["caption"]

    def caption_html(self) -> str:
        """The shown image's captions and scores as HTML (what the widget displays beside the image)."""
        shown = self.current()
        if shown["image_path"] is None:
            return "<i>no image matches this filter</i>"
        lines = [f"<b>{shown['number']} / {shown['count']}</b> {html.escape(shown['image_path'])}"]
        for row in shown["rows"]:
            model, preset = html.escape(row["model"]), html.escape(row["preset"])
            note = _scores_note(row)
            note = f" <small>({html.escape(note)})</small>" if note else ""
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
        """ipywidgets around this browser: ◀ / ▶ buttons, a slider (image 1 to n, as the "k / n" header), the
        presets menu, sort and filter controls. The box's `controls` dict names them: previous, next, slider,
        preset, sort, errors, image, text."""
        import ipywidgets as widgets

        image = widgets.Image(format="png", width=thumb_px, height=thumb_px)
        text = widgets.HTML()
        previous = widgets.Button(description="◀ previous")
        following = widgets.Button(description="next ▶")
        slider = widgets.IntSlider(min=1, max=max(1, len(self.order)), description="image")
        preset = widgets.Dropdown(options=self.presets(), value=self.preset, description="preset")
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
        rendering = False

        def render():
            nonlocal rendering
            rendering = True
            try:
                path = self.current_path()
                if path is not None:
                    image.value = _png(self.pixels[path], thumb_px)
                # the maximum first: a smaller one clamps the value, which is set right after
                slider.max = max(1, len(self.order))
                slider.value = self.position + 1
                slider.disabled = not self.order
                text.value = self.caption_html()
            finally:
                rendering = False

        def step(move):
            if rendering:  # render's own slider updates are not moves
                return
            move()
            render()

        previous.on_click(lambda _: step(self.previous))
        following.on_click(lambda _: step(self.next))
        slider.observe(lambda change: step(lambda: self.go(change["new"] - 1)), names="value")
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


def _run_decoding(run, config) -> dict:
    """The browser's decoding fields from an infer run: from its InferConfig, else from run.summary."""
    if config is not None:
        # the notebook's max_new_tokens, else one that JSON settings give; 0: each preset's own
        budget = decoding_request(config.decoding, config.max_new_tokens).get("max_new_tokens", 0)
        return {
            "decoding": config.decoding,
            "max_new_tokens": budget,
            "num_return_sequences": config.num_return_sequences,
            "seed": config.seed,
        }
    recorded = run.summary["decoding"]  # the settings generate() got, and the `decoding` parameter as given
    return {
        "decoding": recorded["given"],
        "max_new_tokens": recorded.get("max_new_tokens", 0),
        "num_return_sequences": recorded.get("num_return_sequences", 1),
        "seed": 0,
    }


def _scores_note(row: dict) -> str:
    """A row's scores, wrong statements and unscored names: "cider 0.52, clipscore 0.71 · wrong: colour"."""
    scores = ", ".join(
        f"{name} {row[name]:.2f}"
        for name in ("cider", "clipscore", "refclipscore")
        if isinstance(row.get(name), float) and not np.isnan(row[name])
    )
    errors = row.get("attribute_errors") or ""
    unscored = row.get("not_scored") or []
    shown = [name for name in SCORE_COLUMNS if name in row and name not in unscored]
    missing = ("not scored: " + ", ".join(unscored)) if shown else "not scored"
    parts = (scores, f"wrong: {errors}" if errors else "", missing if unscored else "")
    return " · ".join(part for part in parts if part)


def _png(pixels, size: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).resize((size, size), Image.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()
