"""Load the image processor a model expects, always with the PIL backend.

transformers 5 picks a torchvision backend when torchvision is installed (typical on GPU
machines) and a PIL one otherwise; the two resize differently. The image cache reproduces the
PIL path bit for bit, so training, evaluation and the cache all go through `backend="pil"`.
"""

from __future__ import annotations

from .model_names import resolve_model_name

PRESETS = ("vit", "clip")


def load_image_processor(name_or_path: str, image_size: int = 0, parameter: str = "image_processor"):
    """Return an image processor.

    `"vit"`: ViT-style (squash-resize to image_size², bilinear, mean = std = 0.5), for models built
    from small configs. `"clip"`: CLIP-style (shorter side to image_size, bicubic, centre crop,
    CLIP mean/std). Anything else is a hub id or a local folder loaded with `from_pretrained`;
    then `image_size` must be 0 or equal to the checkpoint's own size. Errors name `parameter`.
    """
    from transformers import AutoImageProcessor, CLIPImageProcessorPil, ViTImageProcessorPil

    if name_or_path in PRESETS:
        if not image_size or image_size < 8:
            raise ValueError(f"image_size must be >= 8 with {parameter}={name_or_path!r}, got {image_size}")
        if name_or_path == "vit":
            return ViTImageProcessorPil(size={"height": image_size, "width": image_size})
        return CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    name = resolve_model_name(name_or_path, parameter)
    try:
        processor = AutoImageProcessor.from_pretrained(name, backend="pil")
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{parameter}={name_or_path!r}: could not load an image processor from {name} "
            f"({type(e).__name__}: {e}). Use 'vit', 'clip', a checkpoint folder with "
            f"preprocessor_config.json, or a hub id."
        ) from e
    size = processor_output_size(processor)
    if image_size and image_size != size:
        raise ValueError(
            f"image_size={image_size} does not match the {size}px images that "
            f"{parameter}={name_or_path!r} produces; set image_size = 0 to use the checkpoint's size"
        )
    return processor


def processor_output_size(processor) -> int:
    """Side length (pixels) of the pixel_values a processor produces (the crop if it crops)."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    return int(get("height") or get("shortest_edge"))
