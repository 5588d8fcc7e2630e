"""Data sets for the model pipeline: loaders, validation, the stratified split and the data fingerprint.

The first step of the training pipeline (``steps/``) calls :func:`load_dataset` and :func:`split`; every
later step works on the :class:`DataSplits` it returns. Sources:

- ``"digits"``: scikit-learn's bundled 8×8 digits (ships with scikit-learn, no download);
- ``"synthetic-glyphs"``: the procedurally generated 28×28 glyph set of :mod:`ml.synthetic`, written to a
  cached ``.npz`` and read back through :func:`load_npz`, the same path as user data;
- a folder of images with one sub-folder per class (PNG/JPEG, read with Pillow);
- an ``.npz`` file with ``x`` (N×H×W or N×C×H×W), ``y`` and optionally ``class_names``.

Every loader returns raw pixels as float32 N×C×H×W, int64 labels and class names, after one shared
validation (:func:`validate`). Bad data raises :class:`~ml.errors.DataError` naming the file or problem,
never an exception from deep inside numpy, Pillow or torch. :func:`split` normalises with statistics of
the training split only, so nothing about validation or test data leaks into training.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ml.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
"""File endings :func:`load_image_folder` reads (case-insensitive); other files are ignored."""

SYNTHETIC_SOURCE = "synthetic-glyphs"
"""The :func:`load_dataset` name of the generated data set of :mod:`ml.synthetic`."""

MIN_SAMPLES_PER_CLASS = 3
"""A stratified train/val/test split needs at least one sample of every class in every split."""

_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})

Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]
"""``(x float32 N×C×H×W, y int64 N, class_names)`` as every loader returns it."""


# eq=False: a generated __eq__/__hash__ would compare numpy arrays element-wise and raise; identity is right.
@dataclass(frozen=True, eq=False)
class DataSplits:
    """A data set split three ways and normalised with the training split's statistics.

    Attributes:
        name: The source it came from (``"digits"``, a path, ``"synthetic-glyphs"``).
        x_train: float32 N×C×H×W, normalised.
        y_train: int64 class ids.
        x_val: Validation inputs (early stopping, pruning fine-tunes).
        y_val: Validation labels.
        x_test: Held-out inputs, used only for the final evaluation.
        y_test: Held-out labels.
        num_classes: Number of classes.
        class_names: One name per class id.
        fingerprint: sha256 hex of the raw (un-normalised, un-split) arrays; see :func:`fingerprint`.
        channel_mean: Per-channel mean subtracted from raw pixels (training split only).
        channel_std: Per-channel standard deviation the centred pixels were divided by.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    fingerprint: str
    channel_mean: tuple[float, ...] = ()
    channel_std: tuple[float, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Apply this data set's normalisation to raw N×C×H×W pixels (e.g. new inputs at inference).

        Args:
            raw: Raw pixels in the loader's scale, N×C×H×W.

        Returns:
            float32 array, same shape.

        Raises:
            DataError: If the splits carry no statistics or ``raw`` has the wrong channel count.
        """
        if not self.channel_mean or raw.ndim != 4 or raw.shape[1] != len(self.channel_mean):
            raise DataError(
                f"cannot normalise an array of shape {raw.shape} with {len(self.channel_mean)} channels"
            )
        mean = np.asarray(self.channel_mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.channel_std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((raw.astype(np.float32) - mean) / std).astype(np.float32)


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 hex over both arrays' dtype, shape and bytes, for lineage tags.

    Identical data gives the same fingerprint on any machine (C-order bytes); any change to a pixel,
    a label, the shape or the dtype changes it.

    Args:
        x: Inputs.
        y: Labels.

    Returns:
        64 lowercase hex characters.

    Raises:
        DataError: If either argument is not a numpy array or has object dtype.
    """
    digest = hashlib.sha256()
    for label, array in (("x", x), ("y", y)):
        if not isinstance(array, np.ndarray) or array.dtype == object:
            raise DataError(f"cannot fingerprint {label}: expected a numeric numpy array")
        # The header keeps (x=[1,2], y=[3]) and (x=[1], y=[2,3]) apart and records dtype and shape.
        digest.update(f"{label}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def validate(x: np.ndarray, y: np.ndarray, class_names: Sequence[str], *, source: str) -> Arrays:
    """Check and canonicalise a loaded data set; shared by every loader.

    Args:
        x: Inputs, N×H×W (one channel is added) or N×C×H×W, any real dtype.
        y: Labels, N integer class ids in ``0..len(class_names)-1`` (integral floats are accepted).
        class_names: One name per class.
        source: What to name in error messages (a file, a folder, ``"digits"``).

    Returns:
        ``(x float32 N×C×H×W, y int64, class_names tuple)``.

    Raises:
        DataError: On a shape mismatch, an empty set, NaN/inf, non-integer, negative or out-of-range
            labels, or fewer than two classes present.
    """
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{source}: x and y must be arrays")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: x must be numeric, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim != 4:
        raise DataError(f"{source}: x must be N×H×W or N×C×H×W, got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{source}: the data set is empty")
    if min(x.shape[1:]) == 0:
        raise DataError(f"{source}: samples have an empty dimension, shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{source}: y must be one label per sample (1-D), got shape {y.shape}")
    if len(y) != len(x):
        raise DataError(f"{source}: x has {len(x)} samples but y has {len(y)} labels")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise DataError(f"{source}: x contains NaN or inf in {bad} sample(s)")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not (y == np.round(y)).all():
            raise DataError(f"{source}: labels must be integers, found non-integer values")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if (y < 0).any():
        raise DataError(f"{source}: labels must be ≥ 0, found {int(y.min())}")
    names = tuple(str(name) for name in class_names)
    if len(names) < 2:
        raise DataError(f"{source}: need at least two classes, got {len(names)}")
    if len(set(names)) != len(names):
        raise DataError(f"{source}: class names are not unique")
    if int(y.max()) >= len(names):
        raise DataError(f"{source}: label {int(y.max())} is out of range for {len(names)} classes")
    if len(np.unique(y)) < 2:
        raise DataError(f"{source}: only one class is present (label {int(y[0])}); need at least two")
    return x, y, names


def load_digits() -> Arrays:
    """scikit-learn's bundled digits: 1,797 8×8 images of 0-9, pixel values 0..16; offline.

    Returns:
        ``(x float32 N×1×8×8, y int64, ("0", ..., "9"))``.

    Raises:
        DataError: If scikit-learn is missing (install the ``pipeline`` extra).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the pipeline extra
        raise DataError("the digits data set needs scikit-learn: pip install 'edgefleet[pipeline]'") from exc
    bunch = sklearn_digits()
    names = tuple(str(int(name)) for name in bunch.target_names)
    return validate(bunch.images, bunch.target, names, source="digits")


def load_image_folder(
    path: str | os.PathLike[str], *, size: tuple[int, int] | None = None, num_workers: int = 0
) -> Arrays:
    """Read a folder with one sub-folder per class of PNG/JPEG images.

    Class ids follow the sorted sub-folder names. Hidden entries and files with other endings are
    ignored. Images are read as grayscale when every image is grayscale, otherwise all as RGB; pixel
    values stay 0..255. All images must have the same width and height, unless ``size`` resizes them.

    Args:
        path: The top folder.
        size: ``(H, W)`` every image is resized to on reading (bilinear), so images of any size mix.
        num_workers: Decode (and resize) the images in this many worker processes of a torch
            ``DataLoader``; 0 decodes them in this process. The result is the same either way (the loader
            keeps the file order).

    Returns:
        ``(x float32 N×C×H×W, y int64, class_names)``.

    Raises:
        DataError: If the folder is missing or has no class sub-folders, a class folder has no images,
            an image cannot be read (naming the file), sizes differ (naming the file), or there are
            fewer than two classes.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} is empty: expected one sub-folder of images per class")
    if len(class_dirs) < 2:
        raise DataError(f"{root} has only one class folder ({class_dirs[0].name}); need at least two")

    files: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise DataError(f"class folder {class_dir} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files.extend((image, label) for image in images)

    if num_workers < 0:
        raise DataError(f"num_workers must be ≥ 0, got {num_workers}")
    decode = _ImageDecoder([file for file, _ in files], size)
    pictures = (
        _decode_in_workers(decode, num_workers) if num_workers else [decode[i] for i in range(len(decode))]
    )

    mode = "L" if all(p.mode in _GRAY_MODES for p in pictures) else "RGB"
    size = pictures[0].size
    arrays: list[np.ndarray] = []
    for (file, _), picture in zip(files, pictures, strict=True):
        if picture.size != size:
            raise DataError(
                f"image {file} is {picture.size[0]}×{picture.size[1]} but {files[0][0]} is "
                f"{size[0]}×{size[1]}: all images must have the same size"
            )
        pixels = np.asarray(picture.convert(mode), dtype=np.float32)
        arrays.append(pixels[None] if mode == "L" else pixels.transpose(2, 0, 1))
    x = np.stack(arrays)
    y = np.array([label for _, label in files], dtype=np.int64)
    return validate(x, y, [d.name for d in class_dirs], source=str(root))


class _ImageDecoder:
    """Reads one image file by index (a map-style dataset for ``DataLoader`` workers, picklable)."""

    def __init__(self, files: Sequence[Path], size: tuple[int, int] | None) -> None:
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:
        from PIL import Image, UnidentifiedImageError

        file = self.files[index]
        try:
            with Image.open(file) as opened:
                opened.load()
                picture = opened.copy()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {file}: {exc}") from exc
        if self.size is not None and picture.size != (self.size[1], self.size[0]):
            picture = picture.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        return picture


def _keep_as_list(batch: list[Image.Image]) -> list[Image.Image]:
    return batch


def _decode_in_workers(decode: _ImageDecoder, num_workers: int) -> list[Image.Image]:
    """Every image of ``decode``, in order, read by ``num_workers`` DataLoader worker processes.

    Raises:
        DataError: An image cannot be read (naming the file; a worker's error is re-raised here).
    """
    from torch.utils.data import DataLoader

    loader: DataLoader[Image.Image] = DataLoader(
        decode,  # type: ignore[arg-type]  # any object with __len__ and __getitem__ is a map-style dataset
        batch_size=32,
        num_workers=num_workers,
        collate_fn=_keep_as_list,
    )
    pictures: list[Image.Image] = []
    try:
        for batch in loader:
            pictures.extend(batch)
    except Exception as exc:  # a worker's error comes back re-raised with the worker's traceback as message
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise DataError(last.removeprefix("ml.errors.DataError: ")) from exc
    return pictures


def load_npz(path: str | os.PathLike[str]) -> Arrays:
    """Read an ``.npz`` with ``x`` (N×H×W or N×C×H×W), ``y`` and optionally ``class_names``.

    Without ``class_names`` the classes are named ``"0"``..``str(max(y))``. Pickled objects are refused.

    Args:
        path: The ``.npz`` file.

    Returns:
        ``(x float32 N×C×H×W, y int64, class_names)``.

    Raises:
        DataError: If the file is missing or not a readable ``.npz``, ``x`` or ``y`` is missing, or the
            arrays fail :func:`validate`.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data file {file} does not exist")
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = [key for key in ("x", "y") if key not in keys]
            if missing:
                raise DataError(f"{file} lacks key(s) {', '.join(missing)}; it has {sorted(keys) or 'none'}")
            x = archive["x"]
            y = archive["y"]
            names_array = archive["class_names"] if "class_names" in keys else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {file} as .npz: {exc}") from exc
    if names_array is not None:
        if names_array.ndim != 1:
            raise DataError(f"{file}: class_names must be a 1-D array of strings")
        names: list[str] = [str(name) for name in names_array.tolist()]
    else:
        if y.dtype.kind not in "iuf" or y.size == 0 or not np.isfinite(y).all():
            # Let validate() word the error; the names only need to be long enough not to mask it.
            names = ["0", "1"]
        else:
            names = [str(i) for i in range(max(int(np.max(y)) + 1, 2))]
    return validate(x, y, names, source=str(file))


def load_dataset(
    source: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: tuple[int, int] | None = None,
    num_workers: int = 0,
) -> Arrays:
    """Load ``source``: ``"digits"``, ``"synthetic-glyphs"``, a folder of class folders or an ``.npz``.

    Args:
        source: What to load.
        cache_dir: Where ``"synthetic-glyphs"`` caches its generated ``.npz``; default
            ``$EDGEFLEET_HOME/datasets`` or ``.edgefleet/datasets``.
        image_size: ``(H, W)`` image folders are resized to while reading (see :func:`load_image_folder`).
        num_workers: DataLoader workers decoding image folders (0: in this process).

    Returns:
        ``(x float32 N×C×H×W, y int64, class_names)``.

    Raises:
        DataError: If the source is unknown or missing, or its data is bad (see the loaders).
    """
    if source == "digits":
        return load_digits()
    if source == SYNTHETIC_SOURCE:
        from ml import synthetic

        folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        return load_npz(synthetic.cached_npz(folder))
    path = Path(source)
    if path.is_dir():
        return load_image_folder(path, size=image_size, num_workers=num_workers)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if not path.exists():
        raise DataError(
            f"unknown data source {source!r}: not 'digits', not '{SYNTHETIC_SOURCE}', "
            "and no such file or folder"
        )
    raise DataError(f"cannot load {source}: expected a folder of class folders or an .npz file")


def _default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEFLEET_HOME", ".edgefleet")) / "datasets"


Normalization = tuple[Sequence[float], Sequence[float]]
"""Per-channel ``(mean, std)`` of raw pixels, as :attr:`DataSplits.channel_mean` / ``channel_std`` hold."""


def split_indices(
    y: np.ndarray,
    class_names: Sequence[str],
    *,
    name: str,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row numbers of the deterministic stratified train/val/test split that :func:`split` makes.

    Exposed so that data derived from the training rows only (e.g. :mod:`ml.field`) can be made without
    touching validation or test samples.

    Args:
        y: Validated int64 labels.
        class_names: One name per class (every class needs a sample in every split).
        name: What to name in error messages.
        val_fraction: Share of all samples for validation, in (0, 1).
        test_fraction: Share of all samples for test, in (0, 1); with ``val_fraction`` below 1.
        seed: Seed of the split.

    Returns:
        Sorted ``(train, val, test)`` index arrays.

    Raises:
        DataError: A fraction is out of range, or a class has too few samples to appear in every split.
    """
    for fraction_name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < fraction < 1.0:
            raise DataError(f"{fraction_name} must be in (0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    counts = np.bincount(y, minlength=len(class_names))
    for label, count in enumerate(counts):
        if count < MIN_SAMPLES_PER_CLASS:
            raise DataError(
                f"{name}: class {class_names[label]!r} has {count} sample(s); a stratified split needs at "
                f"least {MIN_SAMPLES_PER_CLASS} per class"
            )
    present = len(class_names)
    n_test = round(len(y) * test_fraction)
    n_val = round(len(y) * val_fraction)
    if min(n_test, n_val) < present or len(y) - n_test - n_val < present:
        raise DataError(
            f"{name}: {len(y)} samples are too few to give each of {present} classes a sample in train, "
            f"val ({n_val}) and test ({n_test})"
        )

    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    try:
        rest, test = train_test_split(index, test_size=n_test, stratify=y, random_state=seed)
        train, val = train_test_split(rest, test_size=n_val, stratify=y[rest], random_state=seed)
    except ValueError as exc:
        raise DataError(f"{name}: cannot split: {exc}") from exc
    # Sorting keeps the original order inside each split, so the split depends only on the seed.
    return np.sort(train), np.sort(val), np.sort(test)


def combined_fingerprint(base: str, extra_train: Sequence[str]) -> str:
    """The fingerprint of a data set plus training-only additions: sha256 over the parts' fingerprints.

    Without additions it is ``base`` itself, so a plain data set keeps the fingerprint of its arrays.
    """
    if not extra_train:
        return base
    digest = hashlib.sha256(f"base|{base}|".encode())
    for part in extra_train:
        digest.update(f"train+|{part}|".encode())
    return digest.hexdigest()


def _checked_normalization(normalization: Normalization, channels: int, name: str) -> tuple[np.ndarray, ...]:
    mean = np.asarray(normalization[0], dtype=np.float64)
    std = np.asarray(normalization[1], dtype=np.float64)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise DataError(
            f"{name}: the given normalization has {mean.size} mean and {std.size} std values "
            f"for {channels} channel(s)"
        )
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 1e-8).all()):
        raise DataError(f"{name}: the given normalization must be finite with std > 0")
    return mean, std


def split(
    x: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    *,
    name: str,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    extra_train: Sequence[tuple[str, Arrays]] = (),
    normalization: Normalization | None = None,
) -> DataSplits:
    """Deterministic stratified train/val/test split, normalised with the training split's statistics.

    Every class keeps (up to rounding) its share in every split. The same inputs and ``seed`` always give
    the same split. Normalisation is per channel: ``(x - mean) / std`` with ``mean`` and ``std`` from the
    training split only (extra training samples included), unless ``normalization`` pins them.

    Args:
        x: Raw inputs as a loader returns them.
        y: Labels.
        class_names: One name per class.
        name: Recorded as :attr:`DataSplits.name`.
        val_fraction: Share of all samples for validation, in (0, 1).
        test_fraction: Share of all samples for test, in (0, 1); with ``val_fraction`` below 1.
        seed: Seed of the split.
        extra_train: ``(source, arrays)`` pairs as :func:`load_dataset` returns them, appended to the
            training split only; validation and test are exactly those of ``x`` alone. The fingerprint
            then covers them too (:func:`combined_fingerprint`).
        normalization: Per-channel ``(mean, std)`` to use instead of the training split's, e.g. those
            a fine-tuned parent model was trained with, so its inputs mean the same thing.

    Returns:
        The :class:`DataSplits`.

    Raises:
        DataError: If the data fails :func:`validate`, a fraction is out of range, a class has too few
            samples to appear in every split, an extra source has other classes or another sample
            shape, the normalization does not fit, or the training inputs are constant.
    """
    x, y, names = validate(x, y, class_names, source=name)
    train, val, test = split_indices(
        y, names, name=name, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )

    raw_train, y_train = x[train], y[train]
    extra_fingerprints: list[str] = []
    for source, (x_extra, y_extra, extra_names) in extra_train:
        if tuple(extra_names) != names:
            raise DataError(
                f"extra training data {source} has classes {list(extra_names)}, but {name} has {list(names)}"
            )
        if x_extra.shape[1:] != x.shape[1:]:
            raise DataError(
                f"extra training data {source} has samples of shape {x_extra.shape[1:]}, "
                f"but {name} has {x.shape[1:]}"
            )
        raw_train = np.concatenate([raw_train, x_extra.astype(np.float32)])
        y_train = np.concatenate([y_train, y_extra.astype(np.int64)])
        extra_fingerprints.append(fingerprint(x_extra, y_extra))

    if normalization is None:
        mean = raw_train.mean(axis=(0, 2, 3), dtype=np.float64)
        std = raw_train.std(axis=(0, 2, 3), dtype=np.float64)
        if (std < 1e-8).any():
            raise DataError(f"{name}: training inputs are constant in a channel; nothing to learn from")
    else:
        mean, std = _checked_normalization(normalization, x.shape[1], name)
    mean_b = mean.astype(np.float32).reshape(1, -1, 1, 1)
    std_b = std.astype(np.float32).reshape(1, -1, 1, 1)

    def norm(raw: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((raw - mean_b) / std_b, dtype=np.float32)

    return DataSplits(
        name=name,
        x_train=norm(raw_train),
        y_train=y_train,
        x_val=norm(x[val]),
        y_val=y[val],
        x_test=norm(x[test]),
        y_test=y[test],
        num_classes=len(names),
        class_names=names,
        fingerprint=combined_fingerprint(fingerprint(x, y), extra_fingerprints),
        channel_mean=tuple(float(v) for v in mean),
        channel_std=tuple(float(v) for v in std),
    )


def resize_to(x: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """Raw N×C×H×W pixels converted to ``input_size`` (C, H, W): grayscale repeated to 3 channels (or RGB
    averaged to 1), then resized with antialiased bilinear interpolation. Unchanged when already that shape.

    Raises:
        DataError: ``input_size`` is not 3 positive sizes, or the channel counts cannot be converted.
    """
    if len(input_size) != 3 or any(int(d) < 1 for d in input_size):
        raise DataError(f"data.input_size must be (C, H, W) with positive sizes, got {tuple(input_size)}")
    channels, height, width = (int(d) for d in input_size)
    if x.shape[1] != channels:
        if x.shape[1] == 1 and channels == 3:
            x = np.repeat(x, 3, axis=1)
        elif x.shape[1] == 3 and channels == 1:
            x = x.mean(axis=1, keepdims=True)
        else:
            raise DataError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if x.shape[2:] == (height, width):
        return np.ascontiguousarray(x, dtype=np.float32)
    import torch  # imported here: only resizing needs it, and plain loading stays numpy + Pillow
    import torch.nn.functional as F

    out = np.empty((len(x), channels, height, width), dtype=np.float32)
    for start in range(0, len(x), 512):  # chunks keep the float64-free peak small on large sets
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + 512], dtype=np.float32))
        resized = F.interpolate(chunk, size=(height, width), mode="bilinear", antialias=True)
        out[start : start + 512] = resized.numpy()
    return out


