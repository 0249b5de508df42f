"""The two public ClipCap implementations, rewritten for the tests from reading their code (nothing copied).

Read in the fetched repositories:
- rmokady/CLIP_prefix_caption (commit 1ad805a): train.py `ClipCaptionModel`, `MLP`, `TransformerMapper`,
  `Transformer`, `TransformerLayer`, `MultiHeadAttention`, `MlpTransformer` and the loss in `train()`;
  predict.py `ClipCaptionModel` (a plain `nn.Linear` mapper when prefix_length > 10), `generate2`,
  `generate_beam`.
- yangjianxin1/ClipCap-Chinese (commit fd10945): models/model.py `ClipCaptionModel`, `BertMapper`;
  predict.py `generate`, `topk_filtering`; dataset.py `ClipCapDataset` (caption ids + [SEP], no [CLS]).

The models hold their weights under the implementations' own names (`gpt.*` / `gpt2.*`, `clip_project.*`), so
`state_dict()` is what their checkpoints hold. The generators are the implementations' algorithms: one image at a
time (the port: a batch), GPT-2 re-run over the whole prefix + caption at every step.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2LMHeadModel

# -----------------------------------------------------------------------------
# rmokady/CLIP_prefix_caption: models


class ReferenceMlp(nn.Module):
    """train.py `MLP`: Linear layers with Tanh between them, held in `model` (keys model.0, model.2)."""

    def __init__(self, sizes):
        super().__init__()
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class ReferenceAttention(nn.Module):
    """train.py `MultiHeadAttention` (self-attention use): queries from one linear, keys and values from another
    whose output rows are keys then values, no bias on either (TransformerLayer passes bias=False), a biased
    output projection."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q = self.to_queries(x).reshape(b, n, self.heads, c // self.heads)
        kv = self.to_keys_values(x).reshape(b, n, 2, self.heads, c // self.heads)
        k, v = kv[:, :, 0], kv[:, :, 1]
        attention = (torch.einsum("bnhd,bmhd->bnmh", q, k) * self.scale).softmax(dim=2)
        return self.project(torch.einsum("bnmh,bmhd->bnhd", attention, v).reshape(b, n, c))


class ReferenceMlpBlock(nn.Module):
    """train.py `MlpTransformer`: fc1, ReLU, fc2."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class ReferenceLayer(nn.Module):
    """train.py `TransformerLayer`: pre-LayerNorm attention and MLP, each added to the residual."""

    def __init__(self, dim, heads, mlp_ratio=2.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), ReferenceAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), ReferenceMlpBlock(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReferenceTransformer(nn.Module):
    """train.py `Transformer` (not enc_dec): the layers in a `layers` list, mlp_ratio 2."""

    def __init__(self, dim, heads, layers):
        super().__init__()
        self.layers = nn.ModuleList([ReferenceLayer(dim, heads) for _ in range(layers)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class ReferenceTransformerMapper(nn.Module):
    """train.py `TransformerMapper`: clip_length projected tokens, then prefix_length learned constants, through
    the transformer (8 heads, fixed in the reference); the output is the constants' positions."""

    def __init__(self, dim_clip, dim, prefix_length, clip_length, layers, heads=8):
        super().__init__()
        self.clip_length = clip_length
        self.transformer = ReferenceTransformer(dim, heads, layers)
        self.linear = nn.Linear(dim_clip, clip_length * dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, dim))

    def forward(self, x):
        x = self.linear(x).view(x.shape[0], self.clip_length, -1)
        prefix = self.prefix_const.unsqueeze(0).expand(x.shape[0], *self.prefix_const.shape)
        return self.transformer(torch.cat((x, prefix), dim=1))[:, self.clip_length :]


