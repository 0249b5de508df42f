"""Caption decoding shared by the captioners: named settings, their checks, and batched generation.

`generate_captions` runs `model.generate` (KV cache on) over a batch of images and returns, for each
image, `num_return_sequences` captions with a score, best first. Any encoder-decoder with
`generate(pixel_values=...)` works (VisionEncoderDecoderModel with a GPT-2 or BERT-LM decoder), and so does a
prefix captioner given `image_embeds` (ClipCap, nbutils.models.clipcap: generate() from `inputs_embeds`).

Facts this module relies on (see shared/FIELD_NOTES.md, captioning):
- `generate()` reads `model.generation_config`, not `model.config`: the start / pad / eos ids are taken
  from there and checked before generating.
- Settings not passed to `generate()` are filled from `model.generation_config`, so a checkpoint's own
  `num_beams` or `no_repeat_ngram_size` would leak in. Every setting in `ALLOWED` is therefore passed
  explicitly (neutral values where the decoding does not set one).
- `no_repeat_ngram_size` is never on by default: for Chinese characters it forbids a second "一个".
- A BertTokenizer decodes Chinese with spaces between the characters; `clean_caption` removes them.
- A barely trained captioner puts most of its probability on tokens it has only ever been fed: the start token
  ([CLS] repeated) and padding, which decoding would strip to an empty caption. Every preset therefore
  suppresses the start token (where it is fed) and the pad token, unless one of them is a stop token, plus the
  generation config's own `suppress_tokens`.
- A prefix captioner's conventions come from its config (nbutils.models.clipcap): whether a start token
  follows the prefix (`start_after_prefix`) and whether the stop token stays in the caption (`keep_stop_token`,
  the reference ClipCap's ".").
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from typing import Any

from ..data.captions import normalize_caption

ALLOWED = {
    "num_beams",
    "do_sample",
    "top_k",
    "top_p",
    "temperature",
    "repetition_penalty",
    "length_penalty",
    "min_new_tokens",
    "min_length",
    "max_new_tokens",
    "max_length",
    "num_return_sequences",
    "no_repeat_ngram_size",
    "early_stopping",
}

PRESETS: dict[str, dict[str, Any]] = {
    # Argmax at every step: deterministic, one caption. The reference for the other presets.
    "greedy": {"num_beams": 1, "do_sample": False, "max_new_tokens": 20},
    # The field notes' working defaults for a trained captioner: beam 3-5, 20-30 new tokens, at least ~5.
    # length_penalty 1.0 ranks beams by their mean log-probability per token.
    "beam": {
        "num_beams": 4,
        "do_sample": False,
        "max_new_tokens": 25,
        "min_new_tokens": 5,
        "length_penalty": 1.0,
    },
    # BLIP's beam decoding (salesforce/BLIP BLIP_Decoder.generate with configs/caption_coco.yaml): beam 3,
    # max_length 20, min_length 5, no repetition penalty. As there, the lengths count the whole decoder sequence,
    # start token and prompt included: with BLIP's prompt "a picture of " ([DEC] a picture of) at most 16 new tokens.
    "blip_beam": {
        "num_beams": 3,
        "do_sample": False,
        "max_length": 20,
        "min_length": 5,
        "repetition_penalty": 1.0,
    },
    # BLIP's nucleus sampling (the same generate, sample=True): top_p 0.9 with repetition_penalty 1.1, the same
    # lengths (top_k off, pure nucleus).
    "blip_nucleus": {
        "num_beams": 1,
        "do_sample": True,
        "top_p": 0.9,
        "top_k": 0,
        "repetition_penalty": 1.1,
        "max_length": 20,
        "min_length": 5,
    },
    # The original ViT-GPT2 notebook's `generate(num_beams=4, max_length=16)`, kept as it was: max_length
    # counts the whole decoder sequence (start token included), so at most 15 caption tokens.
    "original": {"num_beams": 4, "do_sample": False, "max_length": 16},
    # Top-k sampling at temperature 1: diverse captions (set `seed` for reproducible ones).
    "sample": {
        "num_beams": 1,
        "do_sample": True,
        "top_k": 50,
        "temperature": 1.0,
        "max_new_tokens": 20,
        "min_new_tokens": 5,
    },
}

# What generate() gets for a setting the decoding does not give (instead of the model's own value).
NEUTRAL: dict[str, Any] = {
    "num_beams": 1,
    "do_sample": False,
    "repetition_penalty": 1.0,
    "min_new_tokens": 0,
    "num_return_sequences": 1,
    "no_repeat_ngram_size": 0,
}
NEUTRAL_BEAM = {"length_penalty": 1.0, "early_stopping": False}  # only when num_beams > 1
NEUTRAL_SAMPLING = {"top_k": 0, "top_p": 1.0, "temperature": 1.0}  # only when do_sample

_COUNTS_POSITIVE = ("num_beams", "max_new_tokens", "max_length", "num_return_sequences")
_COUNTS_NON_NEGATIVE = ("top_k", "min_new_tokens", "min_length", "no_repeat_ngram_size")


def _unknown(kind: str, name: object, choices) -> ValueError:
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown decoding {kind} {name!r}{hint}; allowed: {', '.join(choices)}")


def _check(settings: dict[str, Any]) -> None:
    for key in _COUNTS_POSITIVE + _COUNTS_NON_NEGATIVE:
        if key not in settings:
            continue
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"decoding setting {key} must be an int, got {value!r}")
        low = 1 if key in _COUNTS_POSITIVE else 0
        if value < low:
            raise ValueError(f"decoding setting {key} must be >= {low}, got {value}")
    for key in ("top_p", "temperature", "repetition_penalty", "length_penalty"):
        if key in settings:
            value = settings[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"decoding setting {key} must be a finite number, got {value!r}")
    if "top_p" in settings and not 0 < settings["top_p"] <= 1:
        raise ValueError(f"decoding setting top_p must be in (0, 1], got {settings['top_p']}")
    for key in ("temperature", "repetition_penalty"):
        if key in settings and not settings[key] > 0:
            raise ValueError(f"decoding setting {key} must be > 0, got {settings[key]}")
    if "do_sample" in settings and not isinstance(settings["do_sample"], bool):
        raise ValueError(f"decoding setting do_sample must be True or False, got {settings['do_sample']!r}")
    if "early_stopping" in settings and settings["early_stopping"] not in (True, False, "never"):
        raise ValueError(
            f"decoding setting early_stopping must be True, False or 'never', got {settings['early_stopping']!r}"
        )
    if "max_new_tokens" in settings and "max_length" in settings:
        raise ValueError("give max_new_tokens or max_length, not both")
    if "min_new_tokens" in settings and "min_length" in settings:
        raise ValueError("give min_new_tokens or min_length, not both")
    if "max_new_tokens" not in settings and "max_length" not in settings:
        raise ValueError("decoding needs max_new_tokens or max_length")
    for low, high in (("min_new_tokens", "max_new_tokens"), ("min_length", "max_length")):
        if low in settings and high in settings and settings[low] > settings[high]:
            raise ValueError(f"{low} ({settings[low]}) is larger than {high} ({settings[high]})")
    beams, returned = settings.get("num_beams", 1), settings.get("num_return_sequences", 1)
    if not settings.get("do_sample", False) and returned > beams:
        raise ValueError(
            f"num_return_sequences ({returned}) must be <= num_beams ({beams}) without sampling: "
            "greedy and beam search have only num_beams distinct candidates"
        )


def resolve_decoding(decoding: str | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The checked generate() settings for a preset name or a settings dict, with `overrides` on top.

    A dict may name a starting preset: {"preset": "blip_beam", "num_beams": 5}; without one it starts
    from "greedy". Giving max_length removes a preset's max_new_tokens and the other way round; the same for
    min_length and min_new_tokens. The lengths count the start token and the prompt (as `generate()` counts
    a decoder's input ids), the `_new_tokens` settings only what comes after them.
    Unknown presets or settings and invalid values raise ValueError.
    """
    if isinstance(decoding, str):
        given: dict[str, Any] = {"preset": decoding}
    elif isinstance(decoding, Mapping):
        given = dict(decoding)
    else:
        raise ValueError(
            f"decoding must be a preset name or a dict of settings, got {type(decoding).__name__}"
        )
    given.update(overrides)
    preset = given.pop("preset", "greedy")
    if preset not in PRESETS:
        raise _unknown("preset", preset, PRESETS)
    for key in given:
        if key not in ALLOWED:
            raise _unknown("setting", key, ALLOWED)
    settings = dict(PRESETS[preset])
    if "max_length" in given and "max_new_tokens" not in given:
        settings.pop("max_new_tokens", None)
    if "max_new_tokens" in given and "max_length" not in given:
        settings.pop("max_length", None)
    if "min_length" in given and "min_new_tokens" not in given:
        settings.pop("min_new_tokens", None)
    if "min_new_tokens" in given and "min_length" not in given:
        settings.pop("min_length", None)
    settings.update(given)
    _check(settings)
    return settings


