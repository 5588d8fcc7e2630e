"""Simulated field data: new, deterministic samples made from a data set's training rows only.

The ``make run`` demo fine-tunes its second version on "data collected in the field since the first
release". Nothing ships with the package for that, so :func:`make_field_set` simulates it: each field
sample is a training image of the base data set, seen again by another camera, so to speak:

- shifted by up to ``max_shift`` pixels in each direction (the vacated border is background, 0);
- brighter or darker by a random gain;
- with Gaussian sensor noise, clipped to the original pixel range.

Only rows of the training split that :func:`ml.data.split` makes with the same fractions and seed are
used, so no validation or test image leaks into training through its copy, and the test split of a
fine-tune stays exactly the one its parent was scored on. The result goes to an ``.npz`` that
``DataConfig.extra_train`` names, through the ordinary loader (:func:`ml.data.load_npz`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ml.data import Arrays, load_dataset, split_indices, validate
from ml.errors import DataError
from ml.files import atomic_writer


def jitter(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    max_shift: int,
    noise: float,
    gain: tuple[float, float] = (0.8, 1.1),
) -> np.ndarray:
    """Shift, re-gain and add noise to raw N×C×H×W images; values stay within the input's range.

    Args:
        images: Raw pixels (not normalised), N×C×H×W.
        rng: Source of randomness (seeded by the caller).
        max_shift: Largest shift in pixels along each axis.
        noise: Standard deviation of the added noise, as a fraction of the pixel range.
        gain: Range of the random contrast factor applied around the background level.

    Returns:
        float32 array of the same shape.

    Raises:
        DataError: ``max_shift`` is negative or not smaller than the image, ``noise`` is negative, or
            ``gain`` is not an increasing pair of positive numbers.
    """
    if images.ndim != 4:
        raise DataError(f"field data needs N×C×H×W images, got shape {images.shape}")
    _, _, h, w = images.shape
    if not 0 <= max_shift < min(h, w):
        raise DataError(f"max_shift must be in [0, {min(h, w)}), got {max_shift}")
    if noise < 0:
        raise DataError(f"noise must be ≥ 0, got {noise}")
    if not 0 < gain[0] <= gain[1]:
        raise DataError(f"gain must be a range 0 < low ≤ high, got {gain}")
    low, high = float(images.min()), float(images.max())
    out = np.full(images.shape, low, dtype=np.float32)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))
    for i, (dy, dx) in enumerate(shifts):
        # Copy the overlapping window; the strip the image moved away from keeps the background.
        src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
        src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
        out[i, :, dst_y, dst_x] = images[i, :, src_y, src_x]
    factor = rng.uniform(gain[0], gain[1], size=(len(images), 1, 1, 1)).astype(np.float32)
    out = low + (out - low) * factor
    out += rng.normal(0.0, noise * (high - low), size=out.shape).astype(np.float32)
    return np.clip(out, low, high).astype(np.float32)


def make_field_set(
    source: str,
    *,
    count: int,
    seed: int = 0,
    split_seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    max_shift: int = 1,
    noise: float = 0.05,
    gain: tuple[float, float] = (0.8, 1.1),
) -> Arrays:
    """``count`` simulated field samples from the training rows of ``source``'s split.

    Args:
        source: A :func:`ml.data.load_dataset` source (``"digits"``, an ``.npz``, a folder).
        count: Number of samples to make (training rows are drawn without replacement while they last).
        seed: Seed of the draw and of the jitter: the same arguments always give the same bytes.
        split_seed: Seed of the split whose training rows are used (``DataConfig.seed``).
        val_fraction: ``DataConfig.val_fraction`` of that split.
        test_fraction: ``DataConfig.test_fraction`` of that split.
        max_shift: Largest shift in pixels.
        noise: Noise standard deviation as a fraction of the pixel range.
        gain: Range of the random contrast factor.

    Returns:
        ``(x float32 N×C×H×W raw pixels, y int64, class_names)``, like a loader.

    Raises:
        DataError: ``count`` < 1, the source cannot be loaded or split, or bad jitter settings.
    """
    if count < 1:
        raise DataError(f"count must be ≥ 1, got {count}")
    x, y, names = load_dataset(source)
    train, _, _ = split_indices(
        y, names, name=source, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed
    )
    rng = np.random.default_rng(seed)
    rows = np.concatenate(
        [rng.permutation(train) for _ in range(-(-count // len(train)))]  # ceil: enough rounds for count
    )[:count]
    field = jitter(x[rows], rng, max_shift=max_shift, noise=noise, gain=gain)
    return validate(field, y[rows], names, source=f"field data from {source}")


def write_npz(path: Path, arrays: Arrays) -> Path:
    """Write ``(x, y, class_names)`` as an ``.npz`` that :func:`ml.data.load_npz` reads (atomically).

    Raises:
        OSError: The folder cannot be created or written.
    """
    x, y, names = arrays
    with atomic_writer(path) as handle:
        np.savez_compressed(handle, x=x, y=y, class_names=np.array(names, dtype=str))
    return path
