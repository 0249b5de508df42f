"""Caption decoding: presets and their checks, batched generate() against a step-by-step oracle, cleaning.

The models are tiny ViT -> GPT-2 captioners with random weights (initializer_range 0.5, so the
next-token distribution is peaked and depends on the image). Two variants have their final layer
norm's bias pushed along the [SEP] embedding (tied to the LM head): one emits EOS at once unless told
otherwise (for min_new_tokens), one never emits EOS (for max_new_tokens / max_length).
"""

import copy
import re

import pytest
import torch
from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

from nbutils.models.decoding import ALLOWED, PRESETS, clean_caption, generate_captions, resolve_decoding
from nbutils.models.encoder_decoder import build_demo_encoder_decoder

CLS, SEP, PAD = 2, 3, 0
CJK_SPACE = re.compile(r"[\u4e00-\u9fff] [\u4e00-\u9fff]")


def make_captioner(tokenizer, eos_bias: float = 0.0, seed: int = 0, lean=None) -> VisionEncoderDecoderModel:
    """A tiny random captioner; `eos_bias` (or `lean`, token -> bias) pushes its final norm's bias along tokens'
    embeddings (tied to the LM head), making them likelier at every step."""
    torch.manual_seed(seed)
    encoder = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        initializer_range=0.5,
    )
    decoder = GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        vocab_size=len(tokenizer),
        add_cross_attention=True,
        bos_token_id=CLS,
        eos_token_id=SEP,
        pad_token_id=PAD,
        initializer_range=0.5,
    )
    model = VisionEncoderDecoderModel(
        VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    )
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = CLS, SEP, PAD
    model.generation_config.bos_token_id = CLS
    with torch.no_grad():
        for token, bias in {SEP: eos_bias, **(lean or {})}.items():
            model.decoder.transformer.ln_f.bias.add_(bias * model.decoder.lm_head.weight[token])
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_captioner(tokenizer)


@pytest.fixture(scope="module")
def stopping_model(tokenizer):
    """EOS is the argmax at every step."""
    return make_captioner(tokenizer, eos_bias=5.0)


@pytest.fixture(scope="module")
def endless_model(tokenizer):
    """EOS is never chosen (its logit is ~40 below the others)."""
    return make_captioner(tokenizer, eos_bias=-5.0)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def ids(results):
    return [[candidate["token_ids"] for candidate in image] for image in results]


def argmax_oracle(model, pixel_values, max_new_tokens):
    """Greedy decoding by hand: full forward passes (no cache), argmax, stop at EOS."""
    tokens, logprobs = [CLS], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(pixel_values=pixel_values, decoder_input_ids=torch.tensor([tokens])).logits[0, -1]
            token = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
            if token == SEP:
                break
            tokens.append(token)
    return tokens[1:], sum(logprobs) / len(logprobs)


# --- generation ---------------------------------------------------------------------------------------


def test_greedy_matches_a_step_by_step_argmax_loop(model, tokenizer, images):
    results = generate_captions(model, tokenizer, images, "greedy")
    assert [len(image) for image in results] == [1, 1]
    for image, (result,) in zip(images, results):
        tokens, mean_logprob = argmax_oracle(model, image[None], max_new_tokens=20)
        assert result["token_ids"] == tokens
        assert result["score"] == pytest.approx(mean_logprob, abs=1e-4)
        assert result["caption"] == clean_caption(tokenizer.decode(tokens, skip_special_tokens=True))
    assert len({tuple(r[0]["token_ids"]) for r in results}) == 2, (
        "the two images should get different captions"
    )


def test_greedy_equals_beam_search_with_one_beam(model, tokenizer, images):
    greedy = generate_captions(model, tokenizer, images, "greedy")
    one_beam = generate_captions(
        model, tokenizer, images, resolve_decoding("beam", num_beams=1, min_new_tokens=0, max_new_tokens=20)
    )
    assert ids(one_beam) == ids(greedy)


def test_beam_search_returns_distinct_captions_best_first(model, tokenizer, images):
    results = generate_captions(model, tokenizer, images, {"preset": "blip_beam", "num_return_sequences": 3})
    for image in results:
        assert len(image) == 3
        assert len({tuple(c["token_ids"]) for c in image}) == 3
        assert len({c["caption"] for c in image}) == 3
        scores = [c["score"] for c in image]
        assert scores == sorted(scores, reverse=True)
        assert all(isinstance(c["caption"], str) and isinstance(c["score"], float) for c in image)


