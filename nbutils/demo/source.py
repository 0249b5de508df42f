"""The demo set as a download source: processdata_01's `source = "demo"`, optionally with a query.

    source = "demo"                                                  # every default below
    source = "demo?language=en&n_images=300&image_size=64&data_dir=/tmp/x"

`DemoSource.parse(source)` reads the string (the query's keys are DemoSource's fields). `serve_demo` generates
that set (`nbutils.demo.scenes`), builds its faulty web site (`nbutils.demo.website`), serves it from 127.0.0.1
and writes the url manifest that processdata_01 then downloads like any other:

    with serve_demo("demo?n_images=300", "outputs/lab/processdata_01", seed=0, max_bytes=2_000_000) as demo:
        manifest = read_manifest(demo.manifest_path)
        ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from ..config import field_types, param
from ..errors import check_int
from ..stages import DataOrigin
from . import scenes, website
from .fault_server import FaultServer

DEMO = "demo"
EXAMPLE = "demo?language=en&n_images=300&image_size=64&data_dir=../data"
MANIFEST_FILE = "manifest.csv"  # written into the folder given to serve_demo


def is_demo(source: str) -> bool:
    """Whether processdata_01's `source` names the demo set: "demo" or "demo?key=value&..."."""
    return source == DEMO or source.startswith(DEMO + "?")


@dataclass(frozen=True)
class DemoSource:
    """Which demo set to generate and serve: the keys of `source = "demo?key=value&..."`."""

    language: str = param("zh", "caption language: zh or en")
    n_images: int = param(3000, "images to generate and serve")
    image_size: int = param(64, "side of the generated images, in pixels")
    data_dir: str = param("../data", "the generated set lives in <data_dir>/demo/")

    def __post_init__(self):
        if self.language not in scenes.LANGUAGES:
            raise ValueError(
                f"language must be one of {', '.join(scenes.LANGUAGES)}; got {self.language!r}"
                + _did_you_mean(str(self.language), scenes.LANGUAGES)
            )
        check_int("n_images", self.n_images, 1)
        check_int("image_size", self.image_size, scenes.MIN_IMAGE_SIZE)
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise ValueError(f"data_dir must name a folder; got {self.data_dir!r}")

    @classmethod
    def parse(cls, source: str, **defaults) -> DemoSource:
        """The DemoSource that `source` describes; ValueError naming the key when a key or value is wrong.

        A key the query leaves out takes its value from `defaults`, else the field's default: processdata_03
        passes its own data_dir and image_size, so that a bare "demo" follows that notebook's parameters.
        """
        if not isinstance(source, str) or not is_demo(source):
            raise ValueError(f"source={source!r} is not the demo set; {_usage()}")
        query = source.partition("?")[2]
        types = field_types(cls)
        values = {}
        for item in query.split("&") if query else []:
            key, has_value, text = item.partition("=")
            key, text = unquote(key), unquote(text)
            if key not in types:
                raise ValueError(
                    f"source={source!r}: unknown key {key!r}{_did_you_mean(key, types)}; {_usage()}"
                )
            if not has_value:
                raise ValueError(f"source={source!r}: {key} has no value (write {key}=...); {_usage()}")
            if key in values:
                raise ValueError(f"source={source!r}: {key} is given twice; {_usage()}")
            try:
                values[key] = types[key](text)
            except ValueError:
                raise ValueError(
                    f"source={source!r}: {key}={text!r} is not {types[key].__name__}; {_usage()}"
                ) from None
        try:
            return cls(**{**defaults, **values})
        except ValueError as e:
            raise ValueError(f"source={source!r}: {e}; {_usage()}") from None

    def spec(self) -> str:
        """The `source` string of this DemoSource: "demo", with a query of the keys that differ from their defaults."""
        changed = [f for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
        query = "&".join(f"{f.name}={quote(str(getattr(self, f.name)))}" for f in changed)
        return f"{DEMO}?{query}" if query else DEMO

    def folder(self, seed: int) -> Path:
        """Where the set generated with `seed` lives (`nbutils.demo.scenes.demo_dir`)."""
        return scenes.demo_dir(self.data_dir, self.language, self.n_images, self.image_size, seed)


@dataclass
class ServedDemo:
    """The demo set being served: its site, the running server, the url manifest, the captions' origin."""

    site: website.DemoSite
    server: FaultServer
    manifest_path: Path
    origin: DataOrigin

    def describe(self) -> str:
        faulty = (self.site.expected["fault"] != "ok").mean()
        return f"serving {len(self.site.expected):,} urls on {self.server.base_url} ({faulty:.0%} of them faulty)"

    def __enter__(self) -> ServedDemo:
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()


def serve_demo(demo: DemoSource | str, out_dir, *, seed: int, max_bytes: int) -> ServedDemo:
    """Generate the demo set `demo` describes, serve it with faults, write its url manifest to `out_dir`.

    `seed` picks the images and which urls misbehave. `max_bytes` is the downloader's size limit: the site's
    oversized body exceeds it. Stop `.server` when the downloads are done (leaving a `with` block does).
    """
    demo = DemoSource.parse(demo) if isinstance(demo, str) else demo
    folder = demo.folder(seed)
    scenes.generate_demo_dataset(
        folder, n_images=demo.n_images, image_size=demo.image_size, language=demo.language, seed=seed
    )
    site = website.build_demo_site(folder, seed=seed, max_bytes=max_bytes)
    server = website.serve(site).start()
    try:
        manifest_path = website.write_manifest(site, server.base_url, Path(out_dir) / MANIFEST_FILE)
    except BaseException:
        server.stop()
        raise
    origin = DataOrigin(demo.language, str((folder / "objects.jsonl").resolve()))
    return ServedDemo(site, server, manifest_path, origin)


def _usage() -> str:
    keys = ", ".join(f.name for f in dataclasses.fields(DemoSource))
    return f'write "demo" or "demo?key=value&..." with the keys {keys}, e.g. {EXAMPLE!r}'


def _did_you_mean(name: str, candidates) -> str:
    # Imported here, on errors only: importing the runner package takes seconds in a notebook kernel.
    from ..runner.profiles import did_you_mean

    return did_you_mean(name, candidates)
