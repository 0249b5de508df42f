"""Dual encoders built, saved, reloaded and composed from tiny local checkpoints (nothing is downloaded)."""

import copy
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from transformers import (
    AutoModel,
    BertConfig,
    BertLMHeadModel,
    BertModel,
    ChineseCLIPConfig,
    ChineseCLIPImageProcessorPil,
    ChineseCLIPModel,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModel,
    GPT2Config,
    GPT2Model,
    VisionTextDualEncoderModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    ViTModel,
)

from nbutils.models.clip import (
    LOGIT_SCALE_INIT,
    ClipBundle,
    apply_freezing,
    build_demo_dual_encoder,
    check_image_size,
    compose_dual_encoder,
    image_features,
    load_clip_model,
    logit_scale_parameter,
    save_clip,
    text_features,
)
from nbutils.models.image_processors import load_image_processor

SIZE = 32  # image side of every tiny model here
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def demo_bundle(tokenizer, make_tiny_dual_encoder):
    tokenizer = copy.deepcopy(tokenizer)  # build_demo_dual_encoder lowers its model_max_length
    model = make_tiny_dual_encoder(tokenizer, SIZE, max_text_length=32)
    return ClipBundle(model, tokenizer, load_image_processor("vit", SIZE), "dual_encoder")


def _batch(tokenizer, captions, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = captions[:n]
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return torch.randn(n, 3, SIZE, SIZE, generator=g), enc.input_ids, enc.attention_mask


def _features(model, tokenizer, captions):
    pixel_values, input_ids, attention_mask = _batch(tokenizer, captions)
    model.eval()
    with torch.no_grad():
        return image_features(model, pixel_values), text_features(model, input_ids, attention_mask)


# -----------------------------------------------------------------------------
# Demo model


def test_demo_model_shapes_and_temperature(demo_bundle, captions):
    model, tokenizer = demo_bundle.model, demo_bundle.tokenizer
    assert isinstance(model, VisionTextDualEncoderModel)
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert model.config.text_config.pad_token_id == tokenizer.pad_token_id == 0
    assert model.config.vision_config.image_size == SIZE
    assert tokenizer.model_max_length == 32  # capped to the position table
    assert logit_scale_parameter(model) is model.logit_scale
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)

    pixel_values, input_ids, attention_mask = _batch(tokenizer, captions, n=4)
    model.eval()
    with torch.no_grad():
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, return_loss=True
        )
        img, txt = image_features(model, pixel_values), text_features(model, input_ids, attention_mask)
    assert out.logits_per_image.shape == (4, 4)
    assert torch.isfinite(out.loss)
    assert img.shape == (4, 16) and txt.shape == (4, 16)
    # projected but not normalised; normalising gives exactly the model's own embeddings
    assert not torch.allclose(img.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(F.normalize(img, dim=-1), out.image_embeds)
    torch.testing.assert_close(F.normalize(txt, dim=-1), out.text_embeds)


def test_demo_model_checks_arguments(tokenizer):
    with pytest.raises(ValueError, match="patch_size"):
        build_demo_dual_encoder(tokenizer, image_size=30, patch_size=31)
    with pytest.raises(ValueError, match="vision_tower"):
        build_demo_dual_encoder(tokenizer, image_size=30, vision_tower="resnet")
    with pytest.raises(ValueError, match="hidden_size=100"):
        build_demo_dual_encoder(tokenizer, image_size=32, vision_tower="cnn", vision_width=100, num_layers=4)
    assert tokenizer.model_max_length > 10**20  # untouched when nothing was built


# -----------------------------------------------------------------------------
# Save and reload


def test_save_then_load_gives_identical_embeddings(demo_bundle, captions, tmp_path):
    tokenizer = demo_bundle.tokenizer
    out = tmp_path / "model"
    save_clip(demo_bundle, out)
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary left beside it
    expected = _features(demo_bundle.model, tokenizer, captions)

    bundle = load_clip_model(out)
    assert bundle.kind == "dual_encoder"
    assert isinstance(bundle.model, VisionTextDualEncoderModel)
    assert bundle.tokenizer(captions).input_ids == tokenizer(captions).input_ids
    assert bundle.tokenizer.model_max_length == 32
    assert type(bundle.image_processor).__name__ == "ViTImageProcessorPil"
    for got, want in zip(_features(bundle.model, bundle.tokenizer, captions), expected):
        assert torch.equal(got, want)

    plain = AutoModel.from_pretrained(out)
    assert isinstance(plain, VisionTextDualEncoderModel)
    for got, want in zip(_features(plain, tokenizer, captions), expected):
        assert torch.equal(got, want)

    # saving again replaces the model; a folder that is not a model is never wiped
    save_clip(demo_bundle, out)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        save_clip(demo_bundle, tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"


# -----------------------------------------------------------------------------
# Tiny CLIP and Chinese-CLIP checkpoints


def _clip_tokenizer():
    """A byte-level CLIP tokenizer with no merges: every byte is a token (enough to test loading)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for token in alphabet + [ch + "</w>" for ch in alphabet]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tok = _clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            max_position_embeddings=32,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **TINY,
        ),
        vision_config=dict(image_size=SIZE, patch_size=8, **TINY),
        projection_dim=16,
    )
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    processor = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chinese_clip_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("chinese_clip")
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=32, pad_token_id=0, **TINY),
        vision_config=dict(image_size=SIZE, patch_size=8, **TINY),
        projection_dim=16,
    )
    torch.manual_seed(2)
    ChineseCLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor = ChineseCLIPImageProcessorPil(size={"height": SIZE, "width": SIZE}, do_center_crop=False)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "name, kind, model_class",
    [("clip_dir", "clip", CLIPModel), ("chinese_clip_dir", "chinese_clip", ChineseCLIPModel)],
)
def test_load_clip_and_chinese_clip(request, captions, name, kind, model_class):
    folder = request.getfixturevalue(name)
    bundle = load_clip_model(folder)
    assert bundle.kind == kind and type(bundle.model) is model_class
    assert bundle.tokenizer.model_max_length == 32
    reference = model_class.from_pretrained(folder).eval()
    pixel_values, input_ids, attention_mask = _batch(bundle.tokenizer, captions)
    img, txt = _features(bundle.model, bundle.tokenizer, captions)
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    with torch.no_grad():
        assert torch.equal(img, reference.get_image_features(pixel_values=pixel_values).pooler_output)
        out = reference(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
    torch.testing.assert_close(F.normalize(txt, dim=-1), out.text_embeds)
    torch.testing.assert_close(F.normalize(img, dim=-1), out.image_embeds)


# -----------------------------------------------------------------------------
# Composing a ViT and a BERT checkpoint


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(3)
    ViTModel(ViTConfig(image_size=SIZE, patch_size=8, **TINY)).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(4)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=40, **TINY)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_compose_vit_and_bert(vit_dir, bert_dir, tokenizer, captions, tmp_path):
    bundle = compose_dual_encoder(vit_dir, bert_dir, projection_dim=24)
    model = bundle.model
    assert bundle.kind == "dual_encoder" and isinstance(model, VisionTextDualEncoderModel)
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_INIT, abs=1e-6)
    assert type(bundle.image_processor).__name__ == "ViTImageProcessorPil"
    assert bundle.tokenizer(captions).input_ids == tokenizer(captions).input_ids
    assert bundle.tokenizer.model_max_length == 40
    # the towers carry the pretrained weights
    vit, bert = ViTModel.from_pretrained(vit_dir), BertModel.from_pretrained(bert_dir)
    for tower, ref in ((model.vision_model, vit), (model.text_model, bert)):
        ours = tower.state_dict()
        assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items())
    img, txt = _features(model, bundle.tokenizer, captions)
    assert img.shape == (3, 24) and txt.shape == (3, 24)

    # and the composed bundle survives save / load unchanged
    save_clip(bundle, tmp_path / "composed")
    again = load_clip_model(tmp_path / "composed")
    reloaded = _features(again.model, again.tokenizer, captions)
    assert all(torch.equal(a, b) for a, b in zip(reloaded, (img, txt)))


def test_compose_uses_the_vision_tower_of_a_clip_checkpoint(clip_dir, bert_dir):
    bundle = compose_dual_encoder(clip_dir, bert_dir, projection_dim=8)
    assert isinstance(bundle.model.vision_model, CLIPVisionModel)
    reference = CLIPModel.from_pretrained(clip_dir).vision_model.state_dict()
    ours = bundle.model.vision_model.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert type(bundle.image_processor).__name__ == "CLIPImageProcessorPil"


# -----------------------------------------------------------------------------
# Towers that cannot work as they are: repaired with a note, or refused


def _max_cosine_between_captions(model, tokenizer, captions):
    enc = tokenizer(captions, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        embeds = F.normalize(text_features(model, enc.input_ids, enc.attention_mask), dim=-1)
    cosine = embeds @ embeds.T
    return cosine[~torch.eye(len(captions), dtype=torch.bool)].max().item()


@pytest.fixture(scope="module")
def bert_lm_dir(tmp_path_factory, tokenizer):
    """A BertLMHeadModel checkpoint as BLIP-style decoders are saved: is_decoder, cross-attention, no pooler."""
    folder = tmp_path_factory.mktemp("bert_lm")
    torch.manual_seed(5)
    # A pretrained [CLS] attends to the caption; at the default init std (0.02) it barely does, so larger
    # weights stand in for pretraining.
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=40,
        is_decoder=True,
        add_cross_attention=True,
        initializer_range=0.5,
        **TINY,
    )
    BertLMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_text_tower_saved_as_a_decoder_is_composed_as_an_encoder(
    vit_dir, bert_lm_dir, tokenizer, captions, tmp_path, capsys
):
    captions = captions[:8]
    # The trap: composed as saved, the causal mask lets [CLS] see only itself, so all captions embed alike.
    as_saved = VisionTextDualEncoderModel.from_vision_text_pretrained(vit_dir, bert_lm_dir)
    assert as_saved.config.text_config.is_decoder
    assert _max_cosine_between_captions(as_saved, tokenizer, captions) > 0.9999

    bundle = compose_dual_encoder(vit_dir, bert_lm_dir, projection_dim=16)
    notes = capsys.readouterr().out
    assert "text_model=" in notes and "is_decoder=True, add_cross_attention=True" in notes
    assert "loaded as an encoder" in notes and "cross-attention weights are left unused" in notes
    text_config = bundle.model.config.text_config
    assert not text_config.is_decoder and not text_config.add_cross_attention
    assert _max_cosine_between_captions(bundle.model, tokenizer, captions) < 0.99
    # the encoder weights are the checkpoint's (only the cross-attention and the LM head are left out)
    pretrained = BertLMHeadModel.from_pretrained(bert_lm_dir).bert.state_dict()
    ours = bundle.model.text_model.state_dict()
    assert ours.keys() - pretrained.keys() == {"pooler.dense.weight", "pooler.dense.bias"}
    assert all(torch.equal(ours[k], pretrained[k]) for k in ours.keys() & pretrained.keys())

    # A dual encoder saved before with its text tower as a decoder is loaded as an encoder too.
    processor = load_image_processor(str(vit_dir))
    save_clip(ClipBundle(as_saved, tokenizer, processor, "dual_encoder"), tmp_path / "as_saved")
    reloaded = load_clip_model(tmp_path / "as_saved")
    assert "loaded as an encoder" in capsys.readouterr().out
    assert not reloaded.model.config.text_config.is_decoder
    assert _max_cosine_between_captions(reloaded.model, tokenizer, captions) < 0.99


@pytest.fixture(scope="module")
def vit_classifier_dir(tmp_path_factory):
    """A ViTForImageClassification checkpoint (google/vit-base-patch16-224's kind): no pooler weights."""
    folder = tmp_path_factory.mktemp("vit_classifier")
    torch.manual_seed(6)
    ViTForImageClassification(ViTConfig(image_size=SIZE, patch_size=8, num_labels=5, **TINY)).save_pretrained(
        folder
    )
    ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    return folder


def test_a_classification_checkpoint_pools_what_its_classifier_saw(
    vit_classifier_dir, bert_dir, tokenizer, captions, tmp_path, capsys
):
    pixel_values = _batch(tokenizer, captions)[0]
    classifier = ViTForImageClassification.from_pretrained(vit_classifier_dir).eval()
    with torch.no_grad():
        classifier_features = classifier.vit(pixel_values).last_hidden_state[:, 0]  # the classifier's input
    # The trap: as ViTModel its pooler is missing from the checkpoint and starts at random, a different
    # random projection for every seed, which a locked image tower (lock_image, LiT) would then keep.
    poolers = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        as_saved = VisionTextDualEncoderModel.from_vision_text_pretrained(vit_classifier_dir, bert_dir).eval()
        with torch.no_grad():
            poolers.append(as_saved.vision_model(pixel_values).pooler_output)
    assert not torch.allclose(poolers[0], poolers[1])
    assert not torch.allclose(poolers[0], classifier_features, atol=1e-3)

    bundle = compose_dual_encoder(vit_classifier_dir, bert_dir, projection_dim=16)
    assert "vision_model=" in capsys.readouterr().out
    model = bundle.model.eval()
    with torch.no_grad():
        pooled = model.vision_model(pixel_values).pooler_output
    torch.testing.assert_close(pooled, classifier_features)
    apply_freezing(model, lock_image=True)  # nothing random is frozen: the pooler passes the features through
    assert not model.vision_model.pooler.dense.weight.requires_grad
    # saved and reloaded, the pooler stays a pass-through
    save_clip(bundle, tmp_path / "composed")
    again = load_clip_model(tmp_path / "composed").model.eval()
    assert again.config.vision_config.pooler_act == "linear"
    with torch.no_grad():
        torch.testing.assert_close(again.vision_model(pixel_values).pooler_output, classifier_features)


def test_compose_uses_the_text_tower_of_a_clip_checkpoint(vit_dir, clip_dir, captions, tmp_path):
    bundle = compose_dual_encoder(vit_dir, clip_dir, projection_dim=8)
    assert isinstance(bundle.model.text_model, CLIPTextModel)
    reference = CLIPModel.from_pretrained(clip_dir).text_model.state_dict()
    ours = bundle.model.text_model.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert type(bundle.tokenizer).__name__.startswith("CLIPTokenizer")
    img, txt = _features(bundle.model, bundle.tokenizer, captions)
    save_clip(bundle, tmp_path / "composed")
    again = load_clip_model(tmp_path / "composed")
    assert isinstance(again.model.text_model, CLIPTextModel)
    assert all(
        torch.equal(a, b) for a, b in zip(_features(again.model, again.tokenizer, captions), (img, txt))
    )


def test_towers_without_a_pooled_embedding_or_with_missing_weights_are_refused(
    vit_dir, bert_dir, tokenizer, tmp_path
):
    gpt2 = tmp_path / "gpt2"
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=40, n_embd=32, n_layer=1, n_head=2)
    GPT2Model(config).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    with pytest.raises(ValueError, match="text_model=.*'gpt2' model gives no pooled embedding.*Use a BERT"):
        compose_dual_encoder(vit_dir, gpt2)
    # weights saved under another model's names (a wrapper's state_dict) would all start at random
    wrapped = tmp_path / "wrapped_bert"
    wrapped.mkdir()
    shutil.copy(bert_dir / "config.json", wrapped)
    tokenizer.save_pretrained(wrapped)
    state = {f"text_encoder.{k}": v for k, v in BertModel.from_pretrained(bert_dir).state_dict().items()}
    save_file(state, wrapped / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="text_model=.*weights of its BertModel are not in the checkpoint"):
        compose_dual_encoder(vit_dir, wrapped)


# -----------------------------------------------------------------------------
# Errors


def test_unknown_path(tmp_path):
    with pytest.raises(ValueError, match="model_name_or_path=.*no such folder"):
        load_clip_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="model_name_or_path=.*could not load a model config"):
        load_clip_model(tmp_path)  # exists, but holds nothing


def test_folder_without_tokenizer(demo_bundle, tmp_path):
    demo_bundle.model.save_pretrained(tmp_path)
    demo_bundle.image_processor.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_name_or_path=.*tokenizer is missing"):
        load_clip_model(tmp_path)


def test_clip_folder_without_tokenizer(clip_dir, tmp_path):
    # AutoTokenizer alone would "load" a 2-token CLIP tokenizer from config.json here
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(clip_dir / name, tmp_path / name)
    with pytest.raises(ValueError, match="model_name_or_path=.*tokenizer is missing"):
        load_clip_model(tmp_path)


def test_folder_without_image_processor(demo_bundle, tmp_path):
    demo_bundle.model.save_pretrained(tmp_path)
    demo_bundle.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_name_or_path=.*image processor"):
        load_clip_model(tmp_path)


def test_not_a_dual_encoder(bert_dir):
    with pytest.raises(ValueError, match="model_name_or_path=.*'bert' checkpoint, not a dual encoder"):
        load_clip_model(bert_dir)


def _weights_only(src, dst):
    """A copy of a checkpoint folder with its config and weights but no tokenizer or processor."""
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


def test_compose_errors(vit_dir, bert_dir, clip_dir, tmp_path):
    no_tokenizer = _weights_only(bert_dir, tmp_path / "bert_no_tokenizer")
    with pytest.raises(ValueError, match="text_model=.*tokenizer is missing"):
        compose_dual_encoder(vit_dir, no_tokenizer)
    with pytest.raises(ValueError, match="vision_model=.*no such folder"):
        compose_dual_encoder(tmp_path / "nope", bert_dir)
    with pytest.raises(ValueError, match="text_model=.*no such folder"):
        compose_dual_encoder(vit_dir, tmp_path / "nope")
    no_processor = _weights_only(vit_dir, tmp_path / "vit_no_processor")
    with pytest.raises(ValueError, match="vision_model=.*image processor"):
        compose_dual_encoder(no_processor, bert_dir)
    with pytest.raises(ValueError, match="vision_model=.*not a vision encoder"):
        compose_dual_encoder(bert_dir, bert_dir)
    with pytest.raises(ValueError, match="text_model=.*not a text encoder"):
        compose_dual_encoder(vit_dir, vit_dir)


def test_check_image_size(demo_bundle):
    check_image_size(demo_bundle.model, SIZE)  # matches: no error
    with pytest.raises(ValueError, match=f"image_size=64 but the vision tower expects {SIZE}-pixel images"):
        check_image_size(demo_bundle.model, 64)
    with pytest.raises(ValueError, match="cache_size=224"):
        check_image_size(demo_bundle.model, 224, parameter="cache_size")


# -----------------------------------------------------------------------------
# Freezing


def _numel(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "flags, frozen_towers",
    [
        ({}, []),
        ({"lock_image": True}, ["vision_model"]),
        ({"lock_text": True}, ["text_model"]),
        ({"projections_only": True}, ["vision_model", "text_model"]),
    ],
)
def test_apply_freezing(flags, frozen_towers, tokenizer, captions, make_tiny_dual_encoder):
    model = make_tiny_dual_encoder(copy.deepcopy(tokenizer), SIZE, max_text_length=32)
    apply_freezing(model, lock_image=True, lock_text=True)  # a second call must fully replace the first
    counts = apply_freezing(model, **flags)
    total = _numel(model)
    frozen = sum(_numel(getattr(model, name)) for name in frozen_towers)
    assert counts == {"trainable": total - frozen, "frozen": frozen, "total": total}
    if flags.get("projections_only"):
        assert counts["trainable"] == _numel(model.visual_projection) + _numel(model.text_projection) + 1

    pixel_values, input_ids, attention_mask = _batch(tokenizer, captions, n=4)
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, return_loss=True
    )
    out.loss.backward()
    for name, param in model.named_parameters():
        tower = name.split(".")[0]
        if tower in frozen_towers:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad, name
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
    assert model.visual_projection.weight.grad.abs().sum() > 0
    assert model.text_projection.weight.grad.abs().sum() > 0


def test_demo_vit_tower_starts_at_1_over_sqrt_width_with_sincos_positions(tokenizer):
    from nbutils.models.positions import sincos_2d

    model = build_demo_dual_encoder(
        copy.deepcopy(tokenizer),
        image_size=64,
        patch_size=21,
        vision_tower="vit",
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        text_layers=1,
    )
    assert model.config.vision_config.initializer_range == pytest.approx(32**-0.5)
    table = model.vision_model.embeddings.position_embeddings[0].detach()
    assert table.shape == (1 + 9, 32)  # 21 px patches on 64 px: a 3x3 grid, the last pixel row unused
    assert torch.equal(table[0], torch.zeros(32))
    # proportional to the 2-D sine-cosine table (scaled to the patch projection's output)
    sincos = sincos_2d(3, 3, 32)
    scale = (table[1:] * sincos).sum() / sincos.pow(2).sum()
    assert scale > 0.1
    torch.testing.assert_close(table[1:], scale * sincos)