@pytest.mark.parametrize(
    "decoding",
    ["greedy", {"preset": "blip_beam", "num_return_sequences": 3}, "original"],
    ids=["greedy", "beam3x3", "original"],
)
def test_batching_does_not_change_the_results(model, tokenizer, images, decoding):
    batched = generate_captions(model, tokenizer, images, decoding)
    alone = [generate_captions(model, tokenizer, image[None], decoding)[0] for image in images]
    assert ids(batched) == ids(alone)
    for batch_image, alone_image in zip(batched, alone):
        assert [c["score"] for c in batch_image] == pytest.approx([c["score"] for c in alone_image], abs=1e-4)


def test_max_new_tokens_and_max_length_are_honoured(endless_model, tokenizer, images):
    for decoding in ("greedy", "beam"):
        limit = resolve_decoding(decoding)["max_new_tokens"]
        assert [
            len(t)
            for image in ids(generate_captions(endless_model, tokenizer, images, decoding))
            for t in image
        ] == [
            limit,
            limit,
        ]
    seven = generate_captions(endless_model, tokenizer, images, {"preset": "blip_beam", "max_new_tokens": 7})
    assert [len(c["token_ids"]) for image in seven for c in image] == [7, 7]
    # "original" = generate(num_beams=4, max_length=16): 16 decoder positions, the start token included
    original = generate_captions(endless_model, tokenizer, images, "original")
    assert [len(c["token_ids"]) for image in original for c in image] == [15, 15]
    # BLIP's max_length 20 counts the start token too (and a prompt: test_blip_beam_is_blip_decoder_generate)
    blip = generate_captions(endless_model, tokenizer, images, "blip_beam")
    assert [len(c["token_ids"]) for image in blip for c in image] == [19, 19]


def test_min_new_tokens_is_honoured(stopping_model, tokenizer, images):
    assert ids(generate_captions(stopping_model, tokenizer, images, "greedy")) == [[[]], [[]]]
    beam = generate_captions(stopping_model, tokenizer, images, "beam")
    assert [len(c["token_ids"]) for image in beam for c in image] == [5, 5]
    # BLIP's min_length 5 counts the start token: 4 new tokens at least
    for decoding in ("blip_beam", "blip_nucleus"):
        blip = generate_captions(stopping_model, tokenizer, images, decoding, seed=0)
        assert [len(c["token_ids"]) for image in blip for c in image] == [4, 4]
    eight = generate_captions(stopping_model, tokenizer, images, resolve_decoding("greedy", min_new_tokens=8))
    assert [len(c["token_ids"]) for image in eight for c in image] == [8, 8]


@pytest.fixture(scope="module")
def start_and_pad_model(tokenizer):
    """A barely trained captioner's habit: the start token and padding, the tokens it has been fed most, are
    its likeliest outputs."""
    return make_captioner(tokenizer, lean={CLS: 3.0, PAD: 2.0})


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_no_preset_generates_the_start_or_the_pad_token(start_and_pad_model, tokenizer, images, preset):
    plain = start_and_pad_model.generate(
        pixel_values=images, max_new_tokens=10, do_sample=False, num_beams=1, suppress_tokens=None
    )
    assert {CLS, PAD} & set(plain[:, 1:].flatten().tolist())  # what generate() alone would write
    results = generate_captions(start_and_pad_model, tokenizer, images, preset, seed=0)
    tokens = [token for image in results for c in image for token in c["token_ids"]]
    assert CLS not in tokens and PAD not in tokens
    assert all(c["caption"] for image in results for c in image)  # not stripped to nothing


def test_a_stop_token_that_is_also_the_start_or_pad_token_is_not_suppressed(tokenizer, images):
    """GPT-2's one special token is start, end and pad: suppressing it would forbid stopping."""
    model = make_captioner(tokenizer, eos_bias=5.0)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = config.pad_token_id = SEP
    results = generate_captions(model, tokenizer, images, "greedy")
    assert ids(results) == [[[]], [[]]]  # it stops at once, as it is most likely to


