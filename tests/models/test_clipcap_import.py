"""Checkpoints of rmokady/CLIP_prefix_caption and yangjianxin1/ClipCap-Chinese imported, checked against those
implementations' own behaviour: their models' logits, their generators' captions, their training loss.

The implementations are rewritten in reference_clipcap.py from reading their code (the sources are named there and
in each test). The models have random weights drawn wide (std 0.5), so that the next-token distribution is peaked
and depends on the image, and, for the English reference, a final-norm bias along the "." embedding, so that the
captions stop at different lengths.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, TrainingArguments

from nbutils.data.cache import processor_mean_std
from nbutils.data.datasets import normalize_pixel_values
from nbutils.models import clipcap
from nbutils.models.captioners import load_any_captioner
from nbutils.models.clip import ClipBundle, build_demo_dual_encoder, image_features, save_clip
from nbutils.models.clipcap_import import import_reference_checkpoint, import_reference_state_dict, main
from nbutils.models.decoding import clean_caption, generate_captions
from nbutils.models.image_processors import load_image_processor
from nbutils.models.tokenizer import train_bpe_tokenizer, train_tokenizer
from nbutils.training.captioning import CaptionTrainer

from .conftest import EN, ZH
from .reference_clipcap import (
    PortClipCaption,
    ReferenceClipCaption,
    port_bert_config,
    port_generate,
    reference_generate2,
    reference_generate_beam,
    transformers_beam_search,
)

CLIP_DIM, N_IMAGES, MAX_TOKENS = 16, 32, 20  # the reference's entry_length is 67; 20 keeps its loops short
ENGLISH = [caption + "." for caption in EN]  # COCO-style captions, which end with the reference's stop token


@pytest.fixture(scope="module")
def english():
    """A byte-level BPE like GPT-2's, and the id of "." (the reference's stop token)."""
    tokenizer = train_bpe_tokenizer(ENGLISH, vocab_size=300)
    return tokenizer, tokenizer(".", add_special_tokens=False).input_ids[0]


@pytest.fixture(scope="module")
def chinese():
    """A BERT-style character vocabulary like uer/gpt2-chinese-cluecorpussmall's."""
    return train_tokenizer(ZH, vocab_size=400)


@pytest.fixture(scope="module")
def clip_embeds():
    return torch.randn(N_IMAGES, CLIP_DIM, generator=torch.Generator().manual_seed(1))


def gpt2_config(vocab_size: int, **overrides) -> GPT2Config:
    settings = dict(n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.5)
    return GPT2Config(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, **{**settings, **overrides})


def reference_model(
    english, mapping, prefix_length=10, layers=8, stop_bias=2.0, seed=0
) -> ReferenceClipCaption:
    tokenizer, stop = english
    torch.manual_seed(seed)
    model = ReferenceClipCaption(gpt2_config(len(tokenizer)), prefix_length, CLIP_DIM, mapping, layers=layers)
    with torch.no_grad():
        wte = model.gpt.transformer.wte.weight
        model.gpt.transformer.ln_f.bias.add_(stop_bias * wte[stop] / wte[stop].norm())
    return model.eval()


def saved_and_loaded(model: torch.nn.Module, tmp_path) -> dict:
    """What a user has: the `torch.save(model.state_dict())` file, read back without unpickling code."""
    torch.save(model.state_dict(), tmp_path / "checkpoint.pt")
    return torch.load(tmp_path / "checkpoint.pt", weights_only=True)


def token_ids(results) -> list[list[int]]:
    return [candidates[0]["token_ids"] for candidates in results]


# -----------------------------------------------------------------------------
# rmokady/CLIP_prefix_caption


