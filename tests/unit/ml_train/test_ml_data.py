"""Unit tests of ml.data: loaders, validation errors, the stratified split and the fingerprint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ml.data import (
    DataSplits,
    fingerprint,
    load_dataset,
    load_digits,
    load_image_folder,
    load_npz,
    split,
)
from ml.errors import DataError

PngWriter = Callable[[Path, np.ndarray], None]


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return path


def _toy(n_per_class: int = 10, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.normal(size=(len(y), 5, 5)) + y[:, None, None]
    return x.astype(np.float32), y


# --- loaders ---------------------------------------------------------------------------------------


def test_load_digits_shape_and_labels() -> None:
    x, y, names = load_digits()
    assert x.shape == (1797, 1, 8, 8)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert names == tuple(str(i) for i in range(10))
    assert set(np.unique(y)) == set(range(10))
    assert x.min() >= 0.0 and x.max() <= 16.0


def test_load_image_folder_reads_classes_in_sorted_order(image_folder: Path) -> None:
    x, y, names = load_image_folder(image_folder)
    assert names == ("class_0", "class_1", "class_2")
    assert x.shape == (12, 1, 6, 6)
    assert np.bincount(y).tolist() == [4, 4, 4]
    # The first image of class_1 comes back pixel for pixel.
    from PIL import Image

    expected = np.asarray(Image.open(image_folder / "class_1" / "0.png"), dtype=np.float32)
    first_of_class_1 = x[np.flatnonzero(y == 1)[0], 0]
    np.testing.assert_array_equal(first_of_class_1, expected)


def test_load_image_folder_mixed_modes_become_rgb(tmp_path: Path, png_writer: PngWriter) -> None:
    png_writer(tmp_path / "a" / "0.png", np.full((4, 4), 10))
    png_writer(tmp_path / "a" / "1.jpg", np.full((4, 4, 3), 200))
    png_writer(tmp_path / "b" / "0.png", np.full((4, 4), 90))
    (tmp_path / "b" / "notes.txt").write_text("ignored")
    x, y, names = load_image_folder(tmp_path)
    assert x.shape == (3, 3, 4, 4)
    assert names == ("a", "b")
    assert y.tolist() == [0, 0, 1]
    assert np.allclose(x[0], 10) and np.allclose(x[2], 90)


def test_load_npz_adds_channel_axis_and_reads_class_names(tmp_path: Path) -> None:
    x, y = _toy()
    path = _npz(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["cat", "dog", "eel"]))
    lx, ly, names = load_npz(path)
    assert lx.shape == (30, 1, 5, 5)
    np.testing.assert_array_equal(lx[:, 0], x)
    assert ly.tolist() == y.tolist()
    assert names == ("cat", "dog", "eel")


def test_load_npz_accepts_nchw_and_integral_float_labels(tmp_path: Path) -> None:
    x, y = _toy()
    path = _npz(tmp_path / "d.npz", x=np.repeat(x[:, None], 3, axis=1), y=y.astype(np.float64))
    lx, ly, names = load_npz(path)
    assert lx.shape == (30, 3, 5, 5)
    assert ly.dtype == np.int64
    assert names == ("0", "1", "2")


def test_load_dataset_dispatches(tmp_path: Path, image_folder: Path) -> None:
    x, y = _toy()
    npz = _npz(tmp_path / "d.npz", x=x, y=y)
    assert load_dataset("digits")[0].shape == (1797, 1, 8, 8)
    assert load_dataset(str(npz))[0].shape == (30, 1, 5, 5)
    assert load_dataset(str(image_folder))[0].shape == (12, 1, 6, 6)


# --- bad data: each must be a DataError naming the file or the problem ------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="unknown data source"):
        load_dataset(str(tmp_path / "nope"))


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is empty"):
        load_image_folder(tmp_path)


def test_class_folder_without_images(tmp_path: Path, png_writer: PngWriter) -> None:
    png_writer(tmp_path / "a" / "0.png", np.zeros((4, 4)))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*b has no images"):
        load_image_folder(tmp_path)


def test_single_class_folder(tmp_path: Path, png_writer: PngWriter) -> None:
    png_writer(tmp_path / "only" / "0.png", np.zeros((4, 4)))
    with pytest.raises(DataError, match="only one class"):
        load_image_folder(tmp_path)


def test_single_class_npz(tmp_path: Path) -> None:
    x, _ = _toy()
    path = _npz(tmp_path / "d.npz", x=x, y=np.zeros(len(x), dtype=np.int64), class_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match="only one class"):
        load_npz(path)


def test_images_of_different_sizes_name_the_file(image_folder: Path, png_writer: PngWriter) -> None:
    odd = image_folder / "class_2" / "zz_big.png"
    png_writer(odd, np.zeros((9, 9)))
    with pytest.raises(DataError, match=r"zz_big\.png is 9×9"):
        load_image_folder(image_folder)


def test_unreadable_image_names_the_file(image_folder: Path) -> None:
    broken = image_folder / "class_0" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_image_folder(image_folder)


def test_npz_length_mismatch(tmp_path: Path) -> None:
    x, y = _toy()
    with pytest.raises(DataError, match="30 samples but y has 29 labels"):
        load_npz(_npz(tmp_path / "d.npz", x=x, y=y[:-1]))


def test_npz_nan_and_inf(tmp_path: Path) -> None:
    x, y = _toy()
    x[3, 1, 1] = np.nan
    x[7, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"NaN or inf in 2 sample"):
        load_npz(_npz(tmp_path / "d.npz", x=x, y=y))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (lambda y: y - 1, "must be ≥ 0"),
        (lambda y: y + 0.5, "non-integer"),
        (lambda y: np.where(y == 2, 7, y), "label 7 is out of range for 3 classes"),
        (lambda y: y.astype(str), "labels must be integers"),
    ],
    ids=["negative", "non-integer", "out-of-range", "strings"],
)
def test_npz_bad_labels(tmp_path: Path, labels: Callable[[np.ndarray], np.ndarray], message: str) -> None:
    x, y = _toy()
    path = _npz(tmp_path / "d.npz", x=x, y=labels(y), class_names=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=message):
        load_npz(path)


def test_npz_missing_keys(tmp_path: Path) -> None:
    x, _ = _toy()
    with pytest.raises(DataError, match=r"lacks key\(s\) y"):
        load_npz(_npz(tmp_path / "d.npz", x=x, labels=np.zeros(len(x))))
    with pytest.raises(DataError, match=r"lacks key\(s\) x, y"):
        load_npz(_npz(tmp_path / "e.npz", data=x))


def test_npz_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match=r"cannot read .*junk\.npz"):
        load_npz(path)


def test_npz_wrong_rank(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="N×H×W or N×C×H×W"):
        load_npz(_npz(tmp_path / "d.npz", x=np.zeros((6, 4)), y=np.array([0, 1, 0, 1, 0, 1])))


def test_class_with_too_few_samples_to_stratify() -> None:
    x, y = _toy(n_per_class=10)
    keep = np.r_[np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:2]]
    with pytest.raises(DataError, match=r"class '2' has 2 sample\(s\)"):
        split(x[keep], y[keep], ["0", "1", "2"], name="toy")


def test_split_rejects_bad_fractions() -> None:
    x, y = _toy()
    with pytest.raises(DataError, match="below 1"):
        split(x, y, ["0", "1", "2"], name="toy", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match=r"in \(0, 1\)"):
        split(x, y, ["0", "1", "2"], name="toy", val_fraction=0.0)


def test_split_rejects_constant_inputs() -> None:
    _, y = _toy()
    with pytest.raises(DataError, match="constant"):
        split(np.ones((len(y), 4, 4)), y, ["0", "1", "2"], name="toy")


# --- split and fingerprint ---------------------------------------------------------------------------


def test_split_is_deterministic_and_seed_dependent() -> None:
    x, y, names = load_digits()
    a = split(x, y, names, name="digits", seed=0)
    b = split(x, y, names, name="digits", seed=0)
    c = split(x, y, names, name="digits", seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)
    assert a.fingerprint == c.fingerprint  # same data, different split


def test_split_is_stratified_and_partitions_the_data(digits_splits: DataSplits) -> None:
    d = digits_splits
    x, y, _ = load_digits()
    assert len(d.y_train) + len(d.y_val) + len(d.y_test) == len(y)
    assert len(d.y_test) == round(0.15 * len(y)) and len(d.y_val) == round(0.15 * len(y))
    overall = np.bincount(y) / len(y)
    for part in (d.y_train, d.y_val, d.y_test):
        counts = np.bincount(part, minlength=10)
        # Stratification keeps every class's count within rounding (two nested splits) of its share.
        assert np.abs(counts - overall * len(part)).max() <= 1.5
    # The three splits partition the data: un-normalised, their rows are exactly the raw rows.
    raw = np.concatenate([d.x_train, d.x_val, d.x_test]) * d.channel_std[0] + d.channel_mean[0]
    restored = sorted(r.tobytes() for r in np.round(raw).astype(np.int8))
    assert restored == sorted(r.tobytes() for r in x.astype(np.int8))


def test_split_normalises_with_training_statistics_only(digits_splits: DataSplits) -> None:
    d = digits_splits
    assert d.input_shape == (1, 8, 8)
    assert abs(float(d.x_train.mean())) < 1e-5
    assert abs(float(d.x_train.std()) - 1.0) < 1e-4
    # Val/test use the train statistics, so their own mean is not forced to zero.
    assert abs(float(d.x_test.mean())) > 1e-4
    x, _, _ = load_digits()
    np.testing.assert_allclose(d.normalize(x[:5]), (x[:5] - d.channel_mean[0]) / d.channel_std[0], rtol=1e-5)


def test_fingerprint_changes_with_any_pixel_label_shape_or_dtype() -> None:
    x, y = _toy()
    base = fingerprint(x, y)
    assert base == fingerprint(x.copy(), y.copy())
    assert len(base) == 64 and int(base, 16) >= 0
    x2 = x.copy()
    x2[0, 0, 0] += 1
    y2 = y.copy()
    y2[0] = 1
    assert fingerprint(x2, y) != base
    assert fingerprint(x, y2) != base
    assert fingerprint(x.reshape(30, 25), y) != base
    assert fingerprint(x.astype(np.float64), y) != base
    with pytest.raises(DataError):
        fingerprint(np.array([object()]), y)


# --- image folders decoded by DataLoader workers (data.num_workers) ----------------------------------


def test_image_folder_with_workers_equals_in_process(image_folder: Path) -> None:
    x0, y0, names0 = load_image_folder(image_folder, size=(5, 7))
    x2, y2, names2 = load_image_folder(image_folder, size=(5, 7), num_workers=2)
    assert names2 == names0 and x2.shape == (12, 1, 5, 7)
    np.testing.assert_array_equal(y2, y0)
    np.testing.assert_array_equal(x2, x0)


def test_unreadable_image_in_a_worker_names_the_file(image_folder: Path) -> None:
    (image_folder / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"^cannot read image .*broken\.png"):
        load_image_folder(image_folder, num_workers=1)


def test_negative_num_workers_is_refused(image_folder: Path) -> None:
    with pytest.raises(DataError, match="num_workers"):
        load_image_folder(image_folder, num_workers=-1)
