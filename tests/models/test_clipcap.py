"""ClipCap models: mappers, the prefix, loss masking, frozen GPT-2, cached generation, save / load.

The reference implementations' checkpoints and conventions: test_clipcap_import.py."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, TrainingArguments

from benchmarks.bench_clipcap import uncached_beam_search, uncached_greedy
from nbutils.data.datasets import CaptionCollator
from nbutils.models import clipcap
from nbutils.models.decoding import generate_captions
from nbutils.models.tokenizer import caption_special_ids, train_caption_tokenizer
from nbutils.training.captioning import CaptionTrainer

from .conftest import ZH

PREFIX_DIM, K = 12, 3


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(ZH, "zh")


def _bundle(tokenizer, mapping="mlp", seed=0, **mapper):
    torch.manual_seed(seed)
    settings = clipcap.mapper_settings(
        PREFIX_DIM,
        prefix_len=K,
        mapping=mapping,
        constant_len=mapper.pop("constant_len", K),
        mapping_layers=2,
        mapping_heads=4,
        **mapper,
    )
    return clipcap.build_demo_clipcap(tokenizer, settings, hidden_size=32, layers=2, num_heads=4)


@pytest.mark.parametrize("mapping", clipcap.MAPPINGS)
def test_each_mapping_makes_a_prefix_of_k_embeddings_before_the_tokens(tokenizer, mapping):
    model = _bundle(tokenizer, mapping).model.eval()
    images = torch.randn(2, PREFIX_DIM)
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    assert model.prefix(images).shape == (2, K, 32)
    logits = model(input_ids=ids, image_embeds=images).logits
    assert logits.shape == (2, K + 4, len(tokenizer))
    # the same as GPT-2 fed the prefix and the token embeddings by hand
    embeds = torch.cat([model.prefix(images), model.transformer.wte(ids)], dim=1)
    torch.testing.assert_close(logits, GPT2LMHeadModel.forward(model, inputs_embeds=embeds).logits)
    # the image changes what the tokens predict
    other = model(input_ids=ids, image_embeds=torch.randn(2, PREFIX_DIM)).logits
    assert not torch.allclose(logits[:, K:], other[:, K:])


def test_the_mlp_mapper_is_the_papers(tokenizer):
    mapper = _bundle(tokenizer).model.mapper
    assert [type(m) for m in mapper] == [nn.Linear, nn.Tanh, nn.Linear]
    assert (mapper[0].in_features, mapper[0].out_features) == (PREFIX_DIM, 32 * K // 2)
    assert mapper[2].out_features == 32 * K


def test_the_transformer_mapper_outputs_the_last_k_positions(tokenizer):
    model = _bundle(tokenizer, "transformer", constant_len=5).model.eval()
    mapper = model.mapper
    images = torch.randn(2, PREFIX_DIM)
    sequence = torch.cat(
        [mapper.linear(images).view(2, K, 32), mapper.constants.unsqueeze(0).expand(2, -1, -1)], dim=1
    )
    assert sequence.shape[1] == K + 5
    torch.testing.assert_close(mapper(images), mapper.transformer(sequence)[:, -K:])


def test_normalize_prefix_makes_the_prefix_scale_free(tokenizer):
    model = _bundle(tokenizer, normalize_prefix=True).model.eval()
    images = torch.randn(2, PREFIX_DIM)
    torch.testing.assert_close(model.prefix(images), model.prefix(7.0 * images))
    plain = _bundle(tokenizer).model.eval()
    assert not torch.allclose(plain.prefix(images), plain.prefix(7.0 * images))


def test_bad_mapper_settings_are_named():
    with pytest.raises(ValueError, match="mapping must be one of"):
        clipcap.mapper_settings(8, mapping="lstm")
    with pytest.raises(ValueError, match="prefix_len must be >= 1"):
        clipcap.mapper_settings(8, prefix_len=0)
    with pytest.raises(ValueError, match="mapping_layers >= 1"):
        clipcap.mapper_settings(8, mapping="transformer", mapping_layers=0)


def test_the_loss_covers_caption_tokens_and_the_end_token_only(tokenizer):
    """CaptionTrainer's loss on a ClipCap batch against cross-entropy written out position by position."""
    bundle = _bundle(tokenizer)
    model = bundle.model.eval()
    ids = caption_special_ids(tokenizer)
    collator = CaptionCollator(tokenizer, ids["start"], ids["end"], ids["pad"], max_length=16)
    texts = ["一个红色的圆形", "绿色的三角形在左边的草地上"]
    images = torch.randn(2, PREFIX_DIM)
    batch = collator(
        [{"image_embeds": e, "text": t, "image_index": i} for i, (e, t) in enumerate(zip(images, texts))]
    )
    trainer = CaptionTrainer(
        model=model, args=TrainingArguments(output_dir="/tmp/unused", report_to="none", use_cpu=True)
    )
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        total, count = 0.0, 0
        for row, text in enumerate(texts):
            caption = tokenizer(text, add_special_tokens=False)["input_ids"] + [ids["end"]]
            sequence = torch.tensor([[ids["start"], *caption[:-1]]])  # start, caption (no end fed)
            logits = model(input_ids=sequence, image_embeds=images[row : row + 1]).logits[0]
            for position, target in enumerate(caption):  # the prefix's K positions predict nothing
                total -= torch.log_softmax(logits[K + position], dim=-1)[target].item()
                count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    # the shorter caption's padding is -100; the start token is never a label
    assert (batch["labels"][0] == -100).sum() > 0 and ids["start"] not in batch["labels"].tolist()