def test_sampling_is_reproducible_with_a_seed_and_varies_across_seeds(model, tokenizer, images):
    hot = {
        "preset": "sample",
        "temperature": 2.0,
        "top_k": 0,
        "num_return_sequences": 3,
        "max_new_tokens": 10,
    }
    state = torch.get_rng_state()
    first = generate_captions(model, tokenizer, images, hot, seed=0)
    assert torch.equal(torch.get_rng_state(), state), "a seed must not reset the global random state"
    assert generate_captions(model, tokenizer, images, hot, seed=0) == first
    assert ids(generate_captions(model, tokenizer, images, hot, seed=1)) != ids(first)
    for image in first:
        scores = [c["score"] for c in image]
        assert len(image) == 3 and scores == sorted(scores, reverse=True)


def test_sampling_scores_are_the_models_mean_log_probabilities(model, tokenizer, images):
    """Scored from the raw logits: after top-p a peaked step has one candidate left, whose
    renormalised log-probability would read 0."""
    results = generate_captions(model, tokenizer, images, "blip_nucleus", seed=0)
    for image, (result,) in zip(images, results):
        tokens = result["token_ids"]
        scored = tokens + [SEP] if len(tokens) < PRESETS["blip_nucleus"]["max_length"] - 1 else tokens
        with torch.no_grad():
            logits = model(
                pixel_values=image[None], decoder_input_ids=torch.tensor([[CLS, *scored[:-1]]])
            ).logits[0]
        expected = torch.log_softmax(logits, dim=-1)[torch.arange(len(scored)), scored].mean()
        assert result["score"] == pytest.approx(float(expected), abs=1e-4)
        assert result["score"] < 0


def test_a_prompt_is_fed_after_the_start_token_and_stripped(
    model, stopping_model, tokenizer, images, monkeypatch
):
    calls = []
    original_generate = model.generate

    def recording_generate(**kwargs):
        output = original_generate(**kwargs)
        calls.append((kwargs, output.sequences))
        return output

    monkeypatch.setattr(model, "generate", recording_generate)
    prompt = "一个红色"
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert len(prompt_ids) == 4
    results = generate_captions(model, tokenizer, images, "greedy", prompt=prompt)
    (kwargs, sequences) = calls[-1]
    assert kwargs["decoder_input_ids"].tolist() == [[CLS, *prompt_ids]] * 2
    assert kwargs["use_cache"] is True
    for (result,), sequence in zip(results, sequences.tolist()):
        assert sequence[: 1 + len(prompt_ids)] == [CLS, *prompt_ids]
        generated = sequence[1 + len(prompt_ids) :]
        assert generated[: len(result["token_ids"])] == result["token_ids"]
        assert result["caption"] == clean_caption(tokenizer.decode(result["token_ids"]))
    # the prompt counts neither for min_new_tokens nor in the caption
    prompted = generate_captions(stopping_model, tokenizer, images, "beam", prompt="a picture of")
    assert [len(c["token_ids"]) for image in prompted for c in image] == [5, 5]
    with pytest.raises(ValueError, match="max_length 4 leaves no room"):
        generate_captions(model, tokenizer, images, {"preset": "original", "max_length": 4}, prompt=prompt)


def test_captions_have_no_spaces_between_chinese_characters(model, tokenizer, images):
    results = generate_captions(model, tokenizer, images, {"preset": "beam", "num_return_sequences": 4})
    captions = [c["caption"] for image in results for c in image]
    assert any(re.search(r"[\u4e00-\u9fff]", c) for c in captions), captions
    assert not any(CJK_SPACE.search(c) for c in captions)


def test_missing_or_invalid_generation_ids_are_named(model, tokenizer, images):
    for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        broken = copy.deepcopy(model)
        setattr(broken.generation_config, name, None)
        with pytest.raises(ValueError, match=f"generation_config.{name} not set"):
            generate_captions(broken, tokenizer, images)
    broken = copy.deepcopy(model)
    broken.generation_config.eos_token_id = 50256  # GPT-2's id, outside the BERT vocabulary
    with pytest.raises(ValueError, match="eos_token_id = 50256 is outside the decoder's vocabulary"):
        generate_captions(broken, tokenizer, images)


def test_pixel_values_are_checked(model, tokenizer, images):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        generate_captions(model, tokenizer, images[0])
    with pytest.raises(ValueError, match="floats"):
        generate_captions(model, tokenizer, images.to(torch.uint8))
    assert generate_captions(model, tokenizer, images[:0]) == []


