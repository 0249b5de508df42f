"""Benchmark: training and captioning throughput of a small captioner, original data path vs the image cache.

    python -m benchmarks.bench_captioning [--n 256] [--size 224] [--batch-size 32] [--workers 0] [--repeats 3]

1. Training: samples/s of the same small ViT -> GPT-2 captioner (`build_demo_encoder_decoder`, patch 16, hidden 128,
   1 encoder + 1 decoder layer) over one epoch of --n samples (n / batch-size AdamW steps, forward + backward
   + step), fed (a) the original way: Dataset items opened with PIL + convert("RGB"), `ViTImageProcessorPil`
   per image in the collator; (b) this project's way: image cache -> `ImageTextDataset(sampling="caption")`
   uint8 items -> `CaptionCollator` -> `normalize_pixel_values` in the training step. Same start weights,
   same batches, same DataLoader workers; the loaders are also timed alone.
2. Captioning: images/s of (a) the original `predict_step` (per image: PIL + processor, then
   `model.generate(pixel_values, num_beams=4, max_length=16)` one image at a time, `batch_decode`) vs
   (b) `generate_captions(..., decoding="original")` on normalised uint8 batches from the cache. The
   captions must be identical (checked; see benchmarks/README.md for the controls).

Torch runs on --threads (default 1) threads in both paths. Results: a table on stdout and
benchmarks/results/captioning.json. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from benchmarks.bench_image_cache import machine_info, make_jpegs
from nbutils.data.cache import ImageGeometry, build_image_cache, processor_mean_std
from nbutils.data.datasets import CaptionCollator, ImageTextDataset, normalize_pixel_values
from nbutils.files import write_json
from nbutils.models.decoding import clean_caption, generate_captions
from nbutils.models.encoder_decoder import build_demo_encoder_decoder
from nbutils.models.tokenizer import caption_special_ids, train_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "captioning.json"
TARGET_TRAIN = 5.0
TARGET_CAPTION = 3.0
MODEL = {  # small enough that data loading matters on CPU; 224 px / patch 16 = 196 patches
    "patch_size": 16,
    "hidden_size": 128,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "num_heads": 4,
    "intermediate_size": 256,
    "max_length": 32,
}
COLOURS = ["红色", "蓝色", "绿色", "黄色", "紫色", "白色"]
SHAPES = ["圆形", "方块", "三角形", "星形"]
PLACES = ["左边", "右边", "中间", "上面", "下面"]


def make_captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        f"一个{COLOURS[rng.integers(len(COLOURS))]}的{SHAPES[rng.integers(len(SHAPES))]}在{PLACES[rng.integers(len(PLACES))]}"
        for _ in range(n)
    ]


# ----------------------------------------------------------------------------- (a) the original data path


class OriginalDataset(torch.utils.data.Dataset):
    """The original notebook's Dataset: each item opens its JPEG with PIL and converts it to RGB."""

    def __init__(self, paths, texts):
        self.paths, self.texts = list(paths), list(texts)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return {"image": Image.open(self.paths[i]).convert("RGB"), "text": self.texts[i], "image_index": i}


class OriginalCollator:
    """The original collator: `ViTImageProcessor` per image (float32 pixel_values), then the captions.

    The captions go through the project's `CaptionCollator`, so (a) and (b) give the model the same
    decoder inputs and labels; only the image path differs.
    """

    def __init__(self, processor, caption_collator):
        self.processor, self.caption_collator = processor, caption_collator

    def __call__(self, items):
        processed = [
            {
                "pixel_values": self.processor(item["image"], return_tensors="pt").pixel_values[0],
                "text": item["text"],
                "image_index": item["image_index"],
            }
            for item in items
        ]
        return self.caption_collator(processed)


# ----------------------------------------------------------------------------- timing helpers


