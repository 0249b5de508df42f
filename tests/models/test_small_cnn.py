"""The small CNN image tower (nbutils.models.small_cnn): the math, and save / load inside a dual encoder."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, VisionTextDualEncoderModel

from nbutils.models.clip import (
    ClipBundle,
    build_demo_dual_encoder,
    image_features,
    load_clip_model,
    save_clip,
)
from nbutils.models.image_processors import load_image_processor
from nbutils.models.small_cnn import MODEL_TYPE, SmallCnnConfig, SmallCnnModel
from nbutils.models.vision_towers import small_cnn_config


def _reference(model: SmallCnnModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """The forward pass written out with torch.nn.functional, from the model's own weights (eval mode)."""
    hidden = pixel_values
    for conv, norm, _, _ in model.stages:
        hidden = F.conv2d(hidden, conv.weight, conv.bias, padding=1)
        hidden = (hidden - norm.running_mean[:, None, None]) / torch.sqrt(
            norm.running_var[:, None, None] + norm.eps
        )
        hidden = hidden * norm.weight[:, None, None] + norm.bias[:, None, None]
        hidden = F.max_pool2d(hidden.clamp(min=0), 2)
    return hidden


def _trained_a_little(model, x):
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(pixel_values=x)  # moves the BatchNorm running statistics off their defaults
    return model.eval()


def test_forward_matches_the_written_out_math():
    torch.manual_seed(0)
    model = SmallCnnModel(SmallCnnConfig(image_size=32, hidden_sizes=[4, 8, 16]))
    x = torch.randn(5, 3, 32, 32)
    _trained_a_little(model, x)
    assert not torch.allclose(model.stages[0][1].running_mean, torch.zeros(4))
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    want = _reference(model, x)
    assert out.last_hidden_state.shape == (5, 16, 4, 4)  # three stages: 32 -> 16 -> 8 -> 4
    torch.testing.assert_close(out.last_hidden_state, want, rtol=1e-5, atol=1e-5)
    # max pooling by default
    torch.testing.assert_close(out.pooler_output, want.amax(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [(4, 16, 16), (8, 8, 8), (16, 4, 4)]
    assert model.config.hidden_size == 16


def test_mean_pooling_is_the_grids_mean():
    torch.manual_seed(0)
    model = SmallCnnModel(SmallCnnConfig(image_size=16, hidden_sizes=[4, 8], pooling="mean")).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out = model(pixel_values=x)
    torch.testing.assert_close(out.pooler_output, _reference(model, x).mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    assert SmallCnnConfig.from_dict(model.config.to_dict()).pooling == "mean"  # saved with the model
    with pytest.raises(ValueError, match="pooling"):
        SmallCnnConfig(pooling="sum")


def test_config_is_registered_and_checked():
    config = AutoConfig.for_model(MODEL_TYPE, image_size=16, hidden_sizes=[2, 4])
    assert isinstance(config, SmallCnnConfig) and config.to_dict()["hidden_size"] == 4
    assert isinstance(AutoModel.from_config(config), SmallCnnModel)
    assert small_cnn_config(64, 256, 4).hidden_sizes == [32, 64, 128, 256]
    with pytest.raises(ValueError, match="too small"):
        SmallCnnConfig(image_size=8, hidden_sizes=[2, 4, 8, 16])
    with pytest.raises(ValueError, match="positive"):
        SmallCnnConfig(hidden_sizes=[])
    with pytest.raises(ValueError, match="divisible"):
        small_cnn_config(64, 100, 4)


def test_dual_encoder_with_the_cnn_saves_and_reloads(tokenizer, captions, tmp_path):
    tokenizer = copy.deepcopy(tokenizer)
    torch.manual_seed(0)
    model = build_demo_dual_encoder(
        tokenizer,
        image_size=32,
        vision_tower="cnn",
        vision_width=16,
        num_layers=3,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        projection_dim=8,
        text_layers=1,
        max_text_length=32,
    )
    assert isinstance(model.vision_model, SmallCnnModel) and model.visual_projection.in_features == 16
    x = torch.randn(4, 3, 32, 32)
    _trained_a_little(model.vision_model, x)
    with torch.no_grad():
        want = image_features(model, x)
    save_clip(ClipBundle(model, tokenizer, load_image_processor("vit", 32), "dual_encoder"), tmp_path / "m")

    bundle = load_clip_model(tmp_path / "m")
    plain = VisionTextDualEncoderModel.from_pretrained(tmp_path / "m").eval()
    for loaded in (bundle.model.eval(), plain):
        assert isinstance(loaded.vision_model, SmallCnnModel)
        with torch.no_grad():
            assert torch.equal(image_features(loaded, x), want)  # running statistics saved too
