"""Dual encoders built, saved, reloaded and composed from tiny local checkpoints (nothing is downloaded)."""

import copy
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from tokenizers import pre_tokenizers
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    ChineseCLIPConfig,
    ChineseCLIPImageProcessorPil,
    ChineseCLIPModel,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
    CLIPVisionModel,
    VisionTextDualEncoderModel,
    ViTConfig,
    ViTImageProcessorPil,
    ViTModel,
)

from nbutils.clip_models import (
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
    train_tokenizer,
)
from nbutils.image_processors import load_image_processor
from nbutils.io import DataError

ZH = ["一个红色的圆形", "两只猫在草地上玩耍", "一只狗在海边奔跑", "桌子上放着一杯咖啡", "蓝色的天空中有白云",
      "一个男人骑着自行车", "孩子们在公园里踢足球", "一辆红色的汽车停在路边", "女人在厨房里做饭", "一盘新鲜的水果",
      "雪山下有一片湖", "夜晚的城市灯火通明", "一只鸟站在树枝上", "老人在读报纸", "绿色的三角形",
      "黄色的正方形在中间", "一群羊在山坡上吃草", "火车穿过隧道", "小女孩拿着气球", "海上有一艘帆船",
      "篮球运动员在投篮", "一碗热气腾腾的面条", "猫睡在沙发上", "街上有很多行人", "一个蓝色的圆形"]
EN = ["A red circle on a white background", "Two cats playing on the grass", "A dog running on the beach",
      "A cup of coffee on the table", "White clouds in a blue sky", "A man riding a bicycle",
      "Children playing football in the park", "A red car parked by the road", "A woman cooking in the kitchen",
      "A plate of fresh fruit", "A lake below a snowy mountain", "The city lit up at night",
      "A bird standing on a branch", "An old man reading a newspaper", "A green triangle",
      "A yellow square in the middle", "Sheep grazing on a hillside", "A train going through a tunnel",
      "A little girl holding a balloon", "A sailboat on the sea", "A basketball player shooting",
      "A bowl of hot noodles", "A cat sleeping on the sofa", "Many people walking in the street",
      "A blue circle"]
CAPTIONS = ZH + EN
SIZE = 32  # image side of every tiny model here
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CAPTIONS, vocab_size=3000)


@pytest.fixture(scope="module")
def demo_bundle(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)  # build_demo_dual_encoder lowers its model_max_length
    torch.manual_seed(0)
    model = build_demo_dual_encoder(tokenizer, image_size=SIZE, patch_size=8, hidden_size=32, num_layers=2,
                                    num_heads=2, intermediate_size=64, projection_dim=16, max_text_length=32)
    return ClipBundle(model, tokenizer, load_image_processor("vit", SIZE), "dual_encoder")


def _batch(tokenizer, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = CAPTIONS[:n]
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return torch.randn(n, 3, SIZE, SIZE, generator=g), enc.input_ids, enc.attention_mask


def _features(model, tokenizer):
    pixel_values, input_ids, attention_mask = _batch(tokenizer)
    model.eval()
    with torch.no_grad():
        return image_features(model, pixel_values), text_features(model, input_ids, attention_mask)


# -----------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_splits_cjk_characters_and_lowercases_english(tokenizer):
    assert isinstance(tokenizer, BertTokenizerFast)
    ids = tokenizer("一个红色的圆形").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "一", "个", "红", "色", "的", "圆", "形", "[SEP]"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.tokenize("A RED Circle") == ["a", "red", "circle"]
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    # a character never seen in training is unknown, not dropped
    assert tokenizer.convert_ids_to_tokens(tokenizer("龘").input_ids) == ["[CLS]", "[UNK]", "[SEP]"]


def test_tokenizer_round_trips_through_autotokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = CAPTIONS + ["混合 mixed 文本!"]
    assert reloaded(texts).input_ids == tokenizer(texts).input_ids
    assert reloaded.get_vocab() == tokenizer.get_vocab()


def test_tokenizer_is_deterministic(tokenizer):
    assert train_tokenizer(CAPTIONS, vocab_size=3000).get_vocab() == tokenizer.get_vocab()
    # the Rust trainer's hash maps are seeded per process: a second process must agree too
    code = ("import json, sys; from nbutils.clip_models import train_tokenizer; "
            "print(json.dumps(train_tokenizer(json.loads(sys.stdin.read()), vocab_size=3000).get_vocab()))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(CAPTIONS), capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == tokenizer.get_vocab()


def test_tokenizer_rejects_bad_texts():
    with pytest.raises(DataError, match="texts is empty"):
        train_tokenizer([])
    with pytest.raises(DataError, match=r"texts\[1\]"):
        train_tokenizer(["好", None])


# -----------------------------------------------------------------------------
# Demo model


def test_demo_model_shapes_and_temperature(demo_bundle):
    model, tokenizer = demo_bundle.model, demo_bundle.tokenizer
    assert isinstance(model, VisionTextDualEncoderModel)
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert model.config.text_config.pad_token_id == tokenizer.pad_token_id == 0
    assert model.config.vision_config.image_size == SIZE
    assert tokenizer.model_max_length == 32  # capped to the position table
    assert logit_scale_parameter(model) is model.logit_scale
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)

    pixel_values, input_ids, attention_mask = _batch(tokenizer, n=4)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, return_loss=True)
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
        build_demo_dual_encoder(tokenizer, image_size=30, patch_size=8)
    assert tokenizer.model_max_length > 10**20  # untouched when nothing was built