def train_epoch(model, initial_state, loader, prepare, seed: int = 0) -> tuple[float, float, list[float]]:
    """One epoch of AdamW steps from `initial_state`: (total seconds, seconds waiting on the loader, losses)."""
    model.load_state_dict(initial_state)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(seed)  # same dropout masks in both paths
    losses, waiting = [], 0.0
    start = time.perf_counter()
    batches = iter(loader)
    while True:
        before = time.perf_counter()
        batch = next(batches, None)
        waiting += time.perf_counter() - before
        if batch is None:
            break
        out = model(
            pixel_values=prepare(batch["pixel_values"]),
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
            labels=batch["labels"],
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    return time.perf_counter() - start, waiting, losses


def timed_best(repeats: int, fn):
    """Best of `repeats` calls of fn() -> (seconds, ...): the whole tuple of the fastest call."""
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda run: run[0])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=256, help="number of 640x480 JPEGs (one caption each)")
    parser.add_argument("--size", type=int, default=224, help="image size of the model and processor")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers, both paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both paths")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    processor = ViTImageProcessorPil(size={"height": args.size, "width": args.size})
    geometry = ImageGeometry.from_processor(processor)
    mean, std = processor_mean_std(processor)
    texts = make_captions(args.n)
    tokenizer = train_tokenizer(texts)
    ids = caption_special_ids(tokenizer)
    torch.manual_seed(0)
    bundle = build_demo_encoder_decoder(tokenizer, image_size=args.size, image_processor=processor, **MODEL)
    model = bundle.model
    n_params = sum(p.numel() for p in model.parameters())
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    caption_collator = CaptionCollator(tokenizer, ids["start"], ids["end"], ids["pad"], max_length=32)
    loader_kwargs = {"batch_size": args.batch_size, "shuffle": False, "num_workers": args.workers}

    with tempfile.TemporaryDirectory(prefix="bench_captioning_") as tmp:
        tmp = Path(tmp)
        paths = make_jpegs(tmp / "jpeg", args.n)
        mean_jpeg_kb = float(np.mean([os.path.getsize(p) for p in paths]) / 1024)
        start = time.perf_counter()
        cache = build_image_cache(paths, tmp / "cache", geometry, progress=False)
        build_s = time.perf_counter() - start

        table = pd.DataFrame({"image_path": paths, "text": texts})
        dataset = ImageTextDataset(cache, table, sampling="caption")
        # items in table order; sorted paths keep image i at cache row i, so both paths see the same batches
        assert dataset.image_paths == paths and list(dataset.rows) == list(range(args.n))
        loader_a = torch.utils.data.DataLoader(
            OriginalDataset(paths, texts),
            collate_fn=OriginalCollator(processor, caption_collator),
            **loader_kwargs,
        )
        loader_b = torch.utils.data.DataLoader(dataset, collate_fn=caption_collator, **loader_kwargs)

        # --- 1. training
        def loader_only(loader):
            def run():
                start = time.perf_counter()
                for batch in loader:
                    assert batch["pixel_values"].shape[1:] == (3, args.size, args.size)
                return (time.perf_counter() - start,)

            return run

        loader_a_s = timed_best(args.repeats, loader_only(loader_a))[0]
        loader_b_s = timed_best(args.repeats, loader_only(loader_b))[0]
        train_a_s, wait_a_s, losses_a = timed_best(
            args.repeats, lambda: train_epoch(model, initial_state, loader_a, lambda pv: pv)
        )
        train_b_s, wait_b_s, losses_b = timed_best(
            args.repeats,
            lambda: train_epoch(
                model, initial_state, loader_b, lambda pv: normalize_pixel_values(pv, mean, std)
            ),
        )
        loss_diff = float(np.max(np.abs(np.array(losses_a) - np.array(losses_b))))
        assert loss_diff < 1e-3, f"the two data paths train differently: max loss difference {loss_diff}"

        # --- 2. captioning, with the weights after one epoch of (b) (random weights give near-uniform
        # logits, i.e. beam ties everywhere). Original predict_step: one image at a time.
        model.eval()
        batches = [np.arange(i, min(i + args.batch_size, args.n)) for i in range(0, args.n, args.batch_size)]

        def original_predict(pixels_for=None):
            def run():
                captions = []
                start = time.perf_counter()
                with torch.no_grad():
                    for i, path in enumerate(paths):
                        if pixels_for is None:
                            image = Image.open(path).convert("RGB")
                            pixel_values = processor(image, return_tensors="pt").pixel_values
                        else:
                            pixel_values = pixels_for(i)
                        output = model.generate(pixel_values, num_beams=4, max_length=16)
                        captions += tokenizer.batch_decode(output, skip_special_tokens=True)
                return time.perf_counter() - start, captions

            return run

        def batched_predict(decoding="original"):
            def run():
                captions = []
                start = time.perf_counter()
                for rows in batches:
                    images = torch.from_numpy(cache.uint8(rows)).permute(0, 3, 1, 2)
                    pixel_values = normalize_pixel_values(images, mean, std)
                    results = generate_captions(model, tokenizer, pixel_values, decoding=decoding)
                    captions += [candidates[0]["caption"] for candidates in results]
                return time.perf_counter() - start, captions

            return run

        caption_a_s, raw_a = timed_best(args.repeats, original_predict())
        caption_b_s, captions_b = timed_best(args.repeats, batched_predict())
        captions_a = [clean_caption(c) for c in raw_a]  # batch_decode puts spaces between CJK characters
        differ = [i for i, (x, y) in enumerate(zip(captions_a, captions_b)) if x != y]
        # Controls (untimed), to tell why any differ: (a) fed the cache's normalised pixels, one image at a time
        cache_pixels = lambda i: normalize_pixel_values(  # noqa: E731
            torch.from_numpy(cache.uint8([i])).permute(0, 3, 1, 2), mean, std
        )
        control = [clean_caption(c) for c in original_predict(cache_pixels)()[1]]
        differ_control = [i for i, (x, y) in enumerate(zip(control, captions_b)) if x != y]
        pixel_diff = max(
            float(
                (
                    processor(Image.open(paths[i]).convert("RGB"), return_tensors="pt").pixel_values
                    - cache_pixels(i)
                )
                .abs()
                .max()
            )
            for i in range(args.n)
        )
        assert not differ, (
            f"{len(differ)} of {args.n} captions differ between (a) and (b) (e.g. image {differ[0]}: "
            f"{captions_a[differ[0]]!r} vs {captions_b[differ[0]]!r}); with the cache's pixels in (a): "
            f"{len(differ_control)} differ; max pixel difference {pixel_diff:.1e}"
        )
        distinct = len(set(captions_b))

    steps = len(loader_b)
    rate = lambda seconds: args.n / seconds  # noqa: E731
    results = {
        "n_images": args.n,
        "source": "640x480 JPEG, quality 90",
        "mean_jpeg_kb": mean_jpeg_kb,
        "size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "torch_threads": args.threads,
        "repeats": args.repeats,
        "model": {**MODEL, "image_size": args.size, "decoder": "gpt2", "parameters": n_params},
        "train_steps": steps,
        "train_a_samples_per_s": rate(train_a_s),
        "train_b_samples_per_s": rate(train_b_s),
        "train_ratio": train_a_s / train_b_s,
        "train_target_ratio": TARGET_TRAIN,
        "train_meets_target": train_a_s / train_b_s >= TARGET_TRAIN,
        "train_a_data_fraction": wait_a_s / train_a_s,
        "train_b_data_fraction": wait_b_s / train_b_s,
        "train_model_s_per_step": (train_b_s - wait_b_s) / steps,
        "loader_a_samples_per_s": rate(loader_a_s),
        "loader_b_samples_per_s": rate(loader_b_s),
        "loader_ratio": loader_a_s / loader_b_s,
        "train_max_loss_diff": loss_diff,
        "caption_a_img_per_s": rate(caption_a_s),
        "caption_b_img_per_s": rate(caption_b_s),
        "caption_ratio": caption_a_s / caption_b_s,
        "caption_target_ratio": TARGET_CAPTION,
        "caption_meets_target": caption_a_s / caption_b_s >= TARGET_CAPTION,
        "captions_differ": len(differ),
        "captions_differ_cache_pixels_control": len(differ_control),
        "captions_distinct": distinct,
        "max_abs_pixel_diff": pixel_diff,
        "build_s": build_s,
        "build_img_per_s": rate(build_s),
        "build_workers": os.cpu_count(),
        "machine": machine_info(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(args.out, results)

    print(
        f"{args.n} x 640x480 JPEG (~{mean_jpeg_kb:.0f} KB) -> {args.size}x{args.size}; captioner "
        f"{n_params / 1e6:.2f} M parameters; batch {args.batch_size}, workers {args.workers}, "
        f"{args.threads} torch thread(s), best of {args.repeats}"
    )
    print(f"{'training, ' + str(steps) + ' AdamW steps':46s} {'samples/s':>10s} {'(b)/(a)':>8s} {'data':>6s}")
    print(
        f"{'(a) PIL + ViTImageProcessor in the collator':46s} {rate(train_a_s):10.1f} {'':8s} "
        f"{wait_a_s / train_a_s:6.0%}"
    )
    print(
        f"{'(b) cache uint8 + normalize_pixel_values':46s} {rate(train_b_s):10.1f} "
        f"{train_a_s / train_b_s:7.2f}x {wait_b_s / train_b_s:6.0%}"
    )
    print(f"{'loader alone (a)':46s} {rate(loader_a_s):10.1f}")
    print(f"{'loader alone (b)':46s} {rate(loader_b_s):10.1f} {loader_a_s / loader_b_s:7.1f}x")
    print(f"{'captioning, num_beams=4, max_length=16':46s} {'img/s':>10s} {'(b)/(a)':>8s}")
    print(f"{'(a) predict_step, one image at a time':46s} {rate(caption_a_s):10.1f}")
    print(
        f"{'(b) generate_captions, cache batches':46s} {rate(caption_b_s):10.1f} {caption_a_s / caption_b_s:7.2f}x"
    )
    print(
        f"captions identical: {args.n - len(differ)}/{args.n} ({distinct} distinct); "
        f"max |pixels (a) - cache| = {pixel_diff:.1e}; max loss difference (a) vs (b) = {loss_diff:.1e}"
    )
    print(f"one-off cache build, {os.cpu_count()} cores: {build_s:.1f} s ({rate(build_s):.0f} img/s)")
    print(
        f"targets: training (b)/(a) >= {TARGET_TRAIN:.0f}x "
        f"{'met' if results['train_meets_target'] else 'NOT met'}; captioning (b)/(a) >= "
        f"{TARGET_CAPTION:.0f}x {'met' if results['caption_meets_target'] else 'NOT met'}"
    )
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
