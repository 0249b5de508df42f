"""Benchmark: the real-size models, trained for a few steps through the project's Trainer glue.

    python -m benchmarks.bench_real_size                       # all three models, this machine's defaults
    python benchmarks/bench_real_size.py --models captioner clip --batch-size 128 --torch-compile
    bash benchmarks/gpu_check.sh                               # a CUDA machine: the defaults, then torch.compile

Three models, built from configs with random weights (nothing is downloaded), each trained through
`job.build_trainer` with the job's own Trainer class, collator and dataset, from an image cache:

    captioner  ViT-B/16 (12 x 768, 12 heads, MLP 3072, 224 px) -> GPT-2 (12 x 768, cross-attention), vocabulary
               21,128 (uer/gpt2-chinese-cluecorpussmall's size), captions of 32 tokens: `CaptionTrainer`
    clip       ViT-B/16 image tower + a 12 x 768 BERT text tower (vocabulary 21,128, as Chinese-CLIP's),
               projection 512, texts of 52 tokens (Chinese-CLIP's context length): `ContrastiveTrainer`
    clipcap    ClipCap's MLP mapper (CLIP embedding 512 -> 10 prefix tokens of 768) before a frozen 12-layer GPT-2
               (`freeze_language_model`), trained from precomputed image embeddings (`ImageEmbeddingDataset`;
               random vectors stand in for CLIP's), captions of 32 tokens: `CaptionTrainer`

Defaults: on CUDA batch 128, 30 timed steps after 10, bf16 (precision "auto"), 8 loader workers; on a CPU batch 4,
6 timed steps after 2, fp32, no workers (about a minute on 2 cores). The jobs' configs get max_steps, no
checkpoints (the Trainer is kept from saving) and no evaluation.

The data: generated 256 px JPEGs (smooth noise) in a work folder, cached at 224 px by `build_image_cache`; a
WordPiece tokenizer trained by `train_tokenizer` on captions over an alphabet of 21,123 CJK characters (so the
vocabulary is exactly 21,128 and every character is one token); each caption is random characters of a fixed
length. By default the run needs one epoch: --images is batch x (warm-up + timed steps + 1).

Per model:
- samples/s over --steps optimiser steps after --warmup-steps (the wall time between the ends of the last warm-up
  step and of the last step; on CUDA synchronised at each step end);
- model FLOPs per trained sample: counted with `torch.utils.flop_counter.FlopCounterMode` over the forward and
  backward of one batch (the job's `compute_loss`; gradient checkpointing's recomputation left out), divided by
  the batch; beside it the estimate
  sum over towers of k x N x T, N a tower's non-embedding parameters, T the tokens it processes per sample, k = 6
  for a trained tower (forward 2, input gradients 2, weight gradients 2) and 4 for a frozen one that gradients
  pass through (ClipCap's GPT-2); embeddings, LM heads tied to them, attention scores and the cross-attention's
  keys and values over the image tokens are outside the estimate, so the ratio counted / estimate shows their cost;
- MFU = samples/s x counted FLOPs per sample / the device's peak: the dense bf16 data-sheet figure for known GPUs
  (`DENSE_BF16_TFLOPS`), else the measured throughput of a large square matmul in the run's dtype (a CPU);
- data wait: the share of the timed wall time the training loop spent in `get_batch_samples`, waiting for the
  next batch (on CUDA after a synchronize, so queued GPU work does not count as waiting);
- peak memory: CUDA `max_memory_allocated`; on a CPU the process's peak resident memory (VmHWM, reset before the
  model is built; it includes the interpreter, the libraries and the cache pages read);
- parameters, total and trainable.

Results: a table on stdout and benchmarks/results/real_size.json (--out), with `machine_info()`, the settings and
every figure. --tiny (or --hidden-size, --layers, ...) shrinks the models for a quick check.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import math
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils import flop_counter
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from nbutils.data.cache import ImageGeometry, build_image_cache, processor_mean_std
from nbutils.data.datasets import (
    CaptionCollator,
    ContrastiveCollator,
    ImageEmbeddingDataset,
    ImageTextDataset,
)
from nbutils.files import write_json
from nbutils.models import clip as clip_models
from nbutils.models import clipcap as clipcap_models
from nbutils.models import encoder_decoder as encoder_decoders
from nbutils.models.image_processors import load_image_processor
from nbutils.models.tokenizer import SPECIAL_TOKENS, caption_special_ids, train_tokenizer
from nbutils.parallel import map_chunks, process_pool, split_into_chunks
from nbutils.training import job
from nbutils.training.captioning import CaptionTrainer
from nbutils.training.clip import ContrastiveTrainer, TemperatureAndEpochCallback, TrainClipConfig
from nbutils.training.clipcap import TrainClipCapConfig
from nbutils.training.encoder_decoder import TrainEncoderDecoderConfig

# `python benchmarks/bench_real_size.py` (a script) has benchmarks/ itself on the path, not the repository.
try:
    from benchmarks.bench_image_cache import machine_info
except ModuleNotFoundError:
    from bench_image_cache import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "real_size.json"
MODELS = ("captioner", "clip", "clipcap")
CAPTION_TOKENS = 32  # captioner / ClipCap targets: 31 characters + the end token
CLIP_TEXT_TOKENS = 52  # Chinese-CLIP's context length: [CLS] + 50 characters + [SEP]
GPT2_POSITIONS = 1024  # GPT-2's position table (uer/gpt2-chinese-cluecorpussmall's too)
PREFIX_LENGTH = 10  # ClipCap's K
SOURCE_SIZE = 256  # the generated JPEGs, resized to --image-size by the cache

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets, first match wins.
# Variants whose figure differs and is not listed here (H100 NVL, H200 NVL, A10G, ...) fall back to a measured
# matmul, as does anything else.
DENSE_BF16_TFLOPS = (
    (r"\bNVL\b", None),
    (r"\bH100 PCIe\b", 756.0),
    (r"\bH100\b", 989.0),  # SXM5: "NVIDIA H100 80GB HBM3"
    (r"\bH200\b", 989.0),
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bA10\b", 125.0),
    (r"\bRTX 4090\b", 165.0),  # fp32 accumulate, as bf16 uses
)
REAL_SIZE = {
    "hidden_size": 768,
    "layers": 12,
    "heads": 12,
    "vocab_size": 21128,
    "image_size": 224,
    "patch_size": 16,
}
TINY = {"hidden_size": 64, "layers": 2, "heads": 2, "vocab_size": 512, "image_size": 32, "patch_size": 8}
EMBEDDING_NAMES = re.compile(
    r"(?:^|\.)(?:wte|wpe|word_embeddings|position_embeddings|token_type_embeddings|cls_token|mask_token)(?:\.|$)"
)


# -----------------------------------------------------------------------------
# data


def _draw_images(items: list[tuple[str, int]], size: int) -> list[str]:
    """Worker: one smooth-noise JPEG per (path, seed): an 8 x 8 random field upsampled, plus fine noise."""
    for path, seed in items:
        rng = np.random.default_rng(seed)
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
            (size, size), Image.BICUBIC
        )
        pixels = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return [path for path, _ in items]


def make_images(folder: Path, n: int, workers: int) -> list[str]:
    """`n` generated JPEGs in `folder` (the ones already there are kept: same name, same pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"{i:06d}.jpg") for i in range(n)]
    todo = [(path, i) for i, path in enumerate(paths) if not os.path.exists(path)]
    chunks = split_into_chunks(todo, workers, 256)
    with process_pool(min(workers, len(chunks))) as pool:
        for _ in map_chunks(_draw_images, chunks, SOURCE_SIZE, pool=pool, desc="images", progress=False):
            pass
    return paths