def decoding_request(decoding: str, max_new_tokens: int = 0, **overrides: Any) -> dict[str, Any]:
    """A notebook's decoding parameters as a `resolve_decoding` spec.

    `decoding` is a preset name or explicit settings as JSON ('{"preset": "beam", "num_beams": 5}');
    `max_new_tokens` (0: the preset's) and `overrides` (e.g. num_return_sequences) go on top.
    """
    text = decoding.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"decoding={decoding!r} is not valid JSON: {e}") from e
    else:
        spec = {"preset": text}
    spec.update(overrides)
    if max_new_tokens:
        spec["max_new_tokens"] = max_new_tokens
    return spec


def clean_caption(text: str) -> str:
    """A decoded caption as the metrics expect it: "一 个 红 色" -> "一个红色", Latin words keep their spaces.

    The same rule as the corpora's captions (`nbutils.data.captions.normalize_caption`): whitespace runs
    collapse to one space and spaces between CJK characters go.
    """
    return normalize_caption(text)


def _generation_ids(model) -> tuple[int, int, list[int]]:
    """(start, pad, eos ids) from `model.generation_config`, checked against the vocabulary.

    The start id is `decoder_start_token_id` for an encoder-decoder, `bos_token_id` for a decoder-only model.
    """
    config = getattr(model, "generation_config", None)
    start_name = "decoder_start_token_id" if model.config.is_encoder_decoder else "bos_token_id"
    if config is None:
        raise ValueError(f"model has no generation_config: set {start_name}, pad_token_id, eos_token_id")
    names = (start_name, "pad_token_id", "eos_token_id")
    missing = [name for name in names if getattr(config, name, None) is None]
    if missing:
        raise ValueError(
            f"model.generation_config.{', '.join(missing)} not set: generate() reads generation_config, "
            f"not config; set {start_name}, pad_token_id and eos_token_id there"
        )
    start, pad, eos = (getattr(config, name) for name in names)
    eos = list(eos) if isinstance(eos, list | tuple) else [eos]
    embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embeddings is None and hasattr(model, "decoder"):
        embeddings = model.decoder.get_output_embeddings()
    vocab = embeddings.weight.shape[0] if embeddings is not None else None
    for name, ids in ((start_name, [start]), ("pad_token_id", [pad]), ("eos_token_id", eos)):
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise ValueError(f"model.generation_config.{name} must be a token id, got {token!r}")
            if vocab is not None and token >= vocab:
                raise ValueError(
                    f"model.generation_config.{name} = {token} is outside the decoder's vocabulary "
                    f"(size {vocab}); a GPT-2 default of 50256 with a BERT vocabulary crashes generation"
                )
    return start, pad, eos


