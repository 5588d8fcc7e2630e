"""Shared fixtures for the optimise-and-measure tests of ``ml`` (prune, export, quantize, benchmark).

The digits data set ships with scikit-learn, so these stay offline. One small student is trained
once per session (about a second on one core) so quantization tests can assert real agreement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ml.export import export_onnx
from ml.nets import STUDENT_SPEC, ConvNet, NetSpec, build_net
from ml.train import fit, seed_everything

INPUT_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class Digits:
    """A fixed, seeded split of scikit-learn digits scaled to [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def digits() -> Digits:
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, val, test = order[:1200], order[1200:1450], order[1450:]
    return Digits(x[train], y[train], x[val], y[val], x[test], y[test])


@pytest.fixture(scope="session")
def trained_student(digits: Digits) -> ConvNet:
    """A student trained briefly on digits (≈ 97 %+ test accuracy); tests must deep-copy to mutate."""
    torch.set_num_threads(1)
    seed_everything(0)
    model = build_net(STUDENT_SPEC, in_channels=1, num_classes=10)
    fit(model, (digits.x_train, digits.y_train), (digits.x_val, digits.y_val), epochs=6, lr=3e-3)
    return model.eval()


@pytest.fixture(scope="session")
def student_onnx(trained_student: ConvNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(trained_student, tmp_path_factory.mktemp("student") / "student.onnx", INPUT_SHAPE)


def _random_net(widths: tuple[int, ...] = (16, 32, 32, 64), *, seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    spec = NetSpec(widths=widths, pools=(False, True, False, True)[: len(widths)], feature_block=0)
    model = build_net(spec, in_channels=1, num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for name, low, high in (("weight", 0.5, 1.5), ("bias", -0.2, 0.2)):
                    getattr(module, name).uniform_(low, high)
                for name, low, high in (("running_mean", -0.1, 0.1), ("running_var", 0.5, 2.0)):
                    getattr(module, name).uniform_(low, high)
    return model.eval()


@pytest.fixture
def random_net() -> Callable[..., ConvNet]:
    """Factory of untrained nets with randomised BN statistics, so channels differ and BN is no identity."""
    return _random_net
