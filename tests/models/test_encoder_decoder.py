"""Captioners (ViT encoder + GPT-2 or BERT decoder): token conventions, save and reload, plain-transformers use."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertLMHeadModel,
    GPT2Config,
    GPT2LMHeadModel,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from nbutils.data.datasets import CaptionCollator
from nbutils.models.encoder_decoder import (
    build_demo_encoder_decoder,
    load_encoder_decoder,
    load_saved_encoder_decoder,
    save_encoder_decoder,
    set_caption_token_ids,
)
from nbutils.models.image_processors import load_image_processor
from nbutils.models.tokenizer import caption_special_ids, train_bpe_tokenizer, train_tokenizer

ZH = ["一个红色的圆形", "两个蓝色的方块在中间", "左上角有一个小的绿色三角形"]
EN = ["a red circle", "two blue squares in the centre", "a small green triangle in the top left corner"]
TINY = dict(
    image_size=16,
    patch_size=8,
    hidden_size=16,
    encoder_layers=1,
    decoder_layers=1,
    num_heads=2,
    intermediate_size=32,
    max_length=32,
)


def _tokenizer(language):
    return train_tokenizer(ZH) if language == "zh" else train_bpe_tokenizer(EN, vocab_size=300)


def _images(n=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("decoder", ["gpt2", "bert"])
@pytest.mark.parametrize("language", ["zh", "en"])
def test_token_ids_come_from_the_tokenizer_into_both_configs(decoder, language):
    tok = _tokenizer(language)
    torch.manual_seed(0)
    bundle = build_demo_encoder_decoder(tok, decoder=decoder, **TINY)
    ids = caption_special_ids(tok)
    for config in (bundle.model.config, bundle.model.generation_config):
        assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id) == (
            ids["start"],
            ids["end"],
            ids["pad"],
        )
    assert bundle.model.config.decoder.model_type == decoder and bundle.decoder == decoder
    pixel_values = bundle.image_processor(_images(), return_tensors="pt").pixel_values
    out = bundle.model.generate(pixel_values, max_new_tokens=5, num_beams=1, do_sample=False)
    assert out.shape[0] == 2 and (out[:, 0] == ids["start"]).all() and int(out.max()) < len(tok)


@pytest.mark.parametrize("decoder", ["gpt2", "bert"])
def test_the_decoder_config_is_built_with_the_tokenizer_s_ids(decoder, caplog):
    """No "bos_token_id must be None or an integer within the vocabulary, got 50256" warning from transformers."""
    tok = _tokenizer("zh")
    transformers_logger = logging.getLogger("transformers")  # it does not propagate to caplog's root handler
    transformers_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="transformers"):
            logging.Logger.warning_once.cache_clear()  # transformers warns once per message and process
            GPT2Config(vocab_size=len(tok))  # GPT-2's own ids: the check sees the warning it is about
            assert any("got 50256" in r.getMessage() for r in caplog.records)
            logging.Logger.warning_once.cache_clear()
            caplog.clear()
            build_demo_encoder_decoder(tok, decoder=decoder, **TINY)
    finally:
        transformers_logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records] == []


@pytest.mark.parametrize("decoder", ["gpt2", "bert"])
def test_decoder_loss_equals_cross_entropy_over_the_trained_positions(decoder):
    tok = _tokenizer("zh")
    torch.manual_seed(0)
    model = build_demo_encoder_decoder(tok, decoder=decoder, **TINY).model.eval()
    ids = caption_special_ids(tok)
    batch = CaptionCollator(tok, ids["start"], ids["end"], ids["pad"], prompt="一个")(
        [
            {"pixel_values": torch.zeros(3, 16, 16, dtype=torch.uint8), "text": t, "image_index": i}
            for i, t in enumerate(ZH[1:])
        ]
    )
    pixel_values = torch.randn(2, 3, 16, 16)
    out = model(
        pixel_values=pixel_values,
        decoder_input_ids=batch["decoder_input_ids"],
        decoder_attention_mask=batch["decoder_attention_mask"],
        labels=batch["labels"],
    )
    keep = batch["labels"] != -100
    log_probs = torch.log_softmax(out.logits[keep], dim=-1)
    target = batch["labels"][keep]
    torch.testing.assert_close(out.loss, -log_probs[torch.arange(len(target)), target].mean())


def test_save_and_reload_give_identical_generations_and_plain_transformers_use_works(tmp_path):
    tok = _tokenizer("zh")
    torch.manual_seed(0)
    bundle = build_demo_encoder_decoder(tok, decoder="gpt2", **TINY)
    path = save_encoder_decoder(bundle, tmp_path / "model")
    images = _images(3)
    pixel_values = bundle.image_processor(images, return_tensors="pt").pixel_values
    settings = dict(num_beams=4, max_length=16)  # the original notebook's predict_step
    want = bundle.tokenizer.batch_decode(
        bundle.model.eval().generate(pixel_values, **settings), skip_special_tokens=True
    )

    again = load_saved_encoder_decoder(path)
    assert again.decoder == "gpt2"
    assert (
        again.tokenizer.batch_decode(
            again.model.eval().generate(pixel_values, **settings), skip_special_tokens=True
        )
        == want
    )

    # The original project's "use it directly" code, unchanged, on the saved folder.
    model = VisionEncoderDecoderModel.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    processor = ViTImageProcessor.from_pretrained(str(path))
    pv = processor(images=images, return_tensors="pt").pixel_values
    torch.testing.assert_close(pv, pixel_values)
    output_ids = model.eval().generate(pv, num_beams=4, max_length=16)
    assert tokenizer.batch_decode(output_ids, skip_special_tokens=True) == want

    with pytest.raises(ValueError, match="non-empty folder"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("keep me")
        save_encoder_decoder(bundle, tmp_path / "other")


def _save_towers(tmp_path, decoder_model, tok, processor_size=16):
    vit = ViTModel(
        ViTConfig(
            image_size=processor_size,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    vit.save_pretrained(tmp_path / "vit")
    load_image_processor("vit", processor_size).save_pretrained(tmp_path / "vit")
    decoder_model.save_pretrained(tmp_path / "dec")
    tok.save_pretrained(tmp_path / "dec")
    return tmp_path / "vit", tmp_path / "dec"


def test_pretrained_towers_pair_up_and_uer_style_ids_are_replaced_by_the_tokenizer_s(tmp_path):
    tok = _tokenizer("zh")
    # UER's config: bos/eos 50256, far outside a BertTokenizer vocabulary.
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_embd=16,
            n_layer=1,
            n_head=2,
            n_positions=32,
            bos_token_id=50256,
            eos_token_id=50256,
        )
    )
    vit, dec = _save_towers(tmp_path, gpt2, tok)
    bundle = load_encoder_decoder(vit, dec, "gpt2")
    assert bundle.model.generation_config.eos_token_id == tok.sep_token_id
    assert bundle.model.generation_config.decoder_start_token_id == tok.cls_token_id
    assert bundle.model.config.decoder.add_cross_attention is True
    torch.testing.assert_close(bundle.model.decoder.transformer.wte.weight, gpt2.transformer.wte.weight)
    out = bundle.model.generate(
        bundle.image_processor(_images(1), return_tensors="pt").pixel_values, max_new_tokens=4
    )
    assert int(out.max()) < len(tok)
    with pytest.raises(ValueError, match="decoder='bert'.*gpt2"):
        load_encoder_decoder(vit, dec, "bert")


def test_a_bert_decoder_checkpoint_becomes_a_blip_style_decoder(tmp_path):
    tok = _tokenizer("zh")
    bert = BertLMHeadModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            is_decoder=True,
        )
    )
    vit, dec = _save_towers(tmp_path, bert, tok)
    bundle = load_encoder_decoder(vit, dec, "bert")
    assert bundle.decoder == "bert" and bundle.model.config.decoder.is_decoder
    assert set_caption_token_ids(bundle.model, tok) == {
        "start": tok.cls_token_id,
        "end": tok.sep_token_id,
        "pad": tok.pad_token_id,
    }
    with pytest.raises(ValueError, match="decoder must be one of"):
        load_encoder_decoder(vit, dec, "t5")


def test_demo_captioner_one_patch_per_grid_cell_sincos_positions_and_dropout():
    from nbutils.models.positions import sincos_2d

    settings = {**TINY, "image_size": 64, "patch_size": 21}
    bundle = build_demo_encoder_decoder(_tokenizer("zh"), decoder="gpt2", dropout=0.0, **settings)
    model = bundle.model
    # 64 px with 21 px patches: a 3x3 grid (the last pixel row and column unused), plus [CLS]
    hidden = model.encoder(pixel_values=torch.zeros(2, 3, 64, 64)).last_hidden_state
    assert hidden.shape == (2, 10, TINY["hidden_size"])
    table = model.encoder.embeddings.position_embeddings[0].detach()
    reference = sincos_2d(3, 3, TINY["hidden_size"])
    torch.testing.assert_close(table[1:] / table[1:].norm(), reference / reference.norm())
    # weights start at std 1/sqrt(width) unless initializer_range says otherwise
    width = TINY["hidden_size"]
    assert model.config.encoder.initializer_range == pytest.approx(width**-0.5)
    assert model.config.decoder.initializer_range == pytest.approx(width**-0.5)
    attention = model.decoder.transformer.h[0].crossattention.c_attn.weight
    assert attention.std().item() == pytest.approx(width**-0.5, rel=0.15)
    custom = build_demo_encoder_decoder(_tokenizer("zh"), initializer_range=0.02, **TINY).model
    assert custom.decoder.transformer.h[0].crossattention.c_attn.weight.std().item() == pytest.approx(
        0.02, rel=0.15
    )
    decoder = model.config.decoder
    assert (decoder.resid_pdrop, decoder.embd_pdrop, decoder.attn_pdrop) == (0.0, 0.0, 0.0)
    bert = build_demo_encoder_decoder(
        _tokenizer("zh"), decoder="bert", dropout=0.2, **TINY
    ).model.config.decoder
    assert (bert.hidden_dropout_prob, bert.attention_probs_dropout_prob) == (0.2, 0.2)
    with pytest.raises(ValueError, match="patch_size"):
        build_demo_encoder_decoder(_tokenizer("zh"), **{**TINY, "patch_size": 17})
    with pytest.raises(ValueError, match="dropout"):
        build_demo_encoder_decoder(_tokenizer("zh"), dropout=1.0, **TINY)
    with pytest.raises(ValueError, match="initializer_range"):
        build_demo_encoder_decoder(_tokenizer("zh"), initializer_range=-1.0, **TINY)