def alphabet(vocab_size: int) -> list[str]:
    """vocab_size - 5 CJK characters: with the 5 special tokens, a WordPiece vocabulary of exactly vocab_size."""
    chars = [chr(c) for c in [*range(0x4E00, 0xA000), *range(0x3400, 0x4DC0)]]
    if vocab_size - len(SPECIAL_TOKENS) > len(chars):
        raise ValueError(f"vocab_size must be at most {len(chars) + len(SPECIAL_TOKENS)}, got {vocab_size}")
    return chars[: vocab_size - len(SPECIAL_TOKENS)]


def build_tokenizer(vocab_size: int):
    """A BERT-style tokenizer trained by the project's `train_tokenizer`, every character of `alphabet` a token."""
    chars = alphabet(vocab_size)
    tokenizer = train_tokenizer(["".join(chars[i : i + 64]) for i in range(0, len(chars), 64)], vocab_size)
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"the tokenizer has {len(tokenizer)} tokens, not {vocab_size}")
    return tokenizer


def caption_table(paths: list[str], chars: list[str], length: int, seed: int) -> pd.DataFrame:
    """One caption per image: `length` random characters of `chars` (one token each)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(chars), (len(paths), length))
    return pd.DataFrame({"image_path": paths, "text": ["".join(chars[i] for i in row) for row in picks]})


@dataclass
class Data:
    cache: object
    paths: list[str]
    processor: object
    mean: tuple
    std: tuple
    chars: list[str]
    tokenizer: object
    build_s: float


def prepare_data(args, work: Path) -> Data:
    start = time.perf_counter()
    workers = max(1, min(os.cpu_count() or 1, math.ceil(args.images / 64)))
    paths = make_images(work / "jpeg", args.images, workers)
    processor = load_image_processor("vit", args.image_size)
    cache = build_image_cache(
        paths,
        work / f"cache_{args.image_size}",
        ImageGeometry.from_processor(processor),
        workers,
        progress=False,
    )
    mean, std = processor_mean_std(processor)
    tokenizer = build_tokenizer(args.vocab_size)
    return Data(
        cache, paths, processor, mean, std, alphabet(args.vocab_size), tokenizer, time.perf_counter() - start
    )


# -----------------------------------------------------------------------------
# timing: data wait and step ends


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """What the timed Trainer and its callback record: (global step before the fetch, seconds) per batch fetch,
    and the time at the end of each optimiser step."""

    def __init__(self, device: torch.device):
        self.device, self.waits, self.step_ends = device, [], {}

    def window(self, first: int, last: int) -> tuple[float, float]:
        """(wall seconds, seconds spent fetching batches) of steps first+1 ... last."""
        wall = self.step_ends[last] - self.step_ends[first]
        return wall, sum(s for step, s in self.waits if first <= step < last)


def timed(trainer_class, clock: Clock):
    """`trainer_class` with its batch fetches timed into `clock` (`get_batch_samples`: where the training loop
    waits for data)."""

    class Timed(trainer_class):
        def get_batch_samples(self, epoch_iterator, num_batches, device):
            synchronize(clock.device)  # queued GPU work is compute, not waiting
            start = time.perf_counter()
            batches = super().get_batch_samples(epoch_iterator, num_batches, device)
            clock.waits.append((self.state.global_step, time.perf_counter() - start))
            return batches

    Timed.__name__ = Timed.__qualname__ = "Timed" + trainer_class.__name__
    return Timed


class StepClock(TrainerCallback):
    """Records each step's end; keeps the Trainer from writing checkpoints or evaluating during the benchmark."""

    def __init__(self, clock: Clock):
        self.clock = clock

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.clock.device)
        self.clock.step_ends[state.global_step] = time.perf_counter()
        control.should_save = control.should_evaluate = False  # runs after DefaultFlowCallback's

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = control.should_evaluate = False