# --- settings -----------------------------------------------------------------------------------------


def test_presets_resolve_and_never_block_repeated_ngrams():
    assert {"greedy", "beam", "blip_beam", "blip_nucleus", "original", "sample"} <= set(PRESETS)
    for name, preset in PRESETS.items():
        assert set(preset) <= ALLOWED, name
        assert "no_repeat_ngram_size" not in preset, name
        assert resolve_decoding(name) == preset
    assert PRESETS["original"] == {"num_beams": 4, "do_sample": False, "max_length": 16}
    assert PRESETS["blip_beam"] == {  # salesforce/BLIP configs/caption_coco.yaml
        "num_beams": 3,
        "do_sample": False,
        "max_length": 20,
        "min_length": 5,
        "repetition_penalty": 1.0,
    }
    nucleus = PRESETS["blip_nucleus"]
    assert (nucleus["do_sample"], nucleus["top_p"], nucleus["repetition_penalty"]) == (True, 0.9, 1.1)
    assert 3 <= PRESETS["beam"]["num_beams"] <= 5 and 20 <= PRESETS["beam"]["max_new_tokens"] <= 30


def test_resolve_starts_from_a_preset_and_applies_overrides():
    assert resolve_decoding({"preset": "blip_beam", "num_beams": 5}) == {
        **PRESETS["blip_beam"],
        "num_beams": 5,
    }
    assert resolve_decoding("blip_beam", num_beams=5) == resolve_decoding(
        {"preset": "blip_beam", "num_beams": 5}
    )
    assert resolve_decoding({"num_beams": 2}) == {**PRESETS["greedy"], "num_beams": 2}
    # a max_length replaces the preset's max_new_tokens and the other way round
    assert resolve_decoding("greedy", max_length=12) == {"num_beams": 1, "do_sample": False, "max_length": 12}
    assert resolve_decoding("original", max_new_tokens=9)["max_new_tokens"] == 9
    assert "max_length" not in resolve_decoding("original", max_new_tokens=9)
    # sampling may return more sequences than beams
    assert resolve_decoding("sample", num_return_sequences=5)["num_return_sequences"] == 5
    # the caller's dict is not changed
    settings = {"preset": "beam", "num_beams": 3}
    resolve_decoding(settings, num_beams=5)
    assert settings == {"preset": "beam", "num_beams": 3}


def test_unknown_preset_or_setting_is_named_with_a_suggestion():
    with pytest.raises(
        ValueError, match=r"unknown decoding preset 'blip_bean' \(did you mean 'blip_beam'\?\)"
    ) as info:
        resolve_decoding("blip_bean")
    assert "greedy" in str(info.value) and "original" in str(info.value)
    with pytest.raises(
        ValueError, match=r"unknown decoding setting 'num_beam' \(did you mean 'num_beams'\?\)"
    ) as info:
        resolve_decoding({"preset": "beam", "num_beam": 5})
    assert all(name in str(info.value) for name in ALLOWED)
    with pytest.raises(ValueError, match="unknown decoding setting 'bad_words_ids'"):
        resolve_decoding("beam", bad_words_ids=[[5]])
    with pytest.raises(ValueError, match="preset name or a dict"):
        resolve_decoding(3)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"temperature": "hot"}, "temperature must be a finite number"),
        ({"repetition_penalty": -1.0}, "repetition_penalty must be > 0"),
        ({"num_beams": 0}, "num_beams must be >= 1"),
        ({"num_beams": 2.5}, "num_beams must be an int"),
        ({"num_beams": True}, "num_beams must be an int"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"min_new_tokens": -1}, "min_new_tokens must be >= 0"),
        ({"top_k": 1.0}, "top_k must be an int"),
        ({"do_sample": "yes"}, "do_sample must be True or False"),
        ({"early_stopping": "sometimes"}, "early_stopping must be"),
        ({"min_new_tokens": 30, "max_new_tokens": 20}, "min_new_tokens .30. is larger"),
        ({"max_new_tokens": 20, "max_length": 16}, "not both"),
        (
            {"num_beams": 3, "num_return_sequences": 4},
            r"num_return_sequences \(4\) must be <= num_beams \(3\)",
        ),
        ({"num_return_sequences": 2}, r"num_return_sequences \(2\) must be <= num_beams \(1\)"),
    ],
)
def test_invalid_values_are_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        resolve_decoding({"preset": "greedy", **settings})