@pytest.mark.parametrize(("mapping", "prefix_length"), [("mlp", 10), ("transformer", 10), ("linear", 12)])
def test_reference_checkpoints_import_with_the_same_logits_and_their_conventions(
    english, tmp_path, mapping, prefix_length
):
    """train.py / predict.py `ClipCaptionModel`: what the checkpoint holds is read from it, nothing stated."""
    tokenizer, stop = english
    reference = reference_model(english, mapping, prefix_length)
    model = import_reference_state_dict(saved_and_loaded(reference, tmp_path), tokenizer, n_head=4)
    config = model.config
    assert (config.mapping, config.prefix_len, config.prefix_dim) == (mapping, prefix_length, CLIP_DIM)
    assert (config.n_embd, config.n_layer, config.vocab_size) == (32, 2, len(tokenizer))
    if mapping == "transformer":
        assert (config.mapping_layers, config.constant_len, config.mapping_heads) == (8, prefix_length, 8)

    tokens = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    prefix = torch.randn(2, CLIP_DIM)
    with torch.no_grad():
        want = reference(tokens, prefix)
        got = model(input_ids=tokens, image_embeds=prefix).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # logits of size ~10 (weights of std 0.5)

    # predict.py: no start token, stop at "." and keep it; generate() needs a pad id, the stop token serves
    assert config.start_after_prefix is False and config.keep_stop_token is True
    assert model.generation_config.eos_token_id == stop and model.generation_config.pad_token_id == stop
    clipcap.save_clipcap(clipcap.ClipCapBundle(model, tokenizer), tmp_path / "folder")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "folder")
    assert (loaded.config.start_after_prefix, loaded.config.keep_stop_token) == (False, True)
    assert loaded.generation_config.eos_token_id == stop


@pytest.mark.parametrize(("mapping", "prefix_length"), [("mlp", 10), ("transformer", 10), ("linear", 12)])
def test_greedy_captions_are_generate2s_token_for_token(
    english, clip_embeds, tmp_path, mapping, prefix_length
):
    """predict.py `generate2`: from the prefix alone, argmax until "." (kept) or entry_length tokens."""
    tokenizer, stop = english
    reference = reference_model(english, mapping, prefix_length)
    model = import_reference_state_dict(saved_and_loaded(reference, tmp_path), tokenizer, n_head=4)
    want = [reference_generate2(reference, embed, stop, entry_length=MAX_TOKENS) for embed in clip_embeds]
    results = generate_captions(
        model,
        tokenizer,
        decoding={"preset": "greedy", "max_new_tokens": MAX_TOKENS},
        image_embeds=clip_embeds,
    )
    assert token_ids(results) == want
    # the same text, but for <|endoftext|>, which generate2's decode prints and a caption here never shows
    texts = [clean_caption(tokenizer.decode(ids, skip_special_tokens=True)) for ids in want]
    assert [r[0]["caption"] for r in results] == texts
    stopped = [ids for ids in want if ids[-1] == stop]
    assert len(stopped) >= 8 and len({len(ids) for ids in stopped}) >= 3  # "." kept, at many lengths
    assert all(r[0]["caption"].endswith(".") for r, ids in zip(results, want) if ids[-1] == stop)


@pytest.mark.parametrize(("mapping", "stop_bias"), [("mlp", 1.5), ("transformer", 2.0)])
def test_beam_search_differs_from_generate_beam_only_where_its_pool_held_a_finished_beam(
    english, clip_embeds, tmp_path, mapping, stop_bias
):
    """The documented difference (README, ClipCap): this project's beam search is transformers' (5.x
    generation/utils.py `_beam_search`): finished captions are set aside and num_beams beams stay live. The
    reference's predict.py `generate_beam` keeps finished beams in its pool of beam_size, where they take the
    place of live ones. Both rank by mean log-probability, the stop token counted. So the two agree on every image
    whose reference search never kept a finished beam in its pool, and may differ on the others."""
    tokenizer, stop = english
    reference = reference_model(english, mapping, stop_bias=stop_bias)
    model = import_reference_state_dict(saved_and_loaded(reference, tmp_path), tokenizer, n_head=4)
    decoding = {"preset": "beam", "num_beams": 5, "max_new_tokens": MAX_TOKENS, "min_new_tokens": 0}
    ours = generate_captions(model, tokenizer, decoding=decoding, image_embeds=clip_embeds)

    transformers_style = [transformers_beam_search(reference, e, stop, 5, MAX_TOKENS) for e in clip_embeds]
    assert token_ids(ours) == [beams[0][0] for beams in transformers_style]
    for candidates, beams in zip(ours, transformers_style):
        assert candidates[0]["score"] == pytest.approx(beams[0][1], abs=1e-4)

    searches = [reference_generate_beam(reference, e, stop, 5, MAX_TOKENS) for e in clip_embeds]
    differ = [ids != beams[0][0] for ids, (beams, _) in zip(token_ids(ours), searches)]
    held = [finished_in_pool for _, finished_in_pool in searches]
    assert not any(d and not h for d, h in zip(differ, held))  # a difference only where the pool held one
    assert sum(differ) >= 1  # and the difference is real
    if stop_bias < 2:  # captions that rarely stop: most searches never held one, and there the two agree
        assert sum(not h for h in held) >= 8


