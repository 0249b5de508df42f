"""Benchmark: ClipCap caption generation one image at a time without a cache vs batched, cached decoding.

    python -m benchmarks.bench_clipcap [--images 32] [--max-new-tokens 20] [--threads 1] [--repeats 2]

The reference generators (rmokady/CLIP_prefix_caption predict.py `generate2` / `generate_beam`, and the Chinese
port's sampler) caption one image at a time and run GPT-2 over the whole prefix + caption at every step, without
`past_key_values`. That cost is what this benchmark measures, with two plain loops over the same `ClipCapModel`
that decode as `generate_captions` does (so that their captions can be checked against it):

- `uncached_greedy`: per image, per step, GPT-2 over [prefix, start, tokens so far]; argmax; stop at the end token;
- `uncached_beam_search` (5 beams): per image, per step, GPT-2 over every live beam's full sequence; the top
  2 x 5 continuations by summed log-probability; finished captions set aside, 5 beams kept live, the best caption
  by mean log-probability: Hugging Face's beam search, which is not the reference's (its `generate_beam` keeps
  finished beams in its pool; tests/models/test_clipcap_import.py checks that difference).

Both loops suppress the tokens `generate_captions` suppresses (the start and pad tokens). This project's path is
`generate_captions(model, tokenizer, image_embeds=..., decoding=...)`: one `generate()` call for the batch, with
the key/value cache. Same model (a GPT-2 of 6 layers, width 384, the Chinese BERT vocabulary size, random
weights), same image embeddings, same number of new tokens. Greedy must give identical tokens (checked); for beam
search the best beams are compared and reported (the loop does not stop early as generate() may). Targets:
greedy >= 10x, beam >= 8x for a batch of 32 images. Results: stdout and benchmarks/results/clipcap.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.bench_image_cache import machine_info
from nbutils.files import write_json
from nbutils.models import clipcap
from nbutils.models.decoding import generate_captions
from nbutils.models.tokenizer import caption_special_ids, train_caption_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "clipcap.json"
TARGETS = {"greedy": 10.0, "beam": 8.0}
LANGUAGE_MODEL = {
    "n_embd": 384,
    "n_layer": 6,
    "n_head": 6,
    "vocab_size": 21128,
}  # UER GPT-2's vocabulary size
PREFIX_DIM, PREFIX_LEN, BEAMS = 512, 10, 5


def build_model(seed: int = 0):
    """A ClipCap model with an MLP mapper and a mid-sized random GPT-2; the tokenizer's ids are its special ids."""
    tokenizer = train_caption_tokenizer(["一个红色的圆形", "两个蓝色的方形在左边"], "zh")
    ids = caption_special_ids(tokenizer)
    torch.manual_seed(seed)
    config = clipcap.ClipCapConfig(
        **clipcap.mapper_settings(PREFIX_DIM, PREFIX_LEN, "mlp"),
        **LANGUAGE_MODEL,
        n_positions=64,
        bos_token_id=ids["start"],
        eos_token_id=ids["end"],
        pad_token_id=ids["pad"],
    )
    model = clipcap.ClipCapModel(config).eval()
    clipcap.set_caption_token_ids(model, tokenizer)
    return model, tokenizer, ids


@torch.no_grad()
def uncached_greedy(
    model, image_embeds, start: int, end: int, max_new_tokens: int, suppress=()
) -> list[list[int]]:
    """One image at a time, GPT-2 over the whole sequence at every step (no cache); `suppress`ed tokens never."""
    captions = []
    for image in image_embeds:
        tokens = [start]
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([tokens]), image_embeds=image[None], use_cache=False).logits
            logits[0, -1, list(suppress)] = -float("inf")
            token = int(logits[0, -1].argmax())
            if token == end:
                break
            tokens.append(token)
        captions.append(tokens[1:])
    return captions