def test_a_frozen_gpt2_gets_no_gradient_and_the_mapper_does(tokenizer):
    model = _bundle(tokenizer).model
    counts = clipcap.freeze_language_model(model)
    model.train()  # what the Trainer calls at every step
    mapper_size = sum(p.numel() for p in model.mapper.parameters())
    assert counts["trainable"] == mapper_size and counts["frozen"] == counts["total"] - mapper_size
    ids = torch.tensor([[1, 5, 6, 7]])
    model(input_ids=ids, image_embeds=torch.randn(1, PREFIX_DIM)).logits.sum().backward()
    assert all(p.grad is None for p in model.transformer.parameters()) and model.lm_head.weight.grad is None
    assert all(p.grad is not None for p in model.mapper.parameters())
    assert not model.transformer.training and model.mapper.training  # no dropout in the frozen GPT-2


@pytest.mark.parametrize("mapping", ["mlp", "transformer"])
def test_batched_cached_greedy_equals_the_uncached_loop(tokenizer, mapping):
    model = _bundle(tokenizer, mapping, seed=3).model.eval()
    images = torch.randn(5, PREFIX_DIM)
    ids = caption_special_ids(tokenizer)
    fast = generate_captions(model, tokenizer, decoding={"max_new_tokens": 12}, image_embeds=images)
    slow = uncached_greedy(model, images, ids["start"], ids["end"], 12, suppress=[ids["start"], ids["pad"]])
    assert [c[0]["token_ids"] for c in fast] == slow
    assert any(len(tokens) > 3 for tokens in slow)  # not trivially empty


def test_batched_beam_search_finds_the_uncached_loops_best_caption(tokenizer):
    """Five beams, the benchmark's loop (one image, no cache, finished captions set aside, best by mean
    log-probability)."""
    model = _bundle(tokenizer, seed=4).model.eval()
    images = torch.randn(4, PREFIX_DIM)
    ids = caption_special_ids(tokenizer)
    decoding = {"preset": "beam", "num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 0}
    fast = generate_captions(model, tokenizer, decoding=decoding, image_embeds=images)
    slow = uncached_beam_search(
        model, images, ids["start"], ids["end"], 10, suppress=[ids["start"], ids["pad"]]
    )
    assert [c[0]["token_ids"] for c in fast] == slow


def test_several_diverse_captions_per_image_are_one_parameter_away(tokenizer):
    model = _bundle(tokenizer, seed=1).model.eval()
    images = torch.randn(3, PREFIX_DIM)
    beams = generate_captions(
        model, tokenizer, decoding={"preset": "beam", "num_return_sequences": 3}, image_embeds=images
    )
    assert [len(c) for c in beams] == [3, 3, 3]
    for candidates in beams:
        assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)
        assert len({tuple(c["token_ids"]) for c in candidates}) == 3
    sampled = generate_captions(
        model,
        tokenizer,
        decoding={"preset": "sample", "num_return_sequences": 4},
        image_embeds=images,
        seed=0,
    )
    again = generate_captions(
        model,
        tokenizer,
        decoding={"preset": "sample", "num_return_sequences": 4},
        image_embeds=images,
        seed=0,
    )
    assert [len(c) for c in sampled] == [4, 4, 4] and sampled == again


