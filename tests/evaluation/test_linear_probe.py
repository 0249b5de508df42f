"""The linear probe: a logistic regression fitted by L-BFGS, checked against plain gradient descent."""

import numpy as np
import pytest
import torch

from nbutils.errors import DataError
from nbutils.evaluation.linear_probe import fit_linear_probe, linear_probe_accuracy, probe_loss


def _blobs(n, seed, d=8, classes=3, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:classes] * 2
    y = rng.integers(0, classes, n)
    return centres[y] + spread * rng.standard_normal((n, d)), y


def test_separable_classes_are_read_exactly_and_noise_is_not():
    x, y = _blobs(300, 0)
    x_test, y_test = _blobs(200, 1)
    assert linear_probe_accuracy(x, y, x_test, y_test) == 100.0
    rng = np.random.default_rng(2)
    noise, labels = rng.standard_normal((400, 8)), rng.integers(0, 4, 400)
    held_out = linear_probe_accuracy(noise[:200], labels[:200], noise[200:], labels[200:])
    assert 10 < held_out < 40  # chance is 25 %


def test_lbfgs_reaches_the_minimum_gradient_descent_approaches():
    x, y = _blobs(200, 3, spread=1.0)  # overlapping classes: a finite optimum
    weight, bias = fit_linear_probe(x, y, weight_decay=1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    w = torch.zeros_like(weight, requires_grad=True)
    b = torch.zeros_like(bias, requires_grad=True)
    optimizer = torch.optim.SGD([w, b], lr=0.5)
    for _ in range(3000):
        optimizer.zero_grad()
        probe_loss(xt, yt, w, b, 1e-2).backward()
        optimizer.step()
    fitted = probe_loss(xt, yt, weight, bias, 1e-2).item()
    assert fitted <= probe_loss(xt, yt, w, b, 1e-2).item() + 1e-9
    assert fitted == pytest.approx(probe_loss(xt, yt, w, b, 1e-2).item(), abs=1e-6)


def test_bad_shapes_are_named():
    with pytest.raises(DataError, match="expected"):
        fit_linear_probe(np.zeros((3, 2)), np.zeros(4, dtype=int))
