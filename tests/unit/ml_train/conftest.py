"""Shared fixtures of the ``ml`` data/training/distillation unit tests: tiny data and tiny networks.

Everything here is small enough that a whole training run takes well under a second on one thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml.data import DataSplits, load_digits, split
from ml.nets import NetSpec

# Tiny architectures with the ConvNet layout. The student reads its feature after a pooled block and the
# teacher before one, so their feature maps differ in size and kd_loss has to pool the teacher's.
TINY_TEACHER = NetSpec(widths=(8, 16), pools=(False, True), feature_block=0)
TINY_STUDENT = NetSpec(widths=(4, 8), pools=(True, False), feature_block=1)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tests are timed on one thread; restore whatever the process had."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_splits() -> DataSplits:
    """The real digits set, split with the default fractions."""
    x, y, names = load_digits()
    return split(x, y, names, name="digits", seed=0)


@pytest.fixture(scope="session")
def small_splits(digits_splits: DataSplits) -> DataSplits:
    """A 400/150/150-sample cut of digits: enough to learn, fast to train on."""
    d = digits_splits
    return DataSplits(
        name="digits-small",
        x_train=d.x_train[:400],
        y_train=d.y_train[:400],
        x_val=d.x_val[:150],
        y_val=d.y_val[:150],
        x_test=d.x_test[:150],
        y_test=d.y_test[:150],
        num_classes=d.num_classes,
        class_names=d.class_names,
        fingerprint=d.fingerprint,
        channel_mean=d.channel_mean,
        channel_std=d.channel_std,
    )


def write_png(path: Path, pixels: np.ndarray) -> None:
    """Write a uint8 H×W (gray) or H×W×3 (RGB) array as an image; the suffix picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def make_image_folder(root: Path, *, classes: int = 3, per_class: int = 4, size: int = 6) -> Path:
    """A folder of class folders of distinct random gray PNGs; returns ``root``."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            write_png(root / f"class_{c}" / f"{i}.png", rng.integers(0, 256, size=(size, size)))
    return root


@pytest.fixture
def png_writer() -> object:
    """``write_png`` as a fixture: test modules cannot import conftest under --import-mode=importlib."""
    return write_png


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A valid 3-class folder of 6×6 gray PNGs, 4 per class."""
    return make_image_folder(tmp_path / "images")