def test_save_then_load_gives_the_same_captions_and_plain_transformers_loads_it(tokenizer, tmp_path):
    bundle = _bundle(tokenizer, "transformer", seed=2)
    images = torch.randn(4, PREFIX_DIM)
    before = generate_captions(bundle.model.eval(), tokenizer, decoding="beam", image_embeds=images)
    clipcap.save_clipcap(bundle, tmp_path / "model")
    loaded = clipcap.load_saved_clipcap(tmp_path / "model")
    assert loaded.model.config.mapping == "transformer" and loaded.model.config.prefix_len == K
    after = generate_captions(loaded.model.eval(), loaded.tokenizer, decoding="beam", image_embeds=images)
    assert after == before
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "model")) is clipcap.ClipCapModel
    language_model = GPT2LMHeadModel.from_pretrained(tmp_path / "model")  # the language model alone
    torch.testing.assert_close(language_model.transformer.wte.weight, bundle.model.transformer.wte.weight)


def test_a_pretrained_gpt2_folder_loads_under_a_fresh_mapper(tokenizer, tmp_path):
    """The hub-id / folder path, with a small GPT-2 saved by save_pretrained (never a download)."""
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=4)
    )
    gpt2.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    bundle = clipcap.load_clipcap_language_model(
        tmp_path / "gpt2", clipcap.mapper_settings(PREFIX_DIM, prefix_len=K)
    )
    for name, weight in gpt2.state_dict().items():
        torch.testing.assert_close(bundle.model.state_dict()[name], weight)
    ids = caption_special_ids(tokenizer)
    assert bundle.model.generation_config.eos_token_id == ids["end"]
    assert bundle.model.generation_config.bos_token_id == ids["start"]
    with pytest.raises(ValueError, match="language_model=.*no such folder"):
        clipcap.load_clipcap_language_model(tmp_path / "missing", clipcap.mapper_settings(PREFIX_DIM))


def test_a_clipcap_leaning_on_its_start_token_still_writes_captions(tokenizer):
    """A barely trained ClipCap repeats the start token it is fed after the prefix ([CLS][CLS]...), which
    decoding would strip to an empty caption: generation never emits it (nor [PAD])."""
    model = _bundle(tokenizer, seed=5).model.eval()
    ids = caption_special_ids(tokenizer)
    with torch.no_grad():
        for token, bias in ((ids["start"], 8.0), (ids["pad"], 6.0)):
            model.transformer.ln_f.bias.add_(
                bias * model.lm_head.weight[token] / model.lm_head.weight[token].norm()
            )
    images = torch.randn(6, PREFIX_DIM)
    plain = uncached_greedy(model, images, ids["start"], ids["end"], 8)
    assert sum(ids["start"] in tokens for tokens in plain) >= 3  # what decoding without suppression writes
    for preset in ("greedy", "beam", "sample"):
        results = generate_captions(model, tokenizer, decoding=preset, image_embeds=images, seed=0)
        tokens = [c[0]["token_ids"] for c in results]
        assert not any(ids["start"] in t or ids["pad"] in t for t in tokens) and all(tokens)


def test_max_length_counts_the_start_token_not_the_prefix(tokenizer):
    """generate() would count the prefix embeddings in max_length; decoding counts what an encoder-decoder's
    would: the start token (and a prompt), so "original" (max_length 16) leaves 15 caption tokens."""
    model = _bundle(tokenizer, seed=6).model.eval()
    end = caption_special_ids(tokenizer)["end"]
    with torch.no_grad():  # never stops
        model.transformer.ln_f.bias.sub_(8.0 * model.lm_head.weight[end] / model.lm_head.weight[end].norm())
    results = generate_captions(
        model, tokenizer, decoding="original", image_embeds=torch.randn(3, PREFIX_DIM)
    )
    assert [len(c[0]["token_ids"]) for c in results] == [15, 15, 15]