# --- cleaning -----------------------------------------------------------------------------------------


def test_clean_caption_removes_spaces_between_chinese_characters_only(tokenizer):
    assert clean_caption("一 个 红 色 的 圆 形") == "一个红色的圆形"
    assert clean_caption("a red circle on a white background") == "a red circle on a white background"
    assert clean_caption("穿 着 t 恤 的 男 人") == "穿着 t 恤的男人"
    assert clean_caption(" 一 个 ， 红 色  的 ball  ") == "一个，红色的 ball"
    for text in ("一个红色的圆形", "两只猫在草地上玩耍"):
        decoded = tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True)
        assert decoded != text  # the BertTokenizer's spaces
        assert clean_caption(decoded) == text
    mixed = tokenizer.decode(tokenizer("一只狗 running on the beach").input_ids, skip_special_tokens=True)
    assert clean_caption(mixed) == "一只狗 running on the beach"


def blip_generate(model, tokenizer, pixel_values, prompt: str, num_beams=3, max_length=20, min_length=5):
    """salesforce/BLIP models/blip.py `BLIP_Decoder.generate` (sample=False), rewritten from reading it: the
    prompt tokenised with special tokens, its first token replaced by the start token ([DEC] in BLIP) and its
    last ([SEP]) dropped; the decoder's generate with max_length / min_length counting that whole input, eos
    [SEP], pad [PAD], repetition_penalty 1.0; each output decoded without special tokens and cut after
    len(prompt) characters."""
    start = model.generation_config.decoder_start_token_id
    input_ids = tokenizer([prompt] * len(pixel_values), return_tensors="pt").input_ids
    input_ids[:, 0] = start
    input_ids = input_ids[:, :-1]
    with torch.no_grad():
        outputs = model.generate(
            pixel_values=pixel_values,
            decoder_input_ids=input_ids,
            max_length=max_length,
            min_length=min_length,
            num_beams=num_beams,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            repetition_penalty=1.0,
            suppress_tokens=None,
        )
    texts = [tokenizer.decode(output, skip_special_tokens=True)[len(prompt) :] for output in outputs]
    return outputs[:, input_ids.shape[1] :], texts


def test_blip_beam_is_blip_decoder_generate(tokenizer):
    """The blip_beam preset with BLIP's prompt gives BLIP_Decoder.generate's captions (configs/caption_coco.yaml:
    beam 3, max_length 20, min_length 5), on a BLIP-style captioner (a BERT LM head with cross-attention)."""
    torch.manual_seed(0)
    bundle = build_demo_encoder_decoder(
        copy.deepcopy(tokenizer),
        image_size=32,
        decoder="bert",
        hidden_size=32,
        encoder_layers=1,
        decoder_layers=2,
        num_heads=2,
        intermediate_size=64,
    )
    model = bundle.model.eval()
    with torch.no_grad():  # [SEP] likelier: some captions stop early, others run to max_length
        model.decoder.cls.predictions.bias[bundle.tokenizer.sep_token_id] += 2.5
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    prompt = "a picture of "
    blip_tokens, blip_texts = blip_generate(model, bundle.tokenizer, pixels, prompt)
    ours = generate_captions(model, bundle.tokenizer, pixels, "blip_beam", prompt=prompt)
    sep, pad, cls = (
        bundle.tokenizer.sep_token_id,
        bundle.tokenizer.pad_token_id,
        bundle.tokenizer.cls_token_id,
    )
    want = [[t for t in row.tolist() if t not in (sep, pad)] for row in blip_tokens]
    assert not any(cls in row for row in want)  # BLIP suppresses nothing; this model never needs it
    assert [c[0]["token_ids"] for c in ours] == want
    assert [c[0]["caption"] for c in ours] == [clean_caption(text) for text in blip_texts]
    prompt_length = len(bundle.tokenizer(prompt, add_special_tokens=False).input_ids)
    lengths = {len(row) for row in want}  # the prompt counts towards max_length
    assert max(lengths) == 20 - 1 - prompt_length and min(lengths) < max(lengths)
