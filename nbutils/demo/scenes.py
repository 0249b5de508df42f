"""A deterministic synthetic captioned image set that models can genuinely learn.

Nothing can be downloaded in the demo environment, so every notebook's demo profile trains and
evaluates on this set. Each image holds one to three coloured shapes, each in its own cell of a
3x3 grid (so they never overlap), on a muted plain or gradient background; each image gets several
different captions (Chinese by default, English on request), every one of them true of the image.
The ground truth (`objects.jsonl`) lets later notebooks score colour/shape/size/position accuracy.

    df = generate_demo_dataset("data/demo")        # image_path (absolute), text; one row per caption
    gt = load_ground_truth("data/demo")            # one row per image, with its objects
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..errors import DataError, check_int, is_int
from ..files import atomic_path, read_json, write_json, write_table, write_text
from ..parallel import map_chunks, process_pool

# -----------------------------------------------------------------------------
# config
FORMAT_VERSION = 1
# Recorded in meta.json (a stable id); only folders carrying it are replaced. Also recognised when reading:
# "nbutils.demo_data", the id in the meta.json of sets already under data/, so those are reused, not refused
# or regenerated.
GENERATOR = "nbutils.demo.scenes"
GENERATOR_IDS = (GENERATOR, "nbutils.demo_data")
JPEG_QUALITY = 92
SUPERSAMPLE = 4  # draw at 4x and downsample with LANCZOS: anti-aliased edges
NOISE_STD = 3.0  # per-pixel Gaussian noise after downsampling (uint8 units)
COLOUR_JITTER = 10  # +- per channel on each object's colour, so colours are not one exact value
OBJECT_COUNT_P = (0.3, 0.4, 0.3)  # probability of 1, 2, 3 objects
RADIUS = {"big": 0.40, "small": 0.22}  # object radius as a fraction of a grid cell
RADIUS_JITTER = 0.08  # +- relative
MAX_ROTATION = 15.0  # degrees; more would turn a square into a diamond
BACKGROUND_MIN_DISTANCE = 90.0  # RGB distance between a background and every object colour
MIN_IMAGE_SIZE = 16
PARALLEL_MIN_IMAGES = 1000  # below this a process pool costs more than it saves
CHUNK = 250  # images per worker task

# -----------------------------------------------------------------------------
# vocabulary (canonical ids are the English keys; ground truth uses them)
SHAPES = {
    "circle": {"zh": "圆形", "en": "circle"},
    "square": {"zh": "正方形", "en": "square"},
    "triangle": {"zh": "三角形", "en": "triangle"},
    "star": {"zh": "星形", "en": "star"},
    "cross": {"zh": "十字形", "en": "cross"},
}
# Saturated and far apart (closest pair ~90 in RGB) so they survive 64 px JPEG.
COLOURS = {
    "red": {"rgb": (215, 35, 35), "zh": "红色", "en": "red"},
    "orange": {"rgb": (240, 125, 20), "zh": "橙色", "en": "orange"},
    "yellow": {"rgb": (240, 215, 35), "zh": "黄色", "en": "yellow"},
    "green": {"rgb": (35, 160, 55), "zh": "绿色", "en": "green"},
    "blue": {"rgb": (35, 75, 215), "zh": "蓝色", "en": "blue"},
    "purple": {"rgb": (140, 50, 180), "zh": "紫色", "en": "purple"},
    "white": {"rgb": (245, 245, 245), "zh": "白色", "en": "white"},
    "black": {"rgb": (20, 20, 20), "zh": "黑色", "en": "black"},
}
SIZES = {
    "big": {"zh": "大", "en": "big", "en_synonyms": ("big", "large")},
    "small": {"zh": "小", "en": "small", "en_synonyms": ("small", "little")},
}
# Rows top/middle/bottom x columns left/centre/right; `en_phrase` is how captions say it.
POSITIONS = {
    "top-left": {"row": 0, "col": 0, "zh": "左上角", "en": "top left", "en_phrase": "in the top left corner"},
    "top": {"row": 0, "col": 1, "zh": "正上方", "en": "top", "en_phrase": "at the top"},
    "top-right": {
        "row": 0,
        "col": 2,
        "zh": "右上角",
        "en": "top right",
        "en_phrase": "in the top right corner",
    },
    "left": {"row": 1, "col": 0, "zh": "左边", "en": "left", "en_phrase": "on the left"},
    "centre": {"row": 1, "col": 1, "zh": "中间", "en": "centre", "en_phrase": "in the centre"},
    "right": {"row": 1, "col": 2, "zh": "右边", "en": "right", "en_phrase": "on the right"},
    "bottom-left": {
        "row": 2,
        "col": 0,
        "zh": "左下角",
        "en": "bottom left",
        "en_phrase": "in the bottom left corner",
    },
    "bottom": {"row": 2, "col": 1, "zh": "正下方", "en": "bottom", "en_phrase": "at the bottom"},
    "bottom-right": {
        "row": 2,
        "col": 2,
        "zh": "右下角",
        "en": "bottom right",
        "en_phrase": "in the bottom right corner",
    },
}
POSITION_AT = {(p["row"], p["col"]): name for name, p in POSITIONS.items()}
BACKGROUNDS = {"plain": {"zh": "纯色", "en": "plain"}, "gradient": {"zh": "渐变", "en": "gradient"}}
LANGUAGES = ("zh", "en")
ZH_NUMBERS = {1: "一", 2: "两", 3: "三"}
EN_NUMBERS = {1: "one", 2: "two", 3: "three"}


def attribute_prompts(attribute: str, language: str = "zh") -> tuple[list[str], list[list[str]]]:
    """Class ids and a prompt ensemble per class for `attribute` in colour/shape/size/position.

    Each class's prompts are object phrases in the captions' own form, one for every combination of
    the other attributes (CLIP's prompt ensembling: zero-shot scores use the mean of their normalised
    embeddings). Colour and shape prompts come with and without a size word, as captions do:
    attribute_prompts("shape", "en") -> (["circle", ...], [["a big red circle", ..., "a red circle",
    ...], ...]); the ids are the values the ground truth uses.
    """
    _check_language(language)
    attribute = {"color": "colour"}.get(attribute, attribute)
    if attribute not in ("colour", "shape", "size", "position"):
        raise ValueError(f"attribute must be one of colour, shape, size, position; got {attribute!r}")
    values = {"colour": list(COLOURS), "shape": list(SHAPES), "size": [*SIZES, None]}
    if attribute == "size":
        values["size"] = list(SIZES)
    names = list(POSITIONS) if attribute == "position" else list(values[attribute])
    ensembles = []
    for name in names:
        fixed = {**values, attribute: [name]} if attribute != "position" else values
        phrases = [
            _object_phrase(colour, shape, size, language)
            for colour in fixed["colour"]
            for shape in fixed["shape"]
            for size in fixed["size"]
        ]
        if attribute == "position":
            where = POSITIONS[name]
            phrases = [
                f"{where['zh']}有{p}" if language == "zh" else f"{p} {where['en_phrase']}" for p in phrases
            ]
        ensembles.append(phrases)
    return names, ensembles


def _object_phrase(colour: str, shape: str, size: str | None, language: str) -> str:
    """'一个大的红色圆形' / '一个红色的圆形', 'a big red circle' / 'a red circle' (no size for None)."""
    if language == "zh":
        c, s = COLOURS[colour]["zh"], SHAPES[shape]["zh"]
        return f"一个{SIZES[size]['zh']}的{c}{s}" if size else f"一个{c}的{s}"
    words = [size, colour, shape] if size else [colour, shape]
    return " ".join([_a(words[0]), *words])


# -----------------------------------------------------------------------------
# captions


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _zh_join(items: list[str], rng) -> str:
    return (
        items[0]
        if len(items) == 1
        else "、".join(items[:-1]) + _pick(rng, ["和", "以及", "，还有"]) + items[-1]
    )


def _en_join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _zh_np(o: dict, rng, p_size: float, article: bool = True) -> str:
    """'一个大的红色圆形', '一个红色的圆形', '红色的小圆形', ... (size only with probability p_size).

    Chinese may drop the measure word, so "一个" comes only half the time even when `article` is set."""
    c, s, z = COLOURS[o["colour"]]["zh"], SHAPES[o["shape"]]["zh"], SIZES[o["size"]]["zh"]
    de = rng.random() < 0.5
    if rng.random() < p_size:
        text = f"{z}的{c}{s}" if de else f"{c}的{z}{s}"
    else:
        text = f"{c}的{s}" if de else f"{c}{s}"
    return "一个" + text if article and rng.random() < 0.5 else text


def _en_np(o: dict, rng, p_size: float, article: str = "a") -> str:
    """'a big red circle', 'an orange star', 'the little blue cross', ..."""
    words = [o["colour"], o["shape"]]
    if rng.random() < p_size:
        synonyms = SIZES[o["size"]]["en_synonyms"]
        words.insert(0, synonyms[int(rng.integers(len(synonyms)))])
    head = _a(words[0]) if article == "a" else article
    return " ".join([head] + words)


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _reading_order(objects):
    return sorted(objects, key=lambda o: (o["row"], o["col"]))


# Each template is f(objects in a random order, rng, background_style) -> caption, or None when it
# does not apply. Fixed wording differs between templates, so two templates never give the same text.
def _zh_list(objs, rng, bg):
    head = _pick(rng, ["画面中有", "图中有", "图片里有", "图上画着", "图里是", "画面上是"])
    return head + _zh_join([_zh_np(o, rng, 0.3) for o in objs], rng)


def _zh_count(objs, rng, bg):
    noun = _pick(rng, ["物体", "图形"])
    where = _pick(rng, ["图中", "画面里", "这张图片里", ""])
    if len(objs) == 1:
        head = f"{where}只有一个{noun}"
    else:
        head = f"{where}{_pick(rng, ['共有', '一共有'])}{ZH_NUMBERS[len(objs)]}个{noun}"
    return head + "：" + _zh_join([_zh_np(o, rng, 0.3) for o in objs], rng)


def _zh_where_has(objs, rng, bg):
    verb = _pick(rng, ["有", "是"])
    parts = [f"{POSITIONS[o['position']]['zh']}{verb}{_zh_np(o, rng, 0.6)}" for o in _reading_order(objs)]
    return _pick(rng, ["", "图片", "画面"]) + "，".join(parts)


def _zh_at(objs, rng, bg):
    verb = _pick(rng, ["在", "出现在"])
    return "，".join(f"{_zh_np(o, rng, 0.4)}{verb}{POSITIONS[o['position']]['zh']}" for o in objs)


def _zh_background(objs, rng, bg):
    if bg is None:
        return None
    head = _pick(rng, [f"{BACKGROUNDS[bg]['zh']}背景上有", f"在{BACKGROUNDS[bg]['zh']}的背景上画着"])
    return head + _zh_join([_zh_np(o, rng, 0.5) for o in objs], rng)


def _zh_picture(objs, rng, bg):
    head, tail = _pick(rng, [("这是一张有", "的图片"), ("一张包含", "的图片"), ("一幅画着", "的图")])
    return head + _zh_join([_zh_np(o, rng, 0.3) for o in objs], rng) + tail


def _zh_sizes(objs, rng, bg):
    return _zh_join([_zh_np(o, rng, 1.0) for o in objs], rng)


def _zh_focus(objs, rng, bg):
    o = objs[0]  # objs arrive shuffled: one random object
    where = POSITIONS[o["position"]]["zh"]
    if rng.random() < 0.5:
        return f"{where}可以看到{_zh_np(o, rng, 0.5)}"
    return f"在{where}能看到{_zh_np(o, rng, 0.5)}"


def _zh_located(objs, rng, bg):
    return "，".join(
        f"{_zh_np(o, rng, 0.4, article=False)}位于{POSITIONS[o['position']]['zh']}" for o in objs
    )


def _en_list(objs, rng, bg):
    head = _pick(
        rng, ["there is ", "the picture shows ", "this image shows ", "we see ", "the image contains "]
    )
    return head + _en_join([_en_np(o, rng, 0.3) for o in objs])


def _en_count(objs, rng, bg):
    noun = _pick(rng, ["object", "shape"])
    head = f"only one {noun}" if len(objs) == 1 else f"there are {EN_NUMBERS[len(objs)]} {noun}s"
    return head + ": " + _en_join([_en_np(o, rng, 0.3) for o in objs])


def _en_where_has(objs, rng, bg):
    parts = [
        f"{POSITIONS[o['position']]['en_phrase']} there is {_en_np(o, rng, 0.6)}"
        for o in _reading_order(objs)
    ]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", and " + parts[-1]


def _en_at(objs, rng, bg):
    return _en_join([f"{_en_np(o, rng, 0.4)} {POSITIONS[o['position']]['en_phrase']}" for o in objs])


def _en_background(objs, rng, bg):
    if bg is None:
        return None
    return _en_join([_en_np(o, rng, 0.5) for o in objs]) + f" on a {BACKGROUNDS[bg]['en']} background"


def _en_picture(objs, rng, bg):
    head = _pick(rng, ["an image of ", "a picture containing ", "a drawing of "])
    return head + _en_join([_en_np(o, rng, 0.3) for o in objs])


def _en_sizes(objs, rng, bg):
    return _en_join([_en_np(o, rng, 1.0) for o in objs])


def _en_focus(objs, rng, bg):
    o = objs[0]
    where = POSITIONS[o["position"]]["en_phrase"]
    if rng.random() < 0.5:
        return f"{_en_np(o, rng, 0.5)} can be seen {where}"
    return f"you can see {_en_np(o, rng, 0.5)} {where}"


def _en_located(objs, rng, bg):
    return _en_join(
        [f"{_en_np(o, rng, 0.4, article='the')} is {POSITIONS[o['position']]['en_phrase']}" for o in objs]
    )


TEMPLATES = {
    "zh": [
        _zh_list,
        _zh_count,
        _zh_where_has,
        _zh_at,
        _zh_background,
        _zh_picture,
        _zh_sizes,
        _zh_focus,
        _zh_located,
    ],
    "en": [
        _en_list,
        _en_count,
        _en_where_has,
        _en_at,
        _en_background,
        _en_picture,
        _en_sizes,
        _en_focus,
        _en_located,
    ],
}
MAX_CAPTIONS_PER_IMAGE = len(TEMPLATES["zh"])


def describe_objects(
    objects: list[dict],
    language: str = "zh",
    rng=None,
    *,
    background_style: str | None = None,
    n_captions: int | None = None,
) -> list[str]:
    """Distinct true captions of an image holding `objects`, each from a different template.

    `objects` are ground-truth dicts (shape, colour, size, position). Returns `n_captions` captions
    (default: one per applicable template) in random order; a pure function of its inputs and `rng`.
    The background template is used only when `background_style` ("plain"/"gradient") is given.
    """
    _check_language(language)
    if not objects:
        raise ValueError("objects must hold at least one object")
    rng = np.random.default_rng(rng)
    templates = [
        t for t in TEMPLATES[language] if background_style is not None or "background" not in t.__name__
    ]
    n_captions = len(templates) if n_captions is None else n_captions
    if not 1 <= n_captions <= len(templates):
        raise ValueError(f"n_captions must be between 1 and {len(templates)}; got {n_captions}")
    captions = []
    for k in rng.permutation(len(templates)):
        order = [objects[j] for j in rng.permutation(len(objects))]
        text = templates[k](order, rng, background_style)
        if text is not None and text not in captions:
            captions.append(text)
        if len(captions) == n_captions:
            return captions
    raise AssertionError(
        f"only {len(captions)} distinct captions for {objects}"
    )  # templates differ by construction


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_ZH_OBJECT = re.compile(
    f"(?:(大|小)的)?({_alternation(c['zh'] for c in COLOURS.values())})的?(大|小)?"
    f"({_alternation(s['zh'] for s in SHAPES.values())})"
)
_EN_SIZE_WORDS = {w: size for size, v in SIZES.items() for w in v["en_synonyms"]}
_EN_OBJECT = re.compile(
    rf"\b(?:({_alternation(_EN_SIZE_WORDS)}) )?({_alternation(COLOURS)}) ({_alternation(SHAPES)})\b"
)
_ZH_COLOUR = re.compile(_alternation(c["zh"] for c in COLOURS.values()))
_ZH_SHAPE = re.compile(_alternation(c["zh"] for c in SHAPES.values()))
_EN_COLOUR = re.compile(rf"\b({_alternation(COLOURS)})\b")
_EN_SHAPE = re.compile(rf"\b({_alternation(SHAPES)})(?:e?s)?\b")
_ZH_POSITION = re.compile(_alternation(p["zh"] for p in POSITIONS.values()))
_EN_POSITION = re.compile(rf"\b(?:{_alternation(p['en_phrase'] for p in POSITIONS.values())})\b")
_ZH_COUNT = re.compile(r"([一两三])个(?:物体|图形)")
_EN_COUNT = re.compile(r"\b(one|two|three) (?:objects?|shapes?)\b")
_ZH_BACKGROUND = re.compile(r"(纯色|渐变)的?背景")
_EN_BACKGROUND = re.compile(r"\b(plain|gradient) background\b")


def caption_attributes(text: str, language: str = "zh") -> dict:
    """What a caption claims, as canonical ids.

    Returns {"objects": [{colour, shape, size or None}] (colour-shape phrases in order), "colours",
    "shapes" (sets: every colour/shape word, also outside a phrase, e.g. "一个红色的物体"), "sizes" (set,
    from object phrases), "positions" (set), "count" (int or None), "background" ("plain"/"gradient"/None)}.
    Works on any text, e.g. a model's generated caption; words outside the vocabulary are ignored.
    """
    _check_language(language)
    if language == "zh":
        text = re.sub(r"\s+", "", text)  # character-tokenised Chinese ("红 色 圆 形") still parses
        lookup = {
            v["zh"]: k for table in (COLOURS, SHAPES, SIZES, POSITIONS, BACKGROUNDS) for k, v in table.items()
        }
        objects = [
            {"colour": lookup[c], "shape": lookup[s], "size": lookup[z1 or z2] if (z1 or z2) else None}
            for z1, c, z2, s in _ZH_OBJECT.findall(text)
        ]
        colours = {lookup[c] for c in _ZH_COLOUR.findall(text)}
        shapes = {lookup[s] for s in _ZH_SHAPE.findall(text)}
        positions = {lookup[p] for p in _ZH_POSITION.findall(text)}
        counts = [{v: k for k, v in ZH_NUMBERS.items()}[n] for n in _ZH_COUNT.findall(text)]
        background = [lookup[b] for b in _ZH_BACKGROUND.findall(text)]
    else:
        text = " ".join(text.lower().split())
        objects = [
            {"colour": c, "shape": s, "size": _EN_SIZE_WORDS[z] if z else None}
            for z, c, s in _EN_OBJECT.findall(text)
        ]
        colours, shapes = set(_EN_COLOUR.findall(text)), set(_EN_SHAPE.findall(text))
        by_phrase = {p["en_phrase"]: k for k, p in POSITIONS.items()}
        positions = {by_phrase[p] for p in _EN_POSITION.findall(text)}
        counts = [{v: k for k, v in EN_NUMBERS.items()}[n] for n in _EN_COUNT.findall(text)]
        background = _EN_BACKGROUND.findall(text)
    return {
        "objects": objects,
        "colours": colours,
        "shapes": shapes,
        "sizes": {o["size"] for o in objects if o["size"]},
        "positions": positions,
        "count": counts[0] if counts else None,
        "background": background[0] if background else None,
    }


# -----------------------------------------------------------------------------
# images


def _sample_scene(rng, image_size: int) -> dict:
    """Objects (with geometry in output-pixel units) and background for one image."""
    n = int(rng.choice([1, 2, 3], p=OBJECT_COUNT_P))
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    cell = image_size / 3
    objects, used = [], set()
    for c in cells:
        while True:  # no two objects with the same colour and shape: captions could not tell them apart
            shape, colour = _pick(rng, list(SHAPES)), _pick(rng, list(COLOURS))
            if (shape, colour) not in used:
                used.add((shape, colour))
                break
        size = "big" if rng.random() < 0.5 else "small"
        row, col = divmod(c, 3)
        radius = cell * RADIUS[size] * (1 + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER))
        # Stars and triangles reach 1.1 radius; keep the whole shape inside its own cell.
        slack = max(cell / 2 - 1.1 * radius, 0.0) * 0.8
        cx, cy = (
            (col + 0.5) * cell + rng.uniform(-slack, slack),
            (row + 0.5) * cell + rng.uniform(-slack, slack),
        )
        rgb = np.clip(
            np.array(COLOURS[colour]["rgb"]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255
        )
        objects.append(
            {
                "shape": shape,
                "colour": colour,
                "size": size,
                "row": row,
                "col": col,
                "position": POSITION_AT[(row, col)],
                "centre_xy": [round(float(cx), 2), round(float(cy), 2)],
                "radius_px": round(float(radius), 2),
                "rotation": round(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), 2),
                "rgb": [int(v) for v in rgb],
            }
        )
    style = "plain" if rng.random() < 0.5 else "gradient"
    colours = [_background_colour(rng) for _ in range(1 if style == "plain" else 2)]
    while style == "gradient" and np.linalg.norm(np.subtract(*colours)) < 40:  # a gradient must be visible
        colours[1] = _background_colour(rng)
    return {
        "objects": objects,
        "background_style": style,
        "background_colours": colours,
        "background_angle": float(rng.uniform(0, 2 * math.pi)),
    }


def _background_colour(rng) -> list[int]:
    """A muted colour (low saturation, mid value) far from every object colour."""
    while True:
        rgb = (
            np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.38, 0.72))) * 255
        )
        if min(np.linalg.norm(rgb - c["rgb"]) for c in COLOURS.values()) >= BACKGROUND_MIN_DISTANCE:
            return [int(round(v)) for v in rgb]


def _shape_points(shape: str, cx: float, cy: float, r: float, degrees: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(x * 0.85, y * 0.85) for x, y in [(-1, -1), (1, -1), (1, 1), (-1, 1)]]
    elif shape == "triangle":  # equilateral, centroid at the centre, pointing up
        pts = [(1.1 * math.cos(a), 1.1 * math.sin(a)) for a in np.radians([-90, 30, 150])]
    elif shape == "star":
        pts = [
            ((1.1 if k % 2 == 0 else 0.45) * math.cos(a), (1.1 if k % 2 == 0 else 0.45) * math.sin(a))
            for k, a in enumerate(np.radians(np.arange(10) * 36 - 90))
        ]
    elif shape == "cross":
        w = 0.33
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in pts]


def _draw(scene: dict, image_size: int, rng) -> Image.Image:
    big = image_size * SUPERSAMPLE
    c0 = np.array(scene["background_colours"][0], dtype=np.float32)
    if scene["background_style"] == "plain":
        canvas = Image.new("RGB", (big, big), tuple(int(v) for v in c0))
    else:
        c1 = np.array(scene["background_colours"][1], dtype=np.float32)
        xy = (np.arange(big, dtype=np.float32) + 0.5) / big - 0.5
        a = scene["background_angle"]
        t = xy[None, :] * math.cos(a) + xy[:, None] * math.sin(a)  # projection on the gradient direction
        t = (t - t.min()) / (t.max() - t.min())
        canvas = Image.fromarray((c0 + t[..., None] * (c1 - c0)).round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for o in scene["objects"]:
        cx, cy, r = (v * SUPERSAMPLE for v in (*o["centre_xy"], o["radius_px"]))
        fill = tuple(o["rgb"])
        if o["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_shape_points(o["shape"], cx, cy, r, o["rotation"]), fill=fill)
    image = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, NOISE_STD, (image_size, image_size, 3))
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), "RGB")


def _make_image(index: int, seed: int, image_size: int, language: str, captions_per_image: int):
    """Everything about image `index`: JPEG bytes, ground-truth record, captions. Depends only on its args."""
    rng = np.random.default_rng([seed, index])
    scene = _sample_scene(rng, image_size)
    image = _draw(scene, image_size, rng)
    # Captions get their own stream: the same seed then draws the same scenes whatever the language or
    # captions_per_image, and the same scenes and captions at every image size.
    captions = describe_objects(
        scene["objects"],
        language,
        np.random.default_rng([seed, index, 1]),
        background_style=scene["background_style"],
        n_captions=captions_per_image,
    )
    buf = io.BytesIO()
    # 4:4:4 chroma: with the default 4:2:0 a small object's colour bleeds into the background at 64 px.
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    background = np.mean(scene["background_colours"], axis=0).round().astype(int).tolist()
    record = {
        "objects": scene["objects"],
        "background": background,
        "background_style": scene["background_style"],
    }
    return buf.getvalue(), record, captions


def _write_range(indices: range, folder: str, params: dict) -> list[tuple[dict, list[str]]]:
    """Render and write the images `indices` into `folder`/images; return (record, captions) per image."""
    out = []
    for i in indices:
        jpeg, record, captions = _make_image(
            i, params["seed"], params["image_size"], params["language"], params["captions_per_image"]
        )
        rel = f"images/{i:06d}.jpg"
        (Path(folder) / rel).write_bytes(jpeg)
        out.append(({"image_path": rel, **record}, captions))
    return out


# -----------------------------------------------------------------------------
# the data set on disk


def _check_language(language):
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}; got {language!r}")


def _check_params(n_images, image_size, language, seed, captions_per_image) -> dict:
    check_int("n_images", n_images, 1)
    check_int("image_size", image_size, MIN_IMAGE_SIZE)
    _check_language(language)
    check_int("seed", seed, 0)
    if not is_int(captions_per_image) or not 4 <= captions_per_image <= MAX_CAPTIONS_PER_IMAGE:
        raise ValueError(
            f"captions_per_image must be an integer between 4 and {MAX_CAPTIONS_PER_IMAGE}; "
            f"got {captions_per_image!r}"
        )
    return {
        "n_images": int(n_images),
        "image_size": int(image_size),
        "language": language,
        "seed": int(seed),
        "captions_per_image": int(captions_per_image),
    }


def _read_captions(out_dir: Path) -> pd.DataFrame:
    df = pd.read_csv(out_dir / "captions.csv", dtype=str, keep_default_na=False, encoding="utf-8")
    df["image_path"] = [str(out_dir / p) for p in df["image_path"]]
    return df[["image_path", "text"]]


def _read_meta(out_dir: Path) -> dict | None:
    """meta.json of a demo set written by this module, else None."""
    try:
        meta = read_json(out_dir / "meta.json")
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") in GENERATOR_IDS else None


def _existing_matches(out_dir: Path, params: dict) -> bool:
    meta = _read_meta(out_dir)
    return (
        meta is not None
        and meta.get("format_version") == FORMAT_VERSION
        and meta.get("params") == params
        and (out_dir / "captions.csv").is_file()
        and (out_dir / "objects.jsonl").is_file()
    )


def demo_dir(
    data_dir, language: str = "zh", n_images: int = 3000, image_size: int = 64, seed: int = 0
) -> Path:
    """Where the demo set with these parameters lives under `data_dir` (one folder per parameter set)."""
    return Path(data_dir) / "demo" / f"{language}-n{n_images}-{image_size}px-seed{seed}"


def generate_demo_dataset(
    out_dir,
    n_images: int = 3000,
    image_size: int = 64,
    language: str = "zh",
    seed: int = 0,
    captions_per_image: int = 5,
    progress: bool = True,
) -> pd.DataFrame:
    """Write the synthetic data set to `out_dir` and return its captions (image_path absolute, text).

    Layout: images/000000.jpg..., captions.csv (text, image_path relative), objects.jsonl (ground truth),
    meta.json (parameters). Deterministic (same parameters -> byte-identical files), idempotent (returns
    the existing table when meta.json records the same parameters) and atomic (built in a temp folder
    beside `out_dir`, then swapped in). `out_dir` belongs to the generator: a previous demo set there
    with other parameters is replaced; a non-empty folder that is not a demo set is refused.
    """
    params = _check_params(n_images, image_size, language, seed, captions_per_image)
    out_dir = Path(out_dir).resolve()
    if _existing_matches(out_dir, params):
        return _read_captions(out_dir)
    if out_dir.exists() and _read_meta(out_dir) is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir}: exists and is not a demo data set (no meta.json from {GENERATOR}); "
            "refusing to replace it"
        )

    with atomic_path(out_dir, sweep_stale=True) as tmp:
        (tmp / "images").mkdir(parents=True)
        chunks = [range(s, min(s + CHUNK, n_images)) for s in range(0, n_images, CHUNK)]
        workers = min(os.cpu_count() or 1, len(chunks)) if n_images >= PARALLEL_MIN_IMAGES else 1
        results = []
        with process_pool(workers) as pool:
            # In order, so the output does not depend on timing.
            for chunk_results in map_chunks(
                _write_range, chunks, str(tmp), params, pool=pool, desc="demo images", progress=progress
            ):
                results.extend(chunk_results)

        rows = [
            {"text": text, "image_path": record["image_path"]}
            for record, captions in results
            for text in captions
        ]
        write_table(pd.DataFrame(rows, columns=["text", "image_path"]), tmp / "captions.csv")
        write_text(
            tmp / "objects.jsonl",
            "".join(json.dumps(record, ensure_ascii=False) + "\n" for record, _ in results),
        )
        write_json(
            tmp / "meta.json",
            {
                "format_version": FORMAT_VERSION,
                "generator": GENERATOR,
                "params": params,
                "n_captions": len(rows),
                "jpeg_quality": JPEG_QUALITY,
                "supersample": SUPERSAMPLE,
                "noise_std": NOISE_STD,
                "vocabulary": {"shapes": SHAPES, "colours": COLOURS, "sizes": SIZES, "positions": POSITIONS},
            },
        )
    return _read_captions(out_dir)


def load_ground_truth(out_dir) -> pd.DataFrame:
    """One row per image: image_path (absolute), n_objects, objects (list of dicts), background,
    background_style, and the main object's colour/shape/size/position (the first big object in
    reading order, else the first object)."""
    out_dir = Path(out_dir).resolve()
    path = out_dir / "objects.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found; run generate_demo_dataset({str(out_dir)!r}) first")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            objects = record["objects"]
            main = next((o for o in objects if o["size"] == "big"), objects[0])
            rows.append(
                {
                    "image_path": str(out_dir / record["image_path"]),
                    "n_objects": len(objects),
                    "objects": objects,
                    "background": record["background"],
                    "background_style": record.get("background_style"),
                    "colour": main["colour"],
                    "shape": main["shape"],
                    "size": main["size"],
                    "position": main["position"],
                }
            )
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise DataError(f"{path}, line {line_no}: not a ground-truth record ({e!r})") from None
    return pd.DataFrame(rows)
