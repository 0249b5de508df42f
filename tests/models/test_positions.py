import math

import pytest
import torch

from nbutils.models.positions import init_sincos_positions, sincos_2d


def naive_sincos(rows, cols, dim, temperature=10000.0):
    """The MAE formula written out, one patch and one channel at a time."""
    quarter = dim // 4
    table = []
    for r in range(rows):
        for c in range(cols):
            row = []
            for coord in (r, c):
                freqs = [coord / temperature ** (k / quarter) for k in range(quarter)]
                row += [math.sin(f) for f in freqs] + [math.cos(f) for f in freqs]
            table.append(row)
    return torch.tensor(table)


def test_sincos_equals_the_formula_patch_by_patch():
    table = sincos_2d(3, 4, 16)
    assert table.shape == (12, 16)
    torch.testing.assert_close(table, naive_sincos(3, 4, 16), atol=1e-6, rtol=0)
    # every patch gets its own vector, and neighbours are closer than far cells
    distances = torch.cdist(table, table)
    assert (distances + torch.eye(12) * 1e3).min() > 0.1
    assert distances[0, 1] < distances[0, 3]


def test_channels_past_a_multiple_of_four_are_zero():
    table = sincos_2d(3, 3, 30)
    assert table.shape == (9, 30)
    torch.testing.assert_close(table[:, :28], naive_sincos(3, 3, 28), atol=1e-6, rtol=0)
    assert torch.all(table[:, 28:] == 0)
    with pytest.raises(ValueError, match="at least 4"):
        sincos_2d(3, 3, 2)


def test_init_writes_the_table_into_a_vit():
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(
        ViTConfig(
            image_size=64,
            patch_size=21,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    init_sincos_positions(vit)
    table = vit.embeddings.position_embeddings
    assert table.shape == (1, 10, 32)
    assert torch.all(table[0, 0] == 0)
    # the sine-cosine table, scaled to the patch embeddings' output scale for unit-variance pixels
    reference = sincos_2d(3, 3, 32)
    scale = table[0, 1:].pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
    torch.testing.assert_close(table[0, 1:], reference * scale)
    with torch.no_grad():
        patches = vit.embeddings.patch_embeddings(torch.randn(256, 3, 64, 64))
    assert table[0, 1:].pow(2).mean().sqrt().item() == pytest.approx(
        patches.pow(2).mean().sqrt().item(), rel=0.1
    )
    assert table.requires_grad  # still a trainable parameter
    assert vit(pixel_values=torch.zeros(1, 3, 64, 64)).last_hidden_state.shape == (1, 10, 32)