class ReferenceClipCaption(nn.Module):
    """train.py / predict.py `ClipCaptionModel`: `gpt` and `clip_project` ("mlp", "transformer", or predict.py's
    plain "linear"); the prefix embeddings, then the caption's token embeddings, into GPT-2."""

    def __init__(self, gpt_config, prefix_length, prefix_size, mapping, layers=8, clip_length=None):
        super().__init__()
        self.prefix_length = prefix_length
        self.gpt = GPT2LMHeadModel(gpt_config)
        dim = gpt_config.n_embd
        if mapping == "mlp":
            self.clip_project = ReferenceMlp((prefix_size, dim * prefix_length // 2, dim * prefix_length))
        elif mapping == "linear":
            self.clip_project = nn.Linear(prefix_size, dim * prefix_length)
        else:
            self.clip_project = ReferenceTransformerMapper(
                prefix_size, dim, prefix_length, clip_length or prefix_length, layers
            )

    def prefix(self, clip_embeds):
        """(B, prefix_size) -> (B, prefix_length, n_embd)."""
        return self.clip_project(clip_embeds).view(-1, self.prefix_length, self.gpt.config.n_embd)

    def forward(self, tokens, clip_embeds, mask=None):
        embedding_text = self.gpt.transformer.wte(tokens)
        inputs = torch.cat((self.prefix(clip_embeds), embedding_text), dim=1)
        return self.gpt(inputs_embeds=inputs, attention_mask=mask).logits

    def loss(self, tokens, clip_embeds, mask):
        """train.py `train()`: logits from the last prefix position on, against the tokens, ignore_index 0
        (the reference pads with 0, which is also GPT-2's "!")."""
        logits = self(tokens, clip_embeds, mask)[:, self.prefix_length - 1 : -1]
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens.flatten(), ignore_index=0
        )


# -----------------------------------------------------------------------------
# rmokady/CLIP_prefix_caption: generators (predict.py)


@torch.no_grad()
def reference_generate2(model: ReferenceClipCaption, clip_embed, stop_token_id: int, entry_length: int = 67):
    """predict.py `generate2` for one image: from the prefix alone, the argmax token at every step (its top-p
    0.8 filter always keeps the most likely token, so argmax is unchanged), appended and fed back, until the
    stop token (kept) or `entry_length` tokens. Returns the token ids."""
    generated = model.prefix(clip_embed[None])
    tokens = []
    for _ in range(entry_length):
        logits = model.gpt(inputs_embeds=generated).logits[0, -1]
        token = int(torch.argmax(logits))
        tokens.append(token)
        generated = torch.cat((generated, model.gpt.transformer.wte(torch.tensor([[token]]))), dim=1)
        if token == stop_token_id:
            break
    return tokens


@torch.no_grad()
def reference_generate_beam(
    model: ReferenceClipCaption, clip_embed, stop_token_id: int, beam_size: int = 5, entry_length: int = 67
):
    """predict.py `generate_beam` for one image. Its pool of `beam_size` beams holds finished beams too: a
    finished beam offers one continuation (token 0 at no cost, its length not counted), so it keeps its place
    as long as its mean log-probability ranks in the top `beam_size`. Every step ranks all continuations by
    mean log-probability (sum / length, the stop token counted); search ends when every beam in the pool has
    stopped or after `entry_length` tokens. Returns (token ids up to each beam's length, mean log-probability)
    per beam, best first, as its sorted output texts, and whether a finished beam held a place in the pool
    while the search went on (what Hugging Face's beam search never lets happen)."""
    generated = model.prefix(clip_embed[None])
    wte = model.gpt.transformer.wte
    scores = tokens = None
    lengths = torch.ones(beam_size)
    stopped = torch.zeros(beam_size, dtype=torch.bool)
    finished_in_pool = False
    for _ in range(entry_length):
        finished_in_pool |= bool(stopped.any())
        logprobs = model.gpt(inputs_embeds=generated).logits[:, -1].softmax(-1).log()  # as the reference
        if scores is None:  # the first step: the top beam_size tokens from the prefix
            scores, first = logprobs[0].topk(beam_size)
            tokens = first[:, None]
            generated = generated.expand(beam_size, *generated.shape[1:])
        else:
            logprobs[stopped] = -float("inf")
            logprobs[stopped, 0] = 0.0
            totals = scores[:, None] + logprobs
            lengths[~stopped] += 1
            means, flat = (totals / lengths[:, None]).view(-1).topk(beam_size)
            source, token = flat // logprobs.shape[1], flat % logprobs.shape[1]
            lengths, stopped = lengths[source], stopped[source]
            tokens = torch.cat((tokens[source], token[:, None]), dim=1)
            generated = generated[source]
            scores = means * lengths
        generated = torch.cat((generated, wte(tokens[:, -1])[:, None]), dim=1)
        stopped = stopped | (tokens[:, -1] == stop_token_id)
        if stopped.all():
            break
    means = scores / lengths
    order = means.argsort(descending=True)
    return [(tokens[j, : int(lengths[j])].tolist(), float(means[j])) for j in order], finished_in_pool


# -----------------------------------------------------------------------------
# Hugging Face's beam search, for the documented difference


@torch.no_grad()
def transformers_beam_search(
    model, clip_embed, stop_token_id: int, num_beams: int = 5, max_new_tokens: int = 67
):
    """transformers 5.x `GenerationMixin._beam_search` (generation/utils.py) with length_penalty 1 and
    early_stopping False, for one image from the prefix alone, written as a loop over the reference model.

    Every step takes the top 2 · num_beams continuations of the live beams by summed log-probability. Those that
    end in the stop token (or reach max_new_tokens), among the top num_beams of them, are set aside with the
    score sum / length (the stop token counted), the best num_beams kept; the best num_beams of the others are
    the live beams, always num_beams of them. The search stops when num_beams captions are set aside and the
    best live beam's sum / its length no longer beats the worst of them. Returns (token ids, score), best first.
    """
    generated = model.prefix(clip_embed[None])
    wte = model.gpt.transformer.wte
    live = [([], 0.0, generated)]  # (tokens, summed log-probability, inputs_embeds)
    finished = []  # (tokens, sum / length)
    for step in range(max_new_tokens):
        inputs = torch.cat([embeds for _, _, embeds in live])
        logprobs = model.gpt(inputs_embeds=inputs).logits[:, -1].float().log_softmax(-1)
        totals = torch.tensor([total for _, total, _ in live])[:, None] + logprobs
        values, indices = totals.view(-1).topk(2 * num_beams)
        candidates = []
        for rank, (value, index) in enumerate(zip(values.tolist(), indices.tolist())):
            beam, token = divmod(index, logprobs.shape[1])
            tokens, _, embeds = live[beam]
            ends = token == stop_token_id or step == max_new_tokens - 1
            candidates.append((tokens + [token], value, embeds, ends, rank < num_beams))
        for tokens, value, _, ends, in_top in candidates:
            if ends and in_top:
                finished.append((tokens, value / (step + 1)))
        finished = sorted(finished, key=lambda c: c[1], reverse=True)[:num_beams]
        going = [c for c in candidates if not c[3]][:num_beams]
        if not going:
            break
        live = [
            (tokens, value, torch.cat((embeds, wte(torch.tensor([[tokens[-1]]]))), dim=1))
            for tokens, value, embeds, _, _ in going
        ]
        if len(finished) == num_beams and live[0][1] / (step + 1) <= finished[-1][1]:
            break
    return finished


# -----------------------------------------------------------------------------
# yangjianxin1/ClipCap-Chinese: the model (models/model.py) and the sampler (predict.py)


class PortBertMapper(nn.Module):
    """models/model.py `BertMapper`: prefix_len projected tokens and constant_len learned constants through a
    BertModel (fed inputs_embeds; built with its pooler and word embeddings); the output is the positions after
    the first prefix_len."""

    def __init__(self, bert_config, clip_size, prefix_size, prefix_len, constant_len):
        super().__init__()
        self.prefix_len, self.prefix_size, self.constant_len = prefix_len, prefix_size, constant_len
        self.bert = BertModel(config=bert_config)
        self.linear = nn.Linear(clip_size, prefix_len * prefix_size)
        self.prefix_const = nn.Parameter(torch.randn(constant_len, prefix_size))

    def forward(self, x):
        prefix = self.linear(x).view(-1, self.prefix_len, self.prefix_size)
        constant = self.prefix_const.unsqueeze(0).expand(x.shape[0], self.constant_len, self.prefix_size)
        out = self.bert(inputs_embeds=torch.cat((prefix, constant), dim=1))
        return out.last_hidden_state[:, self.prefix_len :]


class PortClipCaption(nn.Module):
    """models/model.py `ClipCaptionModel`: `gpt2` and `clip_project` (the MLP of train.py's layout, or
    BertMapper)."""

    def __init__(self, gpt_config, bert_config, prefix_len, clip_size, mapping, constant_len=10):
        super().__init__()
        self.gpt2 = GPT2LMHeadModel(gpt_config)
        self.prefix_size, self.prefix_len = gpt_config.n_embd, prefix_len
        if mapping == "mlp":
            dim = self.prefix_size
            self.clip_project = ReferenceMlp((clip_size, dim * prefix_len // 2, dim * prefix_len))
        else:
            self.clip_project = PortBertMapper(
                bert_config, clip_size, self.prefix_size, prefix_len, constant_len
            )

    def prefix(self, clip_embeds):
        return self.clip_project(clip_embeds).view(-1, self.prefix_len, self.prefix_size)

    def forward(self, clip_embeds, caption_ids, mask=None):
        inputs = torch.cat((self.prefix(clip_embeds), self.gpt2.transformer.wte(caption_ids)), dim=1)
        return self.gpt2(inputs_embeds=inputs, attention_mask=mask).logits


def port_bert_config(
    hidden_size: int, layers: int, heads: int, initializer_range: float = 0.02
) -> BertConfig:
    """The port's pretrain_models/bert/config.json at a small width: a BERT-base-Chinese-like config (21,128
    words, 512 positions, gelu, eps 1e-12) whose hidden size equals GPT-2's."""
    return BertConfig(
        vocab_size=21128,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=512,
        initializer_range=initializer_range,
    )


@torch.no_grad()
def port_generate(model: PortClipCaption, clip_embeds, sep_id, pad_id, unk_id, max_len, suppress=()):
    """predict.py `generate` with topk=1 (its sampler made deterministic: multinomial over one token), for a
    batch: from the prefix alone; [UNK] (and `suppress`) never chosen; a caption ends at [SEP], which is not
    kept; finished captions are fed [PAD]; at most max_len + 1 steps. The port collects captions in one list
    that skips an image whose first token is [SEP] (its captions then shift); here each image keeps its own."""
    inputs = model.prefix(clip_embeds)
    finished = [False] * len(clip_embeds)
    captions = [[] for _ in clip_embeds]
    steps = 0
    while True:
        logits = model.gpt2(inputs_embeds=inputs).logits[:, -1]
        logits[:, [unk_id, *suppress]] = -float("inf")
        next_ids = logits.argmax(-1).tolist()
        for i, token in enumerate(next_ids):
            if finished[i]:
                next_ids[i] = pad_id
            elif token == sep_id:
                finished[i] = True
            else:
                captions[i].append(token)
        inputs = torch.cat((inputs, model.gpt2.transformer.wte(torch.tensor(next_ids))[:, None]), dim=1)
        steps += 1
        if steps > max_len or all(finished):
            break
    return captions
