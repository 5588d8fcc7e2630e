"""Precise BatchNorm (ml.batchnorm) and its use in ml.train.fit.

The motivating case is real: torchvision's MobileNetV3 sets BatchNorm momentum to 0.01, so after a short run
its running statistics still describe the random-init network and eval mode scores at chance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ml.arch import build_model
from ml.batchnorm import recalibrate_batchnorm
from ml.errors import TrainingError
from ml.train import accuracy, fit, seed_everything


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 3×32×32 noise told apart by which channel carries a bright square."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(0.0, 0.3, size=(n, 3, 32, 32)).astype(np.float32)
    x[y == 0, 0, 8:24, 8:24] += 2.0
    x[y == 1, 1, 8:24, 8:24] += 2.0
    return x, y.astype(np.int64)


def _steps(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        rows = slice((step * 32) % len(x), (step * 32) % len(x) + 32)
        xb, yb = torch.from_numpy(x[rows]), torch.from_numpy(y[rows])
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()


def test_mobilenet_v3_at_chance_in_eval_mode_until_recalibrated() -> None:
    x, y = _separable(256, seed=0)
    x_test, y_test = _separable(200, seed=1)
    seed_everything(0)
    model = build_model(
        "torchvision:mobilenet_v3_small", role="student", input_shape=(3, 32, 32), num_classes=2
    )
    _steps(model, x, y, steps=24)
    model.train()
    with torch.no_grad():
        train_mode = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    before = accuracy(model, x_test, y_test)
    weights = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    assert recalibrate_batchnorm(model, x, samples=256, batch_size=64) > 0
    after = accuracy(model, x_test, y_test)
    # The weights have learnt the task (train-mode BatchNorm sees it) but stale running statistics hide it.
    assert train_mode >= 0.9, train_mode
    assert before <= 0.7, before
    assert after >= 0.9, (before, after)
    for name, value in weights.items():  # only the running statistics changed
        assert torch.equal(model.state_dict()[name], value), name
    assert model.training  # the mode it had before


def test_running_statistics_are_the_exact_average_and_modes_are_restored() -> None:
    bn = nn.BatchNorm2d(3, momentum=0.01)
    model = nn.Sequential(bn, nn.Dropout(0.5), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    model.train()
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 3, 4, 4)).astype(np.float32)
    assert recalibrate_batchnorm(model, x, samples=64, batch_size=16) == 1
    expected = torch.from_numpy(x).mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert bn.momentum == 0.01
    assert all(m.training for m in model.modules())  # train mode as before


def test_same_seed_same_statistics_and_no_batchnorm_is_a_no_op() -> None:
    x = np.random.default_rng(0).normal(size=(300, 3, 4, 4)).astype(np.float32)
    a, b = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    recalibrate_batchnorm(a, x, samples=100, seed=3)
    recalibrate_batchnorm(b, x, samples=100, seed=3)
    assert torch.equal(a.running_var, b.running_var)
    assert recalibrate_batchnorm(nn.Conv2d(3, 3, 1), x) == 0
    assert recalibrate_batchnorm(a, x, samples=0) == 0
    with pytest.raises(ValueError, match="samples"):
        recalibrate_batchnorm(a, x, samples=-1)


def test_models_with_quantization_observers_are_left_alone() -> None:
    """Eager QAT modules read their BatchNorm inside their own forward; a pass would move the observers."""
    from torch.ao.quantization import FakeQuantize

    model = nn.Sequential(nn.BatchNorm2d(3), FakeQuantize())
    x = np.random.default_rng(0).normal(5.0, 1.0, size=(64, 3, 4, 4)).astype(np.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batchnorm(model, x) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_fit_validates_with_recalibrated_statistics() -> None:
    """Without recalibration fit's early stopping sees chance and keeps the untrained start."""
    x, y = _separable(320, seed=0)
    x_val, y_val = _separable(120, seed=1)
    scores = {}
    for samples in (0, 256):
        seed_everything(0)
        model = build_model(
            "torchvision:mobilenet_v3_small", role="student", input_shape=(3, 32, 32), num_classes=2
        )
        fit(model, (x, y), (x_val, y_val), epochs=2, lr=1e-3, batch_size=32, bn_samples=samples)
        scores[samples] = accuracy(model, x_val, y_val)
    assert scores[0] <= 0.7, scores
    assert scores[256] >= 0.9, scores
    with pytest.raises(TrainingError, match="bn_samples"):
        fit(nn.Linear(1, 1), (x, y), (x_val, y_val), epochs=1, lr=1e-3, bn_samples=-1)