def test_the_importer_reads_mapper_depth_and_kind_and_refuses_a_stated_mismatch_by_name(english, tmp_path):
    tokenizer, _ = english
    state_dict = saved_and_loaded(reference_model(english, "transformer", layers=8), tmp_path)
    assert import_reference_state_dict(state_dict, tokenizer, n_head=4).config.mapping_layers == 8

    def stated(**fields):
        settings = clipcap.mapper_settings(
            CLIP_DIM, prefix_len=10, mapping="transformer", constant_len=10, mapping_layers=8
        )
        gpt2 = {k: v for k, v in gpt2_config(len(tokenizer)).to_dict().items() if k != "model_type"}
        return clipcap.ClipCapConfig(**{**gpt2, **settings, **fields})

    assert import_reference_state_dict(state_dict, tokenizer, stated()).config.mapping_layers == 8
    for fields, named in (
        ({"mapping_layers": 2}, "config.mapping_layers=2 but the checkpoint has 8"),
        ({"mapping_layers": 12}, "config.mapping_layers=12 but the checkpoint has 8"),
        ({"mapping": "mlp"}, "config.mapping='mlp' but the checkpoint has 'transformer'"),
        ({"prefix_len": 4, "constant_len": 4}, "config.prefix_len=4 but the checkpoint has 10"),
        ({"n_layer": 3}, "config.n_layer=3 but the checkpoint has 2"),
    ):
        with pytest.raises(ValueError, match=named):
            import_reference_state_dict(state_dict, tokenizer, stated(**fields))
    with pytest.raises(ValueError, match="not a ClipCap checkpoint"):
        import_reference_state_dict({"model.weight": torch.zeros(1)}, tokenizer)


def test_a_transformer_mapper_whose_clip_length_differs_from_its_prefix_length_is_refused(english, tmp_path):
    """train.py's --prefix_length_clip: the project's mapper projects to as many tokens as it outputs."""
    tokenizer, _ = english
    torch.manual_seed(0)
    reference = ReferenceClipCaption(
        gpt2_config(len(tokenizer)), 10, CLIP_DIM, "transformer", 2, clip_length=4
    )
    with pytest.raises(ValueError, match="projects to 4 tokens .* but has 10 constant tokens"):
        import_reference_state_dict(saved_and_loaded(reference, tmp_path), tokenizer, n_head=4)


