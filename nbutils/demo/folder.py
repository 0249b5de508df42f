"""An example of "your own data": a folder of images and a caption CSV, written offline from the demo generator.

    python -m nbutils.demo.folder data/my_photos            # 300 images, Chinese captions
    python -m nbutils.demo.folder data/my_photos --language en --n-images 1000

Layout, the one processdata_02's `source` takes (any folder of yours laid out like it works the same way):

    data/my_photos/captions.csv      image_path,text (one row per caption; paths relative to the CSV)
    data/my_photos/images/*.jpg      the images (generated scenes of coloured shapes)

Like real folders it holds a few files that are not usable as they are: a truncated JPEG, a text file named .jpg,
a copy of another image, and a greyscale PNG with an alpha channel. processdata_02 rejects, merges or normalises
them and says so. The generator's ground truth (objects.jsonl) is not copied: real data has none.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

from ..errors import DataError
from ..files import atomic_path, write_table
from .scenes import generate_demo_dataset

CAPTIONS_FILE = "captions.csv"


def write_example_folder(
    out_dir, n_images: int = 300, language: str = "zh", image_size: int = 64, seed: int = 0
) -> Path:
    """Write the example folder (module docstring) to `out_dir`; return the path of its captions.csv.

    An existing `out_dir` that is not empty is refused, so nothing of the user's is overwritten.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: exists and is not empty; choose a new folder for the example")
    if n_images < 10:
        raise DataError(f"n_images={n_images}: the example needs at least 10 images")
    with atomic_path(out_dir, sweep_stale=True) as folder:  # an interrupted run leaves no half-written folder
        generated = folder / ".generated"
        captions = generate_demo_dataset(generated, n_images, image_size, language, seed, progress=False)
        (generated / "images").rename(folder / "images")
        shutil.rmtree(generated)  # objects.jsonl and meta.json: the generator's, not part of a user's folder
        images = folder / "images"
        captions["image_path"] = ["images/" + Path(p).name for p in captions["image_path"]]
        first, second, third = sorted(images.iterdir())[:3]
        # the untidy files a real folder has, each with a caption so that processdata_02 checks it
        (images / "truncated.jpg").write_bytes(first.read_bytes()[: first.stat().st_size // 2])
        (images / "notes.jpg").write_text("not an image\n", encoding="utf-8")
        shutil.copyfile(second, images / f"copy_of_{second.name}")
        with Image.open(third) as image:
            image.convert("LA").save(images / f"{third.stem}_grey.png")
        untidy = ["truncated.jpg", "notes.jpg", f"copy_of_{second.name}", f"{third.stem}_grey.png"]
        text = {"zh": "一张图片", "en": "a picture"}[language]
        extra = pd.DataFrame({"image_path": [f"images/{name}" for name in untidy], "text": text})
        write_table(
            pd.concat([captions, extra], ignore_index=True)[["image_path", "text"]], folder / CAPTIONS_FILE
        )
    return out_dir / CAPTIONS_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nbutils.demo.folder",
        description="Write an example image folder with a caption CSV (image_path,text), offline.",
    )
    parser.add_argument("out_dir", help="a new or empty folder, e.g. data/my_photos")
    parser.add_argument("--n-images", type=int, default=300, help="generated images (default: 300)")
    parser.add_argument(
        "--language", choices=("zh", "en"), default="zh", help="caption language (default: zh)"
    )
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        path = write_example_folder(args.out_dir, args.n_images, args.language, args.image_size, args.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {Path(args.out_dir) / 'images'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
