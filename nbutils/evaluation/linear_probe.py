"""Linear probe: how much of a label can a linear classifier read from frozen embeddings?

CLIP's linear-probe evaluation: fit an L2-regularised multinomial logistic regression on one split's
embeddings with L-BFGS and report its accuracy on another split. It measures what the embedding holds,
whatever the text side knows (zero-shot measures both at once). The fit is torch's own L-BFGS on the
full batch (CLIP used scikit-learn's; the embeddings here are small, and this keeps the dependency out).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError

WEIGHT_DECAY = 1e-4  # on the mean loss; embeddings are unit vectors, so this is a mild prior
MAX_ITERATIONS = 500


def fit_linear_probe(features, labels, weight_decay: float = WEIGHT_DECAY, max_iter: int = MAX_ITERATIONS):
    """(weight (C, D), bias (C,)) of a logistic regression of integer `labels` (N,) on `features` (N, D)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise DataError(f"features {tuple(x.shape)} and labels {tuple(y.shape)}: expected (N, D) and (N,)")
    n_classes = int(y.max()) + 1
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = probe_loss(x, y, weight, bias, weight_decay)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def probe_loss(x, y, weight, bias, weight_decay: float = WEIGHT_DECAY) -> torch.Tensor:
    """Mean cross-entropy of the linear classifier plus `weight_decay` * ||weight||^2 (the fitted objective)."""
    return torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + weight_decay * weight.pow(2).sum()


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, **fit) -> float:
    """Percent of test rows whose label the probe fitted on the train rows predicts."""
    weight, bias = fit_linear_probe(train_features, train_labels, **fit)
    x = torch.as_tensor(np.asarray(test_features), dtype=torch.float64)
    predicted = (x @ weight.T + bias).argmax(1).numpy()
    return 100.0 * float((predicted == np.asarray(test_labels)).mean())