# -----------------------------------------------------------------------------
# FLOPs, peaks, memory


def _cpu_flash_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_cpu_attention_flops() -> None:
    """Count PyTorch's CPU flash attention as its CUDA kernels are counted (torch 2.13 registers only those)."""
    aten = torch.ops.aten
    for op, formula in (
        (aten._scaled_dot_product_flash_attention_for_cpu, _cpu_flash_forward),
        (aten._scaled_dot_product_flash_attention_for_cpu_backward, _cpu_flash_backward),
    ):
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


def counted_flops(trainer, batch: dict, bf16: bool) -> int:
    """FLOPs of the job's `compute_loss` and its backward on `batch` (matmuls, convolutions, attention)."""
    model = trainer.model
    model.train()
    inputs = trainer._prepare_inputs(batch)
    device = trainer.args.device
    # Model FLOPs leave out gradient checkpointing's recomputed forward passes (MFU, not hardware utilisation).
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for module in checkpointed:
        module.gradient_checkpointing = False
    with flop_counter.FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = trainer.compute_loss(model, inputs)
        loss.backward()
    for module in checkpointed:
        module.gradient_checkpointing = True
    model.zero_grad(set_to_none=True)
    synchronize(device)
    return counter.get_total_flops()


def estimate_parts(model, parts: list[tuple[str, str, int]]) -> list[dict]:
    """k x N x T per part: `parts` are (name, parameter-name prefix, tokens per sample), first match wins;
    embedding tables are left out, k is 6 for trained parameters and 4 for frozen ones."""
    found = {name: {"part": name, "tokens": tokens, "trainable": 0, "frozen": 0} for name, _, tokens in parts}
    for param_name, param in model.named_parameters():
        if EMBEDDING_NAMES.search(param_name):
            continue
        part = next((name for name, prefix, _ in parts if param_name.startswith(prefix)), None)
        if part is None:
            raise ValueError(f"parameter {param_name} is in no part of the FLOP estimate")
        found[part]["trainable" if param.requires_grad else "frozen"] += param.numel()
    for part in found.values():
        part["flops"] = (6 * part["trainable"] + 4 * part["frozen"]) * part["tokens"]
    return list(found.values())


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """Best TFLOP/s of an n x n matmul in `dtype` on `device` (TF32 as the run sets it on CUDA)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def device_peak(device: torch.device, bf16: bool, matmul_size: int) -> dict:
    """{"name", "tflops" (the peak MFU divides by), "source", "measured_matmul_tflops"}."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = machine_info()["cpu"]
    measured = measured_matmul_tflops(device, dtype, matmul_size)
    sheet = next((tflops for pattern, tflops in DENSE_BF16_TFLOPS if re.search(pattern, name)), None)
    if device.type == "cuda" and sheet is not None:
        return {
            "name": name,
            "tflops": sheet,
            "source": "data sheet, dense bf16",
            "measured_matmul_tflops": measured,
        }
    source = f"measured: {matmul_size} x {matmul_size} matmul, {str(dtype).removeprefix('torch.')}"
    return {"name": name, "tflops": measured, "source": source, "measured_matmul_tflops": measured}