def test_fine_tuning_an_imported_checkpoint_trains_the_references_loss(english, tmp_path):
    """train.py `train()`: the logits from the last prefix position on, against the caption's tokens (no start
    token; "." ends the captions), padding ignored. The project's collator and CaptionTrainer, built from the
    imported model's conventions, give the same loss."""
    tokenizer, _ = english
    reference = reference_model(english, "mlp")
    model = import_reference_state_dict(saved_and_loaded(reference, tmp_path), tokenizer, n_head=4)
    captions = ENGLISH[:6]
    embeds = torch.randn(len(captions), CLIP_DIM, generator=torch.Generator().manual_seed(2))
    collator = clipcap.caption_collator(clipcap.ClipCapBundle(model, tokenizer), max_length=40)
    batch = collator(
        [{"image_embeds": e, "text": t, "image_index": i} for i, (e, t) in enumerate(zip(embeds, captions))]
    )
    trainer = CaptionTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    )
    # the reference's batch: tokenizer.encode(caption), padded with 0 (GPT-2's "!"; here never a caption token)
    encoded = [tokenizer(c, add_special_tokens=False).input_ids for c in captions]
    assert all(0 not in ids for ids in encoded)
    width = max(len(ids) for ids in encoded)
    tokens = torch.tensor([ids + [0] * (width - len(ids)) for ids in encoded])
    mask = torch.cat([torch.ones(len(captions), reference.prefix_length), (tokens != 0).float()], dim=1)
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        theirs = reference.loss(tokens, embeds, mask)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert (batch["labels"] != -100).sum() == sum(len(ids) for ids in encoded)  # no second "." appended


def test_a_checkpoint_file_becomes_a_folder_that_captions_as_the_imported_model(
    english, clip_embeds, tmp_path
):
    tokenizer, _ = english
    reference = reference_model(english, "mlp")
    torch.save(reference.state_dict(), tmp_path / "coco_weights.pt")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    command = [
        str(tmp_path / "coco_weights.pt"),
        str(tmp_path / "model"),
        "--tokenizer",
        str(tmp_path / "gpt2"),
    ]
    assert main([*command, "--clip-model", "openai/clip-vit-base-patch32", "--n-head", "4"]) == 0
    saved = clipcap.load_saved_clipcap(tmp_path / "model")
    assert saved.model.config.clip_model == "openai/clip-vit-base-patch32"
    imported = import_reference_state_dict(reference.state_dict(), tokenizer, n_head=4)
    decoding = {"preset": "beam", "max_new_tokens": MAX_TOKENS}
    assert generate_captions(
        saved.model.eval(), saved.tokenizer, decoding=decoding, image_embeds=clip_embeds
    ) == (generate_captions(imported, tokenizer, decoding=decoding, image_embeds=clip_embeds))
    assert (
        main([str(tmp_path / "missing.pt"), str(tmp_path / "other"), "--tokenizer", "x", "--clip-model", "y"])
        == 2
    )


