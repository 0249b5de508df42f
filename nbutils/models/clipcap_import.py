"""Checkpoints of the two public ClipCap implementations, imported as ClipCapModel with their own conventions.

    python -m nbutils.models.clipcap_import coco_weights.pt models/clipcap_coco \\
        --tokenizer gpt2 --clip-model openai/clip-vit-base-patch32
    python -m nbutils.models.clipcap_import checkpoint-45000.pt models/clipcap_zh \\
        --tokenizer uer/gpt2-chinese-cluecorpussmall --clip-model openai/clip-vit-base-patch32

The folder written is a standard ClipCap folder (nbutils.models.clipcap): `infer` captions with it like with any
trained captioner. Both implementations save a plain `torch.save(model.state_dict())`; the layout tells them apart:

    rmokady/CLIP_prefix_caption (train.py / predict.py, `ClipCaptionModel`):
        gpt.*                                  GPT2LMHeadModel
        clip_project.model.{0,2}.*             the MLP (Linear, Tanh, Linear)
        clip_project.{weight,bias}             predict.py's plain Linear mapper (prefix_length > 10)
        clip_project.linear.*, clip_project.prefix_const,
        clip_project.transformer.layers.N.{norm1, attn.to_queries, attn.to_keys_values, attn.project,
                                           norm2, mlp.fc1, mlp.fc2}.*        the Transformer mapper
    yangjianxin1/ClipCap-Chinese (models/model.py, `ClipCaptionModel`):
        gpt2.*                                 GPT2LMHeadModel (a BERT-vocabulary Chinese GPT-2)
        clip_project.bert.*, clip_project.linear.*, clip_project.prefix_const     the BERT mapper (`BertMapper`)
        clip_project.model.{0,2}.*             the MLP

What a checkpoint holds (mapper kind, depth, prefix length, constant tokens, CLIP width, GPT-2 size) is read from
its keys and shapes; a `config` given by the caller is checked against that reading and refused by name where it
differs. What the weights cannot tell (attention heads: GPT-2's and the mapper's) are parameters.

Conventions, from the implementations' own code (shared/FIELD_NOTES.md, ClipCap):
- Neither feeds a start token: train.py tokenises with `tokenizer.encode(caption)` and the port with
  `add_special_tokens=False`; both generators start from the prefix embeddings alone.
- The reference stops at "." (predict.py `stop_token="."`, token 13 of English GPT-2), which it never trained as
  an end token but which ends COCO's captions, and keeps it in the caption. The port stops at [SEP], which it
  appends to every training caption, and drops it; its sampler also never emits [UNK].
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .clipcap import SEQUENCE_MAPPINGS, ClipCapBundle, ClipCapConfig, ClipCapModel, save_clipcap
from .tokenizer import caption_special_ids

SOURCES = {"gpt.": "CLIP_prefix_caption", "gpt2.": "ClipCap-Chinese"}  # language model key prefix -> source
GPT2_HEADS = 12  # GPT-2 base and uer/gpt2-chinese-cluecorpussmall; weights do not show the number of heads
MAPPER_HEADS = 8  # both implementations: the reference's Transformer(dim, 8, ...), the port's bert config
STOP_TOKEN = "."  # the reference's predict.py `stop_token`


@dataclass
class ReferenceCheckpoint:
    """A reference checkpoint's weights split by module, and what its keys and shapes say about the model."""

    source: str  # "CLIP_prefix_caption" or "ClipCap-Chinese"
    language_model: dict  # GPT2LMHeadModel's state dict
    mapper: dict  # clip_project's state dict
    settings: dict  # ClipCapConfig fields read from the weights