def reset_peak_memory(device: torch.device) -> tuple[str, float | None]:
    """Start a peak-memory measurement: (what `peak_memory_mb` will measure, the memory in use at the start in MB)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return "CUDA max_memory_allocated", torch.cuda.memory_allocated(device) / 2**20
    try:  # the heap the model before freed goes back to the system, so that its pages are not counted again
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return "ru_maxrss: the process's peak resident memory so far", None
    return "peak resident memory of the process (VmHWM, reset before the model was built)", _status_mb(
        "VmRSS"
    )


def _status_mb(field: str) -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def peak_memory_mb(device: torch.device, kind: str) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if kind.startswith("peak resident"):
        return _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -----------------------------------------------------------------------------
# the three models


def common_config(args, work: Path, name: str) -> dict:
    """The TrainingConfig fields every job gets: the options, max_steps, no checkpoints, one log line."""
    steps = args.warmup_steps + args.steps
    return {
        "run_dir": str(work),
        "output_dir": str(work / "runs" / name),
        "seed": args.seed,
        "max_steps": steps,
        "batch_size": args.batch_size,
        "save_steps": steps + 1,
        "logging_steps": steps,
        "num_workers": args.num_workers,
        "precision": args.precision,
        "attn_implementation": args.attn_implementation,
        "torch_compile": args.torch_compile,
        "gradient_checkpointing": args.gradient_checkpointing,
        "resume": "",
    }


def image_tokens(args) -> int:
    return (args.image_size // args.patch_size) ** 2 + 1  # patches + [CLS]


def captioner_job(args, data: Data, work: Path, clock: Clock):
    config = TrainEncoderDecoderConfig(
        **common_config(args, work, "captioner"), max_caption_length=CAPTION_TOKENS
    )
    tokenizer = copy.deepcopy(data.tokenizer)
    bundle = encoder_decoders.build_demo_encoder_decoder(
        tokenizer,
        image_size=args.image_size,
        decoder="gpt2",
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=4 * args.hidden_size,
        max_length=GPT2_POSITIONS,
        initializer_range=0.02,
        image_processor=data.processor,
    )
    ids = caption_special_ids(tokenizer)
    collator = CaptionCollator(tokenizer, ids["start"], ids["end"], ids["pad"], config.max_caption_length)
    table = caption_table(data.paths, data.chars, CAPTION_TOKENS - 1, args.seed)
    train = ImageTextDataset(data.cache, table, sampling="caption", seed=args.seed)
    trainer = job.build_trainer(
        timed(CaptionTrainer, clock),
        config,
        "demo",
        bundle.model,
        train,
        None,
        collator,
        [StepClock(clock)],
        evaluate=False,
        mean=data.mean,
        std=data.std,
    )
    parts = lambda batch: [  # the encoder's pooler sees the [CLS] token only
        ("encoder pooler", "encoder.pooler.", 1),
        ("ViT encoder", "encoder.", image_tokens(args)),
        ("GPT-2 decoder", "decoder.", batch["decoder_input_ids"].shape[1]),
    ]
    return config, trainer, train, collator, parts


def clip_job(args, data: Data, work: Path, clock: Clock):
    config = TrainClipConfig(
        **common_config(args, work, "clip"),
        max_text_length=CLIP_TEXT_TOKENS,
        projection_dim=args.projection_dim,
        vision_tower="vit",
        text_tower="bert",
    )
    tokenizer = copy.deepcopy(data.tokenizer)
    model = clip_models.build_demo_dual_encoder(
        tokenizer,
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=4 * args.hidden_size,
        projection_dim=args.projection_dim,
        max_text_length=CLIP_TEXT_TOKENS,
        text_tower="bert",
        text_layers=args.layers,
        vision_tower="vit",
        initializer_range=0.02,
    )
    table = caption_table(data.paths, data.chars, CLIP_TEXT_TOKENS - 2, args.seed)
    train = ImageTextDataset(data.cache, table, sampling="image", seed=args.seed)
    collator = ContrastiveCollator(tokenizer, config.max_text_length)
    trainer = job.build_trainer(
        timed(ContrastiveTrainer, clock),
        config,
        "demo",
        model,
        train,
        None,
        collator,
        [TemperatureAndEpochCallback(train), StepClock(clock)],
        drop_last=True,
        evaluate=False,
        ddp_find_unused_parameters=False,
        mean=data.mean,
        std=data.std,
        text_buckets=config.text_buckets,
    )
    parts = lambda batch: [  # poolers, projections and the temperature see one vector per sample
        ("vision pooler", "vision_model.pooler.", 1),
        ("text pooler", "text_model.pooler.", 1),
        ("ViT image tower", "vision_model.", image_tokens(args)),
        ("BERT text tower", "text_model.", batch["input_ids"].shape[1]),
        ("projections, temperature", "", 1),
    ]
    return config, trainer, train, collator, parts


def clipcap_job(args, data: Data, work: Path, clock: Clock):
    config = TrainClipCapConfig(
        **common_config(args, work, "clipcap"),
        prefix_len=PREFIX_LENGTH,
        mapping="mlp",
        freeze_language_model=True,
        max_caption_length=CAPTION_TOKENS,
    )
    tokenizer = copy.deepcopy(data.tokenizer)
    mapper = clipcap_models.mapper_settings(args.projection_dim, prefix_len=PREFIX_LENGTH, mapping="mlp")
    bundle = clipcap_models.build_demo_clipcap(
        tokenizer,
        mapper,
        hidden_size=args.hidden_size,
        layers=args.layers,
        num_heads=args.heads,
        max_length=GPT2_POSITIONS - PREFIX_LENGTH,
    )
    clipcap_models.freeze_language_model(bundle.model, config.freeze_language_model)
    # Precomputed CLIP image embeddings, one row per cached image: random vectors cost the same to train from.
    embeddings = torch.randn(len(data.cache), args.projection_dim, generator=torch.Generator().manual_seed(0))
    table = caption_table(data.paths, data.chars, CAPTION_TOKENS - 1, args.seed)
    train = ImageEmbeddingDataset(ImageTextDataset(data.cache, table, sampling="caption"), embeddings)
    collator = clipcap_models.caption_collator(bundle, config.max_caption_length)
    trainer = job.build_trainer(
        timed(CaptionTrainer, clock),
        config,
        "demo",
        bundle.model,
        train,
        None,
        collator,
        [StepClock(clock)],
        evaluate=False,
    )
    parts = lambda batch: [  # GPT-2 reads the prefix and the caption
        ("MLP mapper", "mapper.", 1),
        ("GPT-2 (frozen)", "transformer.", PREFIX_LENGTH + batch["decoder_input_ids"].shape[1]),
    ]
    return config, trainer, train, collator, parts


JOBS = {"captioner": captioner_job, "clip": clip_job, "clipcap": clipcap_job}


def run_model(name: str, args, data: Data, work: Path) -> dict:
    """Build `name`, count its FLOPs on one batch, train warm-up + timed steps; its figures."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    memory_kind, memory_at_start = reset_peak_memory(device)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    clock = Clock(device)
    config, trainer, train, collator, parts = JOBS[name](args, data, work, clock)
    trainer.remove_callback(ProgressCallback)  # no progress bar between the table's lines
    bf16 = job.resolved_precision(config.precision) == "bf16"
    model = trainer.model
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batch = collator([train[i] for i in range(args.batch_size)])
    flops = counted_flops(trainer, batch, bf16) / args.batch_size
    estimate = estimate_parts(model, parts(batch))
    estimated = sum(part["flops"] for part in estimate)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the training steps' peak, not the counting pass's
    built_s = time.perf_counter() - started
    training = job.fit(trainer, config)
    wall, wait = clock.window(args.warmup_steps, args.warmup_steps + args.steps)
    samples_per_s = args.steps * args.batch_size / wall
    result = {
        "model": name,
        "parameters": {"total": total, "trainable": trainable},
        "batch_size": args.batch_size,
        "precision": "bf16" if bf16 else "fp32",
        "samples_per_s": samples_per_s,
        "step_s": wall / args.steps,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "flops_per_sample_counted": flops,
        "flops_per_sample_estimate": estimated,
        "flops_ratio": flops / estimated,
        "estimate_parts": estimate,
        "achieved_tflops": samples_per_s * flops / 1e12,
        "data_wait_s": wait,
        "data_wait_share": wait / wall,
        "peak_memory_mb": peak_memory_mb(device, memory_kind),
        "peak_memory_kind": memory_kind,
        "memory_at_start_mb": memory_at_start,
        "final_train_loss": training["final_train_loss"],
        "build_and_count_s": built_s,
        "model_s": time.perf_counter() - started,
    }
    del trainer, model, train, collator
    gc.collect()
    return result