def preprocessing_fingerprint(base: str, preprocessing: Mapping[str, object] | None) -> str:
    """The fingerprint with the preprocessing settings folded in; ``base`` itself when there are none."""
    if not preprocessing:
        return base
    canonical = json.dumps(dict(preprocessing), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"base|{base}|prep|{canonical}".encode()).hexdigest()


def load_splits(
    source: str,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    extra_train: Sequence[str] = (),
    normalization: Normalization | None = None,
    input_size: Sequence[int] | None = None,
    num_workers: int = 0,
) -> DataSplits:
    """Load ``source`` and ``extra_train`` with :func:`load_dataset` and :func:`split` them.

    With ``input_size`` (C, H, W) every source is converted and resized to it first (:func:`resize_to`;
    image folders are resized while reading, so their images may differ in size).

    Raises:
        DataError: A source is missing or bad, or the split fails (see :func:`split`).
    """
    image_size = (int(input_size[1]), int(input_size[2])) if input_size is not None else None

    def load(name: str) -> Arrays:
        x, y, names = load_dataset(name, image_size=image_size, num_workers=num_workers)
        return (resize_to(x, input_size) if input_size is not None else x), y, names

    x, y, names = load(source)
    extras = [(extra, load(extra)) for extra in extra_train]
    return split(
        x,
        y,
        names,
        name=source,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        extra_train=extras,
        normalization=normalization,
    )