# -----------------------------------------------------------------------------
# Save and reload


def test_save_then_load_gives_identical_embeddings(demo_bundle, tmp_path):
    tokenizer = demo_bundle.tokenizer
    out = tmp_path / "model"
    save_clip(demo_bundle, out)
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary left beside it
    expected = _features(demo_bundle.model, tokenizer)

    bundle = load_clip_model(out)
    assert bundle.kind == "dual_encoder"
    assert isinstance(bundle.model, VisionTextDualEncoderModel)
    assert bundle.tokenizer(CAPTIONS).input_ids == tokenizer(CAPTIONS).input_ids
    assert bundle.tokenizer.model_max_length == 32
    assert type(bundle.image_processor).__name__ == "ViTImageProcessorPil"
    for got, want in zip(_features(bundle.model, bundle.tokenizer), expected):
        assert torch.equal(got, want)

    plain = AutoModel.from_pretrained(out)
    assert isinstance(plain, VisionTextDualEncoderModel)
    for got, want in zip(_features(plain, tokenizer), expected):
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
        text_config=dict(vocab_size=len(tok), max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY),
        vision_config=dict(image_size=SIZE, patch_size=8, **TINY), projection_dim=16)
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
        vision_config=dict(image_size=SIZE, patch_size=8, **TINY), projection_dim=16)
    torch.manual_seed(2)
    ChineseCLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ChineseCLIPImageProcessorPil(size={"height": SIZE, "width": SIZE}, do_center_crop=False).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name, kind, model_class", [("clip_dir", "clip", CLIPModel),
                                                     ("chinese_clip_dir", "chinese_clip", ChineseCLIPModel)])
def test_load_clip_and_chinese_clip(request, name, kind, model_class):
    folder = request.getfixturevalue(name)
    bundle = load_clip_model(folder)
    assert bundle.kind == kind and type(bundle.model) is model_class
    assert bundle.tokenizer.model_max_length == 32
    reference = model_class.from_pretrained(folder).eval()
    pixel_values, input_ids, attention_mask = _batch(bundle.tokenizer)
    img, txt = _features(bundle.model, bundle.tokenizer)
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
    BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=40, **TINY)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_compose_vit_and_bert(vit_dir, bert_dir, tokenizer, tmp_path):
    bundle = compose_dual_encoder(vit_dir, bert_dir, projection_dim=24)
    model = bundle.model
    assert bundle.kind == "dual_encoder" and isinstance(model, VisionTextDualEncoderModel)
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_INIT, abs=1e-6)
    assert type(bundle.image_processor).__name__ == "ViTImageProcessorPil"
    assert bundle.tokenizer(CAPTIONS).input_ids == tokenizer(CAPTIONS).input_ids
    assert bundle.tokenizer.model_max_length == 40
    # the towers carry the pretrained weights
    vit, bert = ViTModel.from_pretrained(vit_dir), BertModel.from_pretrained(bert_dir)
    for tower, ref in ((model.vision_model, vit), (model.text_model, bert)):
        ours = tower.state_dict()
        assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items())
    img, txt = _features(model, bundle.tokenizer)
    assert img.shape == (3, 24) and txt.shape == (3, 24)

    # and the composed bundle survives save / load unchanged
    save_clip(bundle, tmp_path / "composed")
    again = load_clip_model(tmp_path / "composed")
    assert all(torch.equal(a, b) for a, b in zip(_features(again.model, again.tokenizer), (img, txt)))


def test_compose_uses_the_vision_tower_of_a_clip_checkpoint(clip_dir, bert_dir):
    bundle = compose_dual_encoder(clip_dir, bert_dir, projection_dim=8)
    assert isinstance(bundle.model.vision_model, CLIPVisionModel)
    reference = CLIPModel.from_pretrained(clip_dir).vision_model.state_dict()
    ours = bundle.model.vision_model.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert type(bundle.image_processor).__name__ == "CLIPImageProcessorPil"


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
        compose_dual_encoder(vit_dir, clip_dir)


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


@pytest.mark.parametrize("flags, frozen_towers", [
    ({}, []),
    ({"lock_image": True}, ["vision_model"]),
    ({"lock_text": True}, ["text_model"]),
    ({"projections_only": True}, ["vision_model", "text_model"]),
])
def test_apply_freezing(flags, frozen_towers, tokenizer):
    torch.manual_seed(0)
    model = build_demo_dual_encoder(copy.deepcopy(tokenizer), image_size=SIZE, hidden_size=32, num_layers=2,
                                    num_heads=2, intermediate_size=64, projection_dim=16, max_text_length=32)
    apply_freezing(model, lock_image=True, lock_text=True)  # a second call must fully replace the first
    counts = apply_freezing(model, **flags)
    total = _numel(model)
    frozen = sum(_numel(getattr(model, name)) for name in frozen_towers)
    assert counts == {"trainable": total - frozen, "frozen": frozen, "total": total}
    if flags.get("projections_only"):
        assert counts["trainable"] == _numel(model.visual_projection) + _numel(model.text_projection) + 1

    pixel_values, input_ids, attention_mask = _batch(tokenizer, n=4)
    out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, return_loss=True)
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