# -----------------------------------------------------------------------------
# the command


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=0, help="per step (0: 128 on CUDA, 4 on a CPU)")
    parser.add_argument(
        "--steps", type=int, default=0, help="timed optimiser steps (0: 30 on CUDA, 6 on a CPU)"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=0, help="untimed steps first (0: 10 on CUDA, 2 on a CPU)"
    )
    parser.add_argument(
        "--precision", choices=job.PRECISIONS, default="auto", help="auto: bf16 on CUDA, else fp32"
    )
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--attn-implementation", default="sdpa")
    parser.add_argument(
        "--num-workers", type=int, default=-1, help="DataLoader workers (-1: up to 8 on CUDA, 0 on a CPU)"
    )
    parser.add_argument("--images", type=int, default=0, help="generated images (0: one epoch's worth)")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="kept and reused (default: a temporary folder)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tiny", action="store_true", help="2 layers x 64, 32 px, vocabulary 512: a quick check"
    )
    for key, value in REAL_SIZE.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"default {value}")
    parser.add_argument("--projection-dim", type=int, default=None, help="CLIP embedding size (default 512)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    for key, value in (TINY if args.tiny else REAL_SIZE).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.projection_dim = args.projection_dim or (64 if args.tiny else 512)
    args.batch_size = args.batch_size or (128 if cuda else 4)
    args.steps = args.steps or (30 if cuda else 6)
    args.warmup_steps = args.warmup_steps or (10 if cuda else 2)
    if args.num_workers < 0:
        args.num_workers = min(8, max(0, (os.cpu_count() or 1) - 2)) if cuda else 0
    args.images = args.images or args.batch_size * (args.warmup_steps + args.steps + 1)
    if args.images < args.batch_size:
        parser.error(f"--images {args.images} is less than one batch of {args.batch_size}")
    return args


def settings_of(args) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # quiet in forked DataLoader workers
    register_cpu_attention_flops()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_real_size_"))
    try:
        data = prepare_data(args, work)
        bf16 = job.resolved_precision(args.precision) == "bf16"
        if device.type == "cuda":  # the matmul below runs as training does: TF32 for fp32 work
            torch.backends.cuda.matmul.allow_tf32 = True
        peak = device_peak(device, bf16, 512 if args.tiny else 8192 if device.type == "cuda" else 2048)
        report = {
            "device": {"type": device.type, **peak},
            "settings": settings_of(args),
            "data": {"images": args.images, "image_size": args.image_size, "build_s": data.build_s},
            "models": {},
            "machine": machine_info(),
        }
        for name in args.models:
            try:
                figures = run_model(name, args, data, work)
                figures["mfu"] = figures["achieved_tflops"] / peak["tflops"]
            except Exception as e:  # one model failing (out of memory, no compiler) keeps the others' figures
                figures = {"model": name, "error": f"{type(e).__name__}: {e}"}
                print(f"{name}: {figures['error']}", file=sys.stderr)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            report["models"][name] = figures
            # Written after every model, so a run stopped by a time limit keeps what it measured.
            report.update(
                total_s=time.perf_counter() - started, created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")
            )
            write_json(args.out, report)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(report)
    print(f"wrote {args.out}")
    return report


def print_table(report: dict) -> None:
    device, settings = report["device"], report["settings"]
    size = "tiny" if settings["tiny"] else "real size"
    print(
        f"\n{device['name']} ({device['type']}); peak {device['tflops']:.3g} TFLOP/s ({device['source']}); "
        f"{size}, {settings['attn_implementation']}, compile {settings['torch_compile']}, "
        f"{settings['steps']} timed steps after {settings['warmup_steps']}, {settings['num_workers']} workers"
    )
    header = (
        "model",
        "batch",
        "precision",
        "samples/s",
        "GFLOP/sample",
        "estimate",
        "ratio",
        "MFU",
        "data wait",
    )
    print(
        "{:10s} {:>5s} {:>9s} {:>10s} {:>12s} {:>9s} {:>6s} {:>7s} {:>9s} {:>11s}".format(
            *header, "peak memory"
        )
    )
    for name, r in report["models"].items():
        if "error" in r:
            print(f"{name:10s} failed: {r['error']}")
            continue
        print(
            f"{name:10s} {r['batch_size']:5d} {r['precision']:>9s} {r['samples_per_s']:10.2f} "
            f"{r['flops_per_sample_counted'] / 1e9:12.4g} {r['flops_per_sample_estimate'] / 1e9:9.4g} "
            f"{r['flops_ratio']:6.2f} {100 * r['mfu']:6.1f}% {100 * r['data_wait_share']:8.1f}% "
            f"{r['peak_memory_mb']:8.0f} MB"
        )
    print(f"total {report['total_s']:.0f} s (data {report['data']['build_s']:.1f} s)")


if __name__ == "__main__":
    main()