def read_reference_checkpoint(state_dict: dict) -> ReferenceCheckpoint:
    """Split a reference state dict (module docstring) and read its model settings from keys and shapes."""
    mapper = _with_prefix(state_dict, "clip_project.")
    source = next((name for prefix, name in SOURCES.items() if _with_prefix(state_dict, prefix)), None)
    if not mapper or source is None:
        raise ValueError(
            "not a ClipCap checkpoint of rmokady/CLIP_prefix_caption (clip_project.* and gpt.* keys) or "
            "yangjianxin1/ClipCap-Chinese (clip_project.* and gpt2.* keys); its keys start with "
            + ", ".join(sorted({k.split(".")[0] + "." for k in state_dict})[:5])
        )
    language_model = _with_prefix(state_dict, "gpt2." if source == "ClipCap-Chinese" else "gpt.")
    if "transformer.wte.weight" not in language_model:
        raise ValueError(f"the {source} checkpoint has no GPT-2 token embeddings (transformer.wte.weight)")
    vocab_size, n_embd = language_model["transformer.wte.weight"].shape
    n_inner = language_model["transformer.h.0.mlp.c_fc.weight"].shape[1]  # Conv1D: (in, out)
    settings = {
        "vocab_size": vocab_size,
        "n_embd": n_embd,
        "n_positions": language_model["transformer.wpe.weight"].shape[0],
        "n_layer": _count_layers(language_model, "transformer.h."),
        "n_inner": None if n_inner == 4 * n_embd else n_inner,  # GPT2Config's None means 4 · n_embd
        **_mapper_settings(mapper, n_embd),
    }
    return ReferenceCheckpoint(source, language_model, mapper, settings)


def import_reference_state_dict(
    state_dict: dict,
    tokenizer,
    config: ClipCapConfig | None = None,
    n_head: int = GPT2_HEADS,
    mapping_heads: int = MAPPER_HEADS,
    normalize_prefix: bool = False,
) -> ClipCapModel:
    """A ClipCapModel holding a reference checkpoint's weights, with that implementation's conventions.

    `state_dict` as `torch.load(path, weights_only=True)` returns it. Without `config` the model is built from
    what the checkpoint holds plus `n_head`, `mapping_heads` and `normalize_prefix` (the reference's
    --normalize_prefix, which the weights do not record). A `config` is checked field by field against the
    checkpoint: a stated mapping, depth, prefix length or size that differs is a ValueError naming the field.
    `tokenizer` is the GPT-2's (English `gpt2` for the reference, a BERT vocabulary for the port): the stop
    token's id comes from it.
    """
    checkpoint = read_reference_checkpoint(state_dict)
    conventions, suppress = _conventions(checkpoint.source, tokenizer)
    if config is None:
        given = {"n_head": n_head, "mapping_heads": mapping_heads, "normalize_prefix": normalize_prefix}
        config = ClipCapConfig(**checkpoint.settings, **given, **conventions)
    else:
        _check_stated(config, checkpoint)
        config = ClipCapConfig.from_dict({**config.to_dict(), **conventions})
    model = ClipCapModel(config)
    model.generation_config.suppress_tokens = suppress or None
    weights = dict(checkpoint.language_model)
    weights.setdefault("lm_head.weight", weights["transformer.wte.weight"])  # tied, as in GPT2LMHeadModel
    weights.update({f"mapper.{k}": v for k, v in _convert_mapper(checkpoint, config).items()})
    expected = model.state_dict()
    wrong = [k for k in weights if k in expected and weights[k].shape != expected[k].shape]
    if wrong:
        shapes = ", ".join(f"{k}: {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3])
        raise ValueError(f"the checkpoint does not fit the config ({shapes})")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # GPT-2's attention buffers (masked_bias, bias) are in checkpoints of older transformers; nothing else may be
    # left over, and nothing may be missing
    unexpected = [k for k in unexpected if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint does not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()


def import_reference_checkpoint(
    checkpoint: str | os.PathLike,
    tokenizer_source: str | os.PathLike,
    out_dir: str | os.PathLike,
    clip_model: str,
    n_head: int = GPT2_HEADS,
    mapping_heads: int = MAPPER_HEADS,
    normalize_prefix: bool = False,
) -> Path:
    """Read a reference `.pt` file (weights only, never unpickling code), import it, and save a ClipCap folder
    with the tokenizer of `tokenizer_source` and `clip_model` (the CLIP whose image embeddings it was trained
    on, e.g. openai/clip-vit-base-patch32 for both implementations' published weights). Returns the folder."""
    from transformers import AutoTokenizer

    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer_source))
    model = import_reference_state_dict(state_dict, tokenizer, None, n_head, mapping_heads, normalize_prefix)
    model.config.clip_model = clip_model
    return save_clipcap(ClipCapBundle(model, tokenizer), out_dir)


# -----------------------------------------------------------------------------
# reading a checkpoint


def _with_prefix(state_dict: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _count_layers(weights: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in weights if (m := pattern.match(k))})


