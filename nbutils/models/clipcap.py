"""ClipCap (arXiv 2111.09734): a CLIP image embedding, mapped to a prefix of GPT-2 input embeddings, then a caption.

    CLIP image embedding (B, prefix_dim) --mapper--> prefix (B, prefix_len, n_embd) --GPT-2--> caption tokens

`ClipCapModel` is a `GPT2LMHeadModel` with one extra module, `mapper`, so everything GPT-2 has keeps working:
`generate()` with the key/value cache, beams and sampling (from `inputs_embeds`), weight tying, and the
GPT-2 weights loading by their usual names. Mappers, chosen by `config.mapping`:

    "mlp"          the paper's: Linear(prefix_dim, n_embd·K/2) -> Tanh -> Linear(-, n_embd·K)
    "linear"       one Linear(prefix_dim, n_embd·K): the reference predict.py's mapper when prefix_length > 10
    "transformer"  the paper's Transformer mapper: the embedding projected to K tokens, followed by
                   `constant_len` learned constant tokens, through `mapping_layers` pre-LayerNorm layers
                   (torch's own TransformerEncoderLayer); the output is the last K positions
    "bert"         the Chinese port's: the same sequence through a BERT encoder (transformers' BertModel)

Token conventions live in the config, so training, `generate_captions`, infer and the caption browser all
read them from the model:

    start_after_prefix  True: [prefix] [start] caption... (this project's models, the start token from
                        `caption_special_ids`); False: [prefix] caption..., the last prefix position predicting
                        the first word (the reference and the Chinese port)
    eos_token_id        the stop token(s): the tokenizer's end token ([SEP], <|endoftext|>), or "." (id 13 in
                        English GPT-2) for the reference, which never trained an end token
    keep_stop_token     whether the stop token stays in the caption (the reference keeps its ".")

Training predicts caption... [stop]; the loss covers the caption and its stop token only, never the prefix,
the start token or padding. Checkpoints of the reference implementations import with
`nbutils.models.clipcap_import`, which sets their conventions.
A saved model is a standard folder (config.json + model.safetensors); plain `AutoModelForCausalLM` loads it
after `import nbutils.models.clipcap`, and `GPT2LMHeadModel.from_pretrained` loads its language model alone.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)
from transformers import initialization as init

from ..data.datasets import CaptionCollator
from ..files import save_pretrained_folder
from .tokenizer import caption_special_ids

MODEL_TYPE = "nbutils_clipcap"
MAPPINGS = ("mlp", "linear", "transformer", "bert")
SEQUENCE_MAPPINGS = ("transformer", "bert")  # the mappers with constant tokens, layers and heads


class ClipCapConfig(GPT2Config):
    """GPT-2's config plus the mapper's: `prefix_dim` (the CLIP embedding size), `prefix_len` (K, the prefix
    tokens GPT-2 sees), `mapping`, `constant_len`, `mapping_layers` and `mapping_heads` (transformer / bert),
    and `normalize_prefix` (L2-normalise the CLIP embedding first, the reference's --normalize_prefix).
    `clip_model`: the CLIP model (folder or hub id) that made the embeddings it was trained on, so that a saved
    model can caption new images (nbutils.models.captioners). `start_after_prefix` and `keep_stop_token`: the
    token conventions (module docstring); the stop tokens are `eos_token_id`."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        prefix_dim: int = 512,
        prefix_len: int = 10,
        mapping: str = "mlp",
        constant_len: int = 10,
        mapping_layers: int = 8,
        mapping_heads: int = 8,
        normalize_prefix: bool = False,
        clip_model: str = "",
        start_after_prefix: bool = True,
        keep_stop_token: bool = False,
        **kwargs,
    ):
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
        for name, value in (("prefix_dim", prefix_dim), ("prefix_len", prefix_len)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if mapping in SEQUENCE_MAPPINGS and (constant_len < 0 or mapping_layers < 1 or mapping_heads < 1):
            raise ValueError(
                f"mapping={mapping!r} needs constant_len >= 0, mapping_layers >= 1 and mapping_heads >= 1"
            )
        self.prefix_dim, self.prefix_len, self.mapping = prefix_dim, prefix_len, mapping
        self.constant_len, self.mapping_layers, self.mapping_heads = (
            constant_len,
            mapping_layers,
            mapping_heads,
        )
        self.normalize_prefix = normalize_prefix
        self.clip_model = clip_model  # the CLIP (folder or hub id) whose image embeddings this model reads
        self.start_after_prefix, self.keep_stop_token = start_after_prefix, keep_stop_token
        super().__init__(**kwargs)
        if mapping in SEQUENCE_MAPPINGS and self.n_embd % mapping_heads:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of mapping_heads={mapping_heads}")


class MlpMapper(nn.Sequential):
    """The paper's MLP: (B, prefix_dim) -> (B, K · n_embd), one hidden layer of half the output width, Tanh."""

    def __init__(self, config: ClipCapConfig):
        out = config.n_embd * config.prefix_len
        super().__init__(nn.Linear(config.prefix_dim, out // 2), nn.Tanh(), nn.Linear(out // 2, out))


class TransformerMapper(nn.Module):
    """(B, prefix_dim) -> K projected tokens + `constant_len` learned tokens -> a transformer -> the last K.

    `encoder` is "transformer" (pre-LayerNorm layers, ReLU MLP of twice the width, as the reference's mapper)
    or "bert" (a BertModel over the same sequence, as the Chinese port).
    """

    def __init__(self, config: ClipCapConfig, encoder: str = "transformer"):
        super().__init__()
        dim, self.prefix_len = config.n_embd, config.prefix_len
        self.linear = nn.Linear(config.prefix_dim, config.prefix_len * dim)
        self.constants = nn.Parameter(torch.randn(config.constant_len, dim))
        self.encoder = encoder
        if encoder == "transformer":
            layer = nn.TransformerEncoderLayer(
                dim,
                config.mapping_heads,
                dim_feedforward=2 * dim,
                dropout=0.0,
                activation="relu",
                batch_first=True,
                norm_first=True,
            )
            self.transformer = nn.TransformerEncoder(layer, config.mapping_layers, enable_nested_tensor=False)
        else:
            bert = BertConfig(
                vocab_size=1,  # fed inputs_embeds only
                hidden_size=dim,
                num_hidden_layers=config.mapping_layers,
                num_attention_heads=config.mapping_heads,
                intermediate_size=4 * dim,
                max_position_embeddings=config.prefix_len + config.constant_len,
            )
            # no pooler: it would be a parameter without a gradient (DDP stops on those)
            self.transformer = BertModel(bert, add_pooling_layer=False)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        batch = image_embeds.shape[0]
        tokens = self.linear(image_embeds).view(batch, self.prefix_len, -1)
        sequence = torch.cat([tokens, self.constants.unsqueeze(0).expand(batch, -1, -1)], dim=1)
        if self.encoder == "transformer":
            out = self.transformer(sequence)
        else:
            out = self.transformer(inputs_embeds=sequence).last_hidden_state
        return out[:, -self.prefix_len :]


class ClipCapModel(GPT2LMHeadModel):
    """GPT-2 with a `mapper` from a CLIP image embedding to `prefix_len` input embeddings (module docstring)."""

    config_class = ClipCapConfig

    def __init__(self, config: ClipCapConfig):
        super().__init__(config)
        if config.mapping == "mlp":
            self.mapper = MlpMapper(config)
        elif config.mapping == "linear":  # one layer: (B, prefix_dim) -> (B, K · n_embd)
            self.mapper = nn.Linear(config.prefix_dim, config.n_embd * config.prefix_len)
        else:
            self.mapper = TransformerMapper(config, config.mapping)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        # Parameters outside nn.Linear / LayerNorm / Embedding, which GPT-2's init does not know.
        # transformers' init functions skip tensors from_pretrained has loaded.
        if isinstance(module, TransformerMapper):
            init.normal_(module.constants, std=1.0)
        elif isinstance(module, nn.MultiheadAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)

    def prefix(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(B, prefix_dim) CLIP embeddings -> (B, prefix_len, n_embd) GPT-2 input embeddings."""
        image_embeds = image_embeds.to(self.lm_head.weight.dtype)
        if self.config.normalize_prefix:
            image_embeds = F.normalize(image_embeds, dim=-1)
        return self.mapper(image_embeds).view(len(image_embeds), self.config.prefix_len, self.config.n_embd)

    def prefix_inputs_embeds(self, image_embeds: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The prefix followed by the embeddings of `input_ids` (B, T): (B, prefix_len + T, n_embd)."""
        return torch.cat([self.prefix(image_embeds), self.transformer.wte(input_ids)], dim=1)

    def forward(self, input_ids=None, image_embeds=None, attention_mask=None, inputs_embeds=None, **kwargs):
        """With `image_embeds`: logits for [prefix] + `input_ids` (the first prefix_len positions are the
        prefix's); `attention_mask` covers `input_ids` only. Without: plain GPT-2 (generate()'s later steps)."""
        if image_embeds is not None:
            inputs_embeds = self.prefix_inputs_embeds(image_embeds, input_ids)
            input_ids = None
            if attention_mask is not None:
                ones = attention_mask.new_ones(len(attention_mask), self.config.prefix_len)
                attention_mask = torch.cat([ones, attention_mask], dim=1)
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.transformer.parameters()):
            self.transformer.eval()  # a frozen GPT-2 runs without dropout, like the reference's mapper-only mode
        return self


AutoConfig.register(MODEL_TYPE, ClipCapConfig, exist_ok=True)
AutoModelForCausalLM.register(ClipCapConfig, ClipCapModel, exist_ok=True)


def freeze_language_model(model: ClipCapModel, freeze: bool = True) -> dict:
    """`requires_grad_(False)` on GPT-2 (embeddings, blocks and the tied head) when `freeze`: no gradient is
    computed for it and the optimizer never sees it. Returns {"trainable", "frozen", "total"} parameter counts."""
    if freeze:
        model.transformer.requires_grad_(False)
        model.lm_head.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


# -----------------------------------------------------------------------------
# build, load, save


@dataclass
class ClipCapBundle:
    """A ClipCap model with its tokenizer (the image side is the CLIP that made the embeddings)."""

    model: Any
    tokenizer: Any


def set_caption_token_ids(model, tokenizer) -> dict[str, int]:
    """The tokenizer's start / end / pad ids into the config and the generation config (generate() reads the latter)."""
    ids = caption_special_ids(tokenizer)
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id, config.pad_token_id = ids["start"], ids["end"], ids["pad"]
    return ids


def caption_collator(bundle: ClipCapBundle, max_length: int) -> CaptionCollator:
    """The training collator for this model's token conventions: a start token after the prefix or none, and
    its first stop token as every caption's last label."""
    config = bundle.model.config
    stop = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    start = config.bos_token_id if config.start_after_prefix else None
    return CaptionCollator(bundle.tokenizer, start, stop, config.pad_token_id, max_length)


MAPPER_FIELDS = (
    "prefix_len",
    "mapping",
    "constant_len",
    "mapping_layers",
    "mapping_heads",
    "normalize_prefix",
)


def mapper_settings(prefix_dim: int, **settings) -> dict:
    """The ClipCapConfig fields of the mapper: `settings` (keys of MAPPER_FIELDS), the config's defaults for the
    rest; checked (ValueError names the bad one)."""
    unknown = set(settings) - set(MAPPER_FIELDS)
    if unknown:
        raise TypeError(f"mapper_settings: {', '.join(sorted(unknown))} not among {', '.join(MAPPER_FIELDS)}")
    defaults = inspect.signature(ClipCapConfig.__init__).parameters
    settings = {"prefix_dim": prefix_dim, **{k: settings.get(k, defaults[k].default) for k in MAPPER_FIELDS}}
    n_embd = settings["mapping_heads"] * 8 if settings["mapping"] in SEQUENCE_MAPPINGS else 8
    ClipCapConfig(**settings, n_embd=n_embd)  # raises on bad values
    return settings


def build_demo_clipcap(
    tokenizer,
    mapper: dict,
    hidden_size: int = 128,
    layers: int = 1,
    num_heads: int = 4,
    max_length: int = 64,
    dropout: float = 0.0,
) -> ClipCapBundle:
    """A small random GPT-2 (from a config, vocabulary from `tokenizer`) with a fresh mapper (`mapper_settings`).

    `max_length` counts caption tokens; the position table also holds the prefix. Weights start at std
    1/sqrt(hidden_size), as the demo captioner's (the config's 0.02 is tuned for width 768).
    """
    ids = caption_special_ids(tokenizer)
    config = ClipCapConfig(
        **mapper,
        bos_token_id=ids["start"],
        eos_token_id=ids["end"],
        pad_token_id=ids["pad"],
        vocab_size=len(tokenizer),
        n_positions=mapper["prefix_len"] + max_length,
        n_embd=hidden_size,
        n_layer=layers,
        n_head=num_heads,
        n_inner=4 * hidden_size,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        initializer_range=hidden_size**-0.5,
    )
    model = ClipCapModel(config)
    set_caption_token_ids(model, tokenizer)
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_length)
    return ClipCapBundle(model, tokenizer)


def load_clipcap_language_model(language_model: str | os.PathLike, mapper: dict) -> ClipCapBundle:
    """A pretrained GPT-2 (hub id or folder, with its tokenizer) under a fresh mapper (`mapper_settings`)."""
    from transformers import AutoTokenizer

    from .model_names import resolve_model_name

    language_model = os.fspath(language_model)
    name = resolve_model_name(language_model, "language_model")
    try:
        gpt2 = GPT2LMHeadModel.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load language_model={language_model!r} as GPT-2: {e}") from e
    gpt2_config = gpt2.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        gpt2_config.pop(key, None)
    model = ClipCapModel(ClipCapConfig(**mapper, **gpt2_config))
    missing, unexpected = model.load_state_dict(gpt2.state_dict(), strict=False)
    if unexpected or any(not key.startswith("mapper.") for key in missing):
        raise ValueError(f"{language_model}: GPT-2 weights do not fit ({missing[:3]}, {unexpected[:3]})")
    set_caption_token_ids(model, tokenizer)
    return ClipCapBundle(model, tokenizer)


def save_clipcap(bundle: ClipCapBundle, out_dir: str | os.PathLike) -> Path:
    """Write model (config with the mapper's settings) and tokenizer into one folder, atomically."""
    return save_pretrained_folder(out_dir, bundle.model, bundle.tokenizer)


def load_saved_clipcap(path: str | os.PathLike) -> ClipCapBundle:
    """Reload a folder written by `save_clipcap`."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r} is not a saved model folder (no config.json)")
    model = ClipCapModel.from_pretrained(path)
    return ClipCapBundle(model, AutoTokenizer.from_pretrained(path))
