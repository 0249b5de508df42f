"""benchmarks/bench_real_size.py end to end on the CPU, with tiny models (`--tiny`: 2 layers x 64, 32 px images,
a vocabulary of 512): every model trains through its job's Trainer and reports sane figures."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The counted FLOPs add what the k x N x T estimate leaves out: attention scores, the LM head (tied to the
# embedding table, 512 x 64 here against about 100k parameters per tower) and, for the captioner, the
# cross-attention's keys and values over the image tokens; at these sizes that is +5 to +50 %. The captioner's
# cross-attention reads 17 image tokens where the estimate charges the decoder's 32, a few % below. A figure
# under 0.9 means a tower or a backward pass went uncounted; over 2, something counted twice.
RATIO_RANGE = (0.9, 2.0)


def test_tiny_run_reports_every_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    bench = importlib.import_module("benchmarks.bench_real_size")
    out = tmp_path / "real_size.json"
    report = bench.main(["--tiny", "--steps", "2", "--warmup-steps", "1", "--out", str(out)])

    assert json.loads(out.read_text(encoding="utf-8"))["models"].keys() == set(bench.MODELS)
    assert report["machine"]["cores"] and report["device"]["tflops"] > 0
    for name, figures in report["models"].items():
        assert "error" not in figures, figures
        assert figures["samples_per_s"] > 0, name
        assert RATIO_RANGE[0] < figures["flops_ratio"] < RATIO_RANGE[1], (name, figures["flops_ratio"])
        assert 0.0 <= figures["data_wait_share"] <= 1.0, name
        assert 0.0 < figures["mfu"], name
        assert figures["peak_memory_mb"] > 0, name
        assert 0 < figures["parameters"]["trainable"] <= figures["parameters"]["total"], name
    clipcap = report["models"]["clipcap"]
    assert clipcap["parameters"]["trainable"] < clipcap["parameters"]["total"]  # GPT-2 is frozen
    assert {part["trainable"] for part in clipcap["estimate_parts"] if part["part"].startswith("GPT-2")} == {
        0
    }


def test_vit_b16_forward_counts_the_published_17_6_giga_multiply_adds(monkeypatch):
    """The FLOP count the benchmark's MFU rests on, against a figure from outside: ViT-B/16 at 224 px is 17.6 GFLOPs
    in DeiT's paper (Touvron et al. 2021, Table 1, "DeiT-B" = ViT-B's architecture), counted there as fvcore does:
    multiply-adds of the matrix products, attention's included. `FlopCounterMode` counts 2 per multiply-add, and on
    CPU the fused attention kernel only once `register_cpu_attention_flops` has run (without it: 4 % fewer)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import ViTConfig, ViTModel

    monkeypatch.syspath_prepend(str(REPO))
    bench = importlib.import_module("benchmarks.bench_real_size")
    bench.register_cpu_attention_flops()
    model = ViTModel(ViTConfig(image_size=224, patch_size=16), add_pooling_layer=False)
    model.set_attn_implementation("sdpa")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=torch.zeros(1, 3, 224, 224))
    multiply_adds = counter.get_total_flops() / 2
    assert abs(multiply_adds / 17.6e9 - 1) < 0.01, multiply_adds