def _suppressed(model, start: int, pad: int, eos: list[int], start_fed: bool) -> list[int]:
    """The tokens a caption may never hold: the start token where it is fed, the pad token, and
    `generation_config.suppress_tokens`, less the stop tokens (GPT-2's one token is start, end and pad)."""
    tokens = {pad, *(model.generation_config.suppress_tokens or ())}
    if start_fed:
        tokens.add(start)
    return sorted(tokens - set(eos))


def _generate_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Every generate() setting explicit, without the ones the decoding mode ignores (which warn)."""
    kwargs = {**NEUTRAL, **settings}
    if kwargs["num_beams"] > 1:
        kwargs = {**NEUTRAL_BEAM, **kwargs}
    else:
        for key in NEUTRAL_BEAM:
            kwargs.pop(key, None)
    if kwargs["do_sample"]:
        kwargs = {**NEUTRAL_SAMPLING, **kwargs}
    else:
        for key in NEUTRAL_SAMPLING:
            kwargs.pop(key, None)
    return kwargs


def generate_captions(
    model,
    tokenizer,
    pixel_values=None,
    decoding: str | Mapping[str, Any] = "blip_beam",
    prompt: str = "",
    seed: int | None = None,
    image_embeds=None,
) -> list[list[dict[str, Any]]]:
    """Captions for a batch of images: for each image a list of num_return_sequences dicts, best first.

    `pixel_values`: (B, 3, H, W) floats, already normalised by the image processor, for an encoder-decoder;
    or `image_embeds` (B, D) for a prefix captioner (a model with `prefix_inputs_embeds`, e.g. ClipCap),
    which generates from the prefix, followed by the start token's embedding where its config says
    `start_after_prefix` (the default). Each dict has
    "caption" (decoded, special tokens skipped, cleaned by `clean_caption`), "score" (beam search: the
    beam's `sequences_scores`, i.e. summed log-probability / length ** length_penalty, after the logits
    processors; greedy and sampling: the mean log-probability the model gives the generated tokens,
    EOS included, from its raw logits) and "token_ids" (the caption's tokens: no prompt, no padding, no EOS
    unless the config says `keep_stop_token`).

    With a `prompt` (BLIP style, "a picture of "), its tokens follow the start token in
    `decoder_input_ids` and are cut from the results; min/max_new_tokens count the tokens after it.
    `seed` makes sampling reproducible without touching the global random state.
    """
    import torch

    settings = resolve_decoding(decoding)
    start, pad, eos = _generation_ids(model)
    prefix = image_embeds is not None
    images = image_embeds if prefix else pixel_values
    dims, expected = (2, "(B, D)") if prefix else (4, "(B, 3, H, W)")
    name = "image_embeds" if prefix else "pixel_values"
    if not isinstance(images, torch.Tensor) or images.ndim != dims or (not prefix and images.shape[1] != 3):
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"{name} must be a {expected} tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be floats, got {images.dtype}")
    batch = images.shape[0]
    if batch == 0:
        return []
    parameter = next(model.parameters())
    images = images.to(device=parameter.device, dtype=parameter.dtype)

    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
    start_fed = not prefix or getattr(model.config, "start_after_prefix", True)
    first = [start] if start_fed else []
    start_ids = torch.tensor([[*first, *prompt_ids]] * batch, dtype=torch.long, device=parameter.device)
    if "max_length" in settings and settings["max_length"] <= start_ids.shape[1]:
        raise ValueError(
            f"max_length {settings['max_length']} leaves no room after the start token and the "
            f"{len(prompt_ids)} prompt tokens"
        )

    kwargs = _generate_kwargs(settings)
    # Lengths count the start token and the prompt; generate() would also count a prefix captioner's prefix
    # embeddings, so every model gets them as new-token counts.
    if "max_length" in kwargs:
        kwargs["max_new_tokens"] = kwargs.pop("max_length") - start_ids.shape[1]
    if "min_length" in kwargs:
        kwargs["min_new_tokens"] = max(kwargs.pop("min_length") - start_ids.shape[1], 0)
    kwargs["suppress_tokens"] = _suppressed(model, start, pad, eos, start_fed) or None
    devices = [parameter.device] if parameter.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if prefix:
            # From embeddings alone, generate() returns only the new tokens (nothing of the input to cut).
            embeds = model.prefix_inputs_embeds(images, start_ids)
            inputs = {"inputs_embeds": embeds, "attention_mask": start_ids.new_ones(embeds.shape[:2])}
            fed = 0
        else:
            # decoder_attention_mask all ones (nothing is padded); without it the decoder warns once about
            # "padding" when a finished sequence's pad tokens are fed back
            inputs = {
                "pixel_values": images,
                "decoder_input_ids": start_ids,
                "decoder_attention_mask": torch.ones_like(start_ids),
            }
            fed = start_ids.shape[1]
        output = model.generate(
            **inputs,
            use_cache=True,
            return_dict_in_generate=True,
            output_scores=True,
            output_logits=True,
            **kwargs,
        )
    sequences = output.sequences
    generated = sequences[:, fed:]
    is_eos = torch.isin(generated, torch.tensor(eos, device=generated.device))
    # tokens up to and including the first EOS; the pads after it are not the caption's
    before_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0
    if kwargs["num_beams"] > 1:
        scores = output.sequences_scores
    else:
        # The model's own log-probabilities (raw logits): the processed scores are renormalised after
        # top-p / top-k, where a token that was the only candidate left gets log-prob 0. One per generated
        # token; where they are not the caption's (pads after EOS) they are replaced, not multiplied by 0.
        steps = model.compute_transition_scores(sequences, output.logits, normalize_logits=True)
        total = torch.where(before_eos, steps, torch.zeros_like(steps)).sum(dim=1)
        scores = total / before_eos.sum(dim=1).clamp(min=1)
    kept = before_eos if getattr(model.config, "keep_stop_token", False) else before_eos & ~is_eos
    token_ids = [row[keep].tolist() for row, keep in zip(generated, kept)]
    texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)

    per_image = len(token_ids) // batch
    results = []
    for image in range(batch):
        rows = range(image * per_image, (image + 1) * per_image)
        candidates = [
            {"caption": clean_caption(texts[i]), "score": float(scores[i]), "token_ids": token_ids[i]}
            for i in rows
        ]
        candidates.sort(key=lambda c: c["score"], reverse=True)  # stable: generate()'s order among ties
        results.append(candidates)
    return results
