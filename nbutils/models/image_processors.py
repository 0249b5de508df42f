"""Load the image processor a model expects, always with the PIL backend.

transformers 5 picks a torchvision backend when torchvision is installed (typical on GPU
machines) and a PIL one otherwise; the two resize differently. The image cache reproduces the
PIL path bit for bit, so training, evaluation and the cache all go through `backend="pil"`.
"""

from __future__ import annotations

import os

PRESETS = ("vit", "clip")


def load_image_processor(name_or_path: str, image_size: int = 0):
    """Return an image processor.

    `"vit"`: ViT-style (squash-resize to image_size², bilinear, mean = std = 0.5), for models built
    from small configs. `"clip"`: CLIP-style (shorter side to image_size, bicubic, centre crop,
    CLIP mean/std). Anything else is a hub id or a local folder loaded with `from_pretrained`;
    then `image_size` must be 0 or equal to the checkpoint's own size.
    """
    from transformers import AutoImageProcessor, CLIPImageProcessorPil, ViTImageProcessorPil

    if name_or_path in PRESETS:
        if not image_size or image_size < 8:
            raise ValueError(
                f"image_size must be >= 8 with image_processor={name_or_path!r}, got {image_size}"
            )
        if name_or_path == "vit":
            return ViTImageProcessorPil(size={"height": image_size, "width": image_size})
        return CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, backend="pil")
    except (OSError, ValueError) as e:
        where = "local folder" if os.path.isdir(name_or_path) else "hub id or path"
        raise ValueError(
            f"image_processor={name_or_path!r}: could not load an image processor from this "
            f"{where} ({type(e).__name__}: {e}). Use 'vit', 'clip', a checkpoint folder, "
            f"or a hub id reachable from this machine."
        ) from e
    size = processor_output_size(processor)
    if image_size and image_size != size:
        raise ValueError(
            f"image_size={image_size} does not match the {size}px images that "
            f"image_processor={name_or_path!r} produces; set image_size = 0 to use the checkpoint's size"
        )
    return processor


def processor_output_size(processor) -> int:
    """Side length (pixels) of the pixel_values a processor produces (the crop if it crops)."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    return int(get("height") or get("shortest_edge"))