def _mapper_settings(mapper: dict, n_embd: int) -> dict:
    """The mapper's kind, prefix length, constant tokens, depth and input width, read from its weights."""
    if "model.0.weight" in mapper:
        kind, first, last = "mlp", mapper["model.0.weight"], mapper["model.2.weight"]
        return _settings(kind, first.shape[1], last.shape[0], n_embd)
    if "weight" in mapper:
        return _settings("linear", mapper["weight"].shape[1], mapper["weight"].shape[0], n_embd)
    if "prefix_const" not in mapper or "linear.weight" not in mapper:
        raise ValueError(f"unknown ClipCap mapper layout (clip_project.{sorted(mapper)[0]}, ...)")
    projected = mapper["linear.weight"].shape[0] // n_embd
    constants = mapper["prefix_const"].shape[0]
    if any(k.startswith("bert.") for k in mapper):
        kind, layers = "bert", _count_layers(mapper, "bert.encoder.layer.")
        # BertMapper outputs its last constant_len positions but GPT-2 reads them as prefix_len tokens
        what = "the port's BertMapper projects to {} tokens but has {} constant tokens"
    else:
        kind, layers = "transformer", _count_layers(mapper, "transformer.layers.")
        # the reference outputs the prefix_length constant positions after clip_length projected tokens
        what = "the reference's Transformer mapper projects to {} tokens (clip_length) but has {} constant tokens"
    if projected != constants:
        raise ValueError(
            what.format(projected, constants) + "; only checkpoints with the two equal (as in both "
            "implementations' published settings) map onto this project's mapper"
        )
    settings = _settings(kind, mapper["linear.weight"].shape[1], projected * n_embd, n_embd)
    return {**settings, "constant_len": constants, "mapping_layers": layers}