def test_infer_captions_an_imported_checkpoint_with_its_conventions(english, tmp_path):
    """infer and the caption browser caption through `load_any_captioner`: uint8 images -> the saved CLIP ->
    the imported mapper and GPT-2, decoded from the prefix alone with "." kept."""
    tokenizer, stop = english
    clip_tokenizer = train_tokenizer(EN, 300)
    model = build_demo_dual_encoder(
        clip_tokenizer, image_size=32, hidden_size=32, num_layers=1, projection_dim=CLIP_DIM
    )
    clip = ClipBundle(model.eval(), clip_tokenizer, load_image_processor("vit", 32), "dual_encoder")
    save_clip(clip, tmp_path / "clip")
    reference = reference_model(english, "mlp")
    torch.save(reference.state_dict(), tmp_path / "coco_weights.pt")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    folder = import_reference_checkpoint(
        tmp_path / "coco_weights.pt", tmp_path / "gpt2", tmp_path / "model", str(tmp_path / "clip"), n_head=4
    )
    captioner = load_any_captioner(folder)
    images = torch.randint(
        0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    got = captioner.caption(images, {"preset": "greedy", "max_new_tokens": MAX_TOKENS})
    mean, std = processor_mean_std(clip.image_processor)
    with torch.no_grad():
        embeds = image_features(clip.model.eval(), normalize_pixel_values(images, mean, std))
    want = [reference_generate2(reference, embed, stop, entry_length=MAX_TOKENS) for embed in embeds]
    assert [c[0]["token_ids"] for c in got] == want


# -----------------------------------------------------------------------------
# yangjianxin1/ClipCap-Chinese


def port_model(tokenizer, mapping, seed=0, sep_bias=2.0, pad_bias=0.0) -> PortClipCaption:
    """The port's model at a small width; its final norm's bias pushed along [SEP] (captions of many lengths)
    and optionally [PAD]."""
    torch.manual_seed(seed)
    bert = port_bert_config(hidden_size=32, layers=3, heads=4, initializer_range=0.5)
    model = PortClipCaption(gpt2_config(len(tokenizer)), bert, 10, CLIP_DIM, mapping, constant_len=10)
    with torch.no_grad():
        wte = model.gpt2.transformer.wte.weight
        for token, bias in ((tokenizer.sep_token_id, sep_bias), (tokenizer.pad_token_id, pad_bias)):
            model.gpt2.transformer.ln_f.bias.add_(bias * wte[token] / wte[token].norm())
    return model.eval()


@pytest.mark.parametrize("mapping", ["bert", "mlp"])
def test_chinese_port_checkpoints_import_with_the_same_logits_and_their_conventions(
    chinese, tmp_path, mapping
):
    """models/model.py `ClipCaptionModel` with `BertMapper` (a BertModel with its pooler and 21,128 word
    embeddings, of which inputs_embeds uses neither) or the MLP; keys gpt2.* and clip_project.*."""
    port = port_model(chinese, mapping)
    model = import_reference_state_dict(saved_and_loaded(port, tmp_path), chinese, n_head=4, mapping_heads=4)
    config = model.config
    assert (config.mapping, config.prefix_len) == (mapping, 10)
    if mapping == "bert":
        assert (config.mapping_layers, config.constant_len) == (3, 10)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    prefix = torch.randn(2, CLIP_DIM)
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids, image_embeds=prefix).logits, port(prefix, ids), rtol=1e-4, atol=1e-5
        )
    # dataset.py: caption ids + [SEP], no [CLS]; predict.py: from the prefix alone, stop at [SEP] (dropped), no [UNK]
    assert config.start_after_prefix is False and config.keep_stop_token is False
    assert model.generation_config.eos_token_id == chinese.sep_token_id
    assert model.generation_config.pad_token_id == chinese.pad_token_id
    assert model.generation_config.suppress_tokens == [chinese.unk_token_id]


def test_chinese_port_greedy_is_its_sampler_at_top_k_1_and_never_emits_padding(
    chinese, clip_embeds, tmp_path
):
    """predict.py `generate` with topk=1. The documented difference: this project also never emits [PAD] (the
    port trained [PAD] after [SEP] as a label, so a weak model can put it inside a caption)."""
    port = port_model(chinese, "bert", seed=1)
    model = import_reference_state_dict(saved_and_loaded(port, tmp_path), chinese, n_head=4, mapping_heads=4)
    sep, pad, unk = chinese.sep_token_id, chinese.pad_token_id, chinese.unk_token_id
    greedy = {"preset": "greedy", "max_new_tokens": MAX_TOKENS + 1}  # the port runs max_len + 1 steps
    ours = token_ids(generate_captions(model, chinese, decoding=greedy, image_embeds=clip_embeds))
    assert ours == port_generate(port, clip_embeds, sep, pad, unk, MAX_TOKENS, suppress=[pad])
    assert any(0 < len(ids) < MAX_TOKENS for ids in ours)  # some stop at [SEP], which is not kept

    leaning = port_model(chinese, "bert", seed=1, pad_bias=2.0)
    model = import_reference_state_dict(
        saved_and_loaded(leaning, tmp_path), chinese, n_head=4, mapping_heads=4
    )
    theirs = port_generate(leaning, clip_embeds, sep, pad, unk, MAX_TOKENS)
    assert sum(pad in ids for ids in theirs) >= N_IMAGES // 2
    ours = token_ids(generate_captions(model, chinese, decoding=greedy, image_embeds=clip_embeds))
    assert not any(pad in ids or unk in ids for ids in ours)