@torch.no_grad()
def uncached_beam_search(
    model, image_embeds, start: int, end: int, max_new_tokens: int, beams: int = BEAMS, suppress=()
) -> list[list[int]]:
    """One image at a time, every live beam's full sequence through GPT-2 at every step (no cache); finished
    captions set aside and `beams` beams kept live, as Hugging Face's beam search does."""
    captions = []
    for image in image_embeds:
        live = [([start], 0.0)]  # (tokens, summed log-probability)
        done = []
        for _ in range(max_new_tokens):
            batch = torch.tensor([tokens for tokens, _ in live])
            logits = model(
                input_ids=batch, image_embeds=image[None].expand(len(live), -1), use_cache=False
            ).logits
            logprobs = torch.log_softmax(logits[:, -1].float(), dim=-1)
            logprobs[:, list(suppress)] = -float("inf")
            totals = torch.tensor([score for _, score in live])[:, None] + logprobs
            best = torch.topk(totals.flatten(), 2 * beams)
            candidates = []
            for value, index in zip(best.values.tolist(), best.indices.tolist()):
                beam, token = divmod(index, logprobs.shape[1])
                candidates.append((live[beam][0] + [token], value))
            done += [(tokens, score) for tokens, score in candidates[:beams] if tokens[-1] == end]
            live = [(tokens, score) for tokens, score in candidates if tokens[-1] != end][:beams]
            if not live:
                break
        finished = done + live
        tokens, _ = max(finished, key=lambda c: c[1] / (len(c[0]) - 1))
        captions.append([t for t in tokens[1:] if t != end])
    return captions


def timed_best(repeats: int, fn):
    """(seconds of the fastest of `repeats` calls, its result)."""
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        if best is None or seconds < best[0]:
            best = (seconds, result)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=32, help="images in the batch")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both paths")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tokenizer, ids = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    image_embeds = torch.randn(args.images, PREFIX_DIM, generator=torch.Generator().manual_seed(1))
    results = {"images": args.images, "max_new_tokens": args.max_new_tokens, "threads": args.threads}
    rows = []
    suppress = [ids["start"], ids["pad"]]  # what generate_captions suppresses for this vocabulary
    for name, uncached, decoding in (
        ("greedy", uncached_greedy, {"preset": "greedy", "max_new_tokens": args.max_new_tokens}),
        (
            "beam",
            uncached_beam_search,
            {
                "preset": "beam",
                "num_beams": BEAMS,
                "max_new_tokens": args.max_new_tokens,
                "min_new_tokens": 0,
            },
        ),
    ):
        slow_s, slow = timed_best(
            args.repeats,
            lambda uncached=uncached: uncached(
                model, image_embeds, ids["start"], ids["end"], args.max_new_tokens, suppress=suppress
            ),
        )
        fast_s, fast = timed_best(
            args.repeats,
            lambda decoding=decoding: generate_captions(
                model, tokenizer, decoding=decoding, image_embeds=image_embeds
            ),
        )
        fast_tokens = [candidates[0]["token_ids"] for candidates in fast]
        same = sum(a == b for a, b in zip(slow, fast_tokens))
        if name == "greedy":
            assert same == args.images, (
                f"greedy tokens differ for {args.images - same} of {args.images} images"
            )
        ratio = slow_s / fast_s
        results[name] = {
            "uncached_captions_per_s": args.images / slow_s,
            "batched_captions_per_s": args.images / fast_s,
            "ratio": ratio,
            "target_ratio": TARGETS[name],
            "meets_target": ratio >= TARGETS[name],
            "identical_captions": same,
            "mean_new_tokens": sum(len(t) for t in fast_tokens) / len(fast_tokens),
        }
        rows.append((name, args.images / slow_s, args.images / fast_s, ratio, same))
    results.update(
        {
            "model": {
                **LANGUAGE_MODEL,
                "prefix_dim": PREFIX_DIM,
                "prefix_len": PREFIX_LEN,
                "parameters": n_params,
            },
            "machine": machine_info(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    write_json(args.out, results)

    print(
        f"ClipCap, GPT-2 {LANGUAGE_MODEL['n_layer']} layers x {LANGUAGE_MODEL['n_embd']}, vocabulary "
        f"{LANGUAGE_MODEL['vocab_size']:,} ({n_params / 1e6:.1f} M parameters), prefix {PREFIX_LEN}; "
        f"{args.images} images, {args.max_new_tokens} new tokens, {args.threads} torch thread(s), "
        f"best of {args.repeats}"
    )
    header = ("decoding", "uncached cap/s", "batched cap/s", "ratio", "target", "same tokens")
    print("{:10s} {:>14s} {:>14s} {:>7s} {:>7s} {:>12s}".format(*header))
    for name, slow, fast, ratio, same in rows:
        print(
            f"{name:10s} {slow:14.2f} {fast:14.2f} {ratio:6.1f}x {TARGETS[name]:6.0f}x {same:>7d}/{args.images}"
            f"  {'met' if ratio >= TARGETS[name] else 'NOT met'}"
        )
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