def _settings(mapping: str, prefix_dim: int, out_features: int, n_embd: int) -> dict:
    if out_features % n_embd:
        raise ValueError(
            f"the {mapping} mapper's output ({out_features}) is not a multiple of n_embd={n_embd}"
        )
    return {"mapping": mapping, "prefix_dim": prefix_dim, "prefix_len": out_features // n_embd}


def _check_stated(config: ClipCapConfig, checkpoint: ReferenceCheckpoint) -> None:
    """Refuse, by name, every setting of `config` that differs from what the checkpoint holds."""
    found = dict(checkpoint.settings)
    stated = {key: getattr(config, key) for key in found}
    if stated["n_inner"] == 4 * config.n_embd:
        stated["n_inner"] = None
    if found["mapping"] not in SEQUENCE_MAPPINGS:  # constant tokens and depth mean nothing for mlp / linear
        stated.pop("constant_len", None), stated.pop("mapping_layers", None)
    wrong = [key for key in stated if stated[key] != found[key]]
    if wrong:
        raise ValueError(
            "the config does not describe this checkpoint: "
            + "; ".join(f"config.{k}={stated[k]!r} but the checkpoint has {found[k]!r}" for k in wrong)
        )


def _conventions(source: str, tokenizer) -> tuple[dict, list[int]]:
    """The implementation's token conventions (module docstring) as ClipCapConfig fields, and the tokens its
    generator never emits; ids from `tokenizer`."""
    ids = caption_special_ids(tokenizer)
    # bos is not fed (start_after_prefix is False) but generate() and the config want a valid id
    fields = {"start_after_prefix": False, "bos_token_id": ids["start"]}
    if source == "CLIP_prefix_caption":
        stop = tokenizer(STOP_TOKEN, add_special_tokens=False).input_ids[0]
        # pad: what generate() appends to captions finished before the batch's last one
        return {**fields, "eos_token_id": stop, "pad_token_id": stop, "keep_stop_token": True}, []
    fields.update({"eos_token_id": ids["end"], "pad_token_id": ids["pad"], "keep_stop_token": False})
    return fields, [tokenizer.unk_token_id] if tokenizer.unk_token_id is not None else []


# -----------------------------------------------------------------------------
# mapper weights under this project's names


def _convert_mapper(checkpoint: ReferenceCheckpoint, config: ClipCapConfig) -> dict:
    mapper = checkpoint.mapper
    if config.mapping == "mlp":
        return {name.replace("model.", "", 1): value for name, value in mapper.items()}
    if config.mapping == "linear":
        return dict(mapper)
    if config.mapping == "transformer":
        return _convert_transformer(mapper, config)
    return _convert_bert(mapper, config)


def _convert_transformer(mapper: dict, config: ClipCapConfig) -> dict:
    """The reference's Transformer mapper under TransformerMapper's names (torch's encoder layers)."""
    dim = config.n_embd
    hidden = mapper["transformer.layers.0.mlp.fc1.weight"].shape[0]
    if hidden != 2 * dim:
        raise ValueError(
            f"the Transformer mapper's MLP is {hidden} wide; this project's is 2 · n_embd = {2 * dim}"
        )
    out = {"linear.weight": mapper["linear.weight"], "linear.bias": mapper["linear.bias"]}
    out["constants"] = mapper["prefix_const"]
    for i in range(config.mapping_layers):
        layer = f"transformer.layers.{i}."  # the same prefix in both layouts
        queries = mapper[layer + "attn.to_queries.weight"]
        keys_values = mapper[layer + "attn.to_keys_values.weight"]  # rows: keys then values
        out[layer + "self_attn.in_proj_weight"] = torch.cat([queries, keys_values])
        # the reference's query / key / value projections have no bias
        out[layer + "self_attn.in_proj_bias"] = queries.new_zeros(3 * dim)
        out[layer + "self_attn.out_proj.weight"] = mapper[layer + "attn.project.weight"]
        out[layer + "self_attn.out_proj.bias"] = mapper[layer + "attn.project.bias"]
        for ours, theirs in (
            ("norm1", "norm1"),
            ("norm2", "norm2"),
            ("linear1", "mlp.fc1"),
            ("linear2", "mlp.fc2"),
        ):
            out[layer + f"{ours}.weight"] = mapper[layer + f"{theirs}.weight"]
            out[layer + f"{ours}.bias"] = mapper[layer + f"{theirs}.bias"]
    return out


def _convert_bert(mapper: dict, config: ClipCapConfig) -> dict:
    """The port's BertMapper under TransformerMapper's names. Its BertModel is fed `inputs_embeds`, so the word
    embeddings (21,128 rows) and the pooler are never used: this project's BERT mapper has neither (one zero row
    stands for the words), and only the first prefix_len + constant_len positions are kept."""
    dim = config.n_embd
    hidden = mapper["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]
    if hidden != 4 * dim:
        raise ValueError(f"the BERT mapper's MLP is {hidden} wide; this project's is 4 · n_embd = {4 * dim}")
    out = {"linear.weight": mapper["linear.weight"], "linear.bias": mapper["linear.bias"]}
    out["constants"] = mapper["prefix_const"]
    positions = config.prefix_len + config.constant_len
    for name, value in mapper.items():
        if not name.startswith("bert.") or name.startswith("bert.pooler."):
            continue
        ours = "transformer." + name[len("bert.") :]
        if name == "bert.embeddings.word_embeddings.weight":
            value = value.new_zeros(1, dim)
        elif name == "bert.embeddings.position_embeddings.weight":
            value = value[:positions]
        elif name.endswith(("position_ids", "token_type_ids")):  # buffers of older transformers
            continue
        out[ours] = value
    return out


def main(argv=None) -> int:
    """`python -m nbutils.models.clipcap_import CHECKPOINT OUT_DIR --tokenizer ... --clip-model ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m nbutils.models.clipcap_import",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="the reference's .pt file (a state dict)")
    parser.add_argument("out_dir", help="where the ClipCap folder is written")
    parser.add_argument("--tokenizer", required=True, help="hub id or folder of the GPT-2's tokenizer")
    parser.add_argument("--clip-model", required=True, help="the CLIP (hub id or folder) it was trained on")
    parser.add_argument("--n-head", type=int, default=GPT2_HEADS, help="GPT-2's attention heads")
    parser.add_argument(
        "--mapping-heads", type=int, default=MAPPER_HEADS, help="the mapper's attention heads"
    )
    parser.add_argument(
        "--normalize-prefix", action="store_true", help="it was trained with --normalize_prefix"
    )
    args = parser.parse_args(argv)
    try:
        path = import_reference_checkpoint(
            args.checkpoint,
            args.tokenizer,
            args.out_dir,
            args.clip_model,
            args.n_head,
            args.mapping_heads,
            args.normalize_prefix,
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
