"""Benchmark: one training step (forward + backward) of the demo CLIP's CNN image tower, channels-last vs not.

    python -m benchmarks.bench_small_cnn [--batch 64] [--size 64] [--repeats 10]

`SmallCnnModel.forward` hands its convolutions channels-last input. The baseline, written here, runs the
same stages on the input as it arrives (contiguous NCHW), which is what the model did before. Both must
give the same pooled features (checked); the ratio of their step times is the speed-up.
Results: stdout and benchmarks/results/small_cnn.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks.bench_image_cache import _cpu_name
from nbutils.files import write_json
from nbutils.models.small_cnn import SmallCnnConfig, SmallCnnModel

RESULTS = Path(__file__).resolve().parent / "results" / "small_cnn.json"


def contiguous_forward(model: SmallCnnModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """The baseline: the model's stages on NCHW-contiguous input, pooled like the model."""
    hidden = pixel_values.contiguous()
    for stage in model.stages:
        hidden = stage(hidden)
    return hidden.amax(dim=(2, 3)) if model.config.pooling == "max" else hidden.mean(dim=(2, 3))


def step_seconds(forward, model, pixel_values, repeats: int) -> float:
    """Best-of-`repeats` seconds of forward + backward (two warm-up steps first)."""
    times = []
    for k in range(repeats + 2):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        forward(model, pixel_values).square().mean().backward()
        if k >= 2:
            times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = SmallCnnModel(SmallCnnConfig(image_size=args.size)).train()
    pixel_values = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        model.eval()
        same = torch.allclose(
            model(pixel_values).pooler_output, contiguous_forward(model, pixel_values), atol=1e-4
        )
        model.train()
    if not same:
        raise AssertionError("channels-last and contiguous forward passes disagree")

    baseline_s = step_seconds(contiguous_forward, model, pixel_values, args.repeats)
    model_s = step_seconds(lambda m, x: m(x).pooler_output, model, pixel_values, args.repeats)
    results = {
        "batch": args.batch,
        "image_size": args.size,
        "hidden_sizes": model.config.hidden_sizes,
        "repeats": args.repeats,
        "contiguous_step_s": baseline_s,
        "channels_last_step_s": model_s,
        "speedup": baseline_s / model_s,
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    print(
        f"SmallCnn training step, batch {args.batch} at {args.size} px: contiguous {baseline_s * 1000:.0f} ms, "
        f"channels-last {model_s * 1000:.0f} ms ({results['speedup']:.2f}x)"
    )
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
