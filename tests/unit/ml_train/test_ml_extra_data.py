"""Training-only extra data (``DataConfig.extra_train``), pinned normalisation, and the simulated field set.

What a fine-tune on new data relies on: validation and test stay exactly the base split's, the fingerprint
changes, the parent's normalisation can be kept, and field samples never come from validation or test rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.data import fingerprint, load_digits, load_npz, load_splits, split, split_indices
from ml.errors import DataError
from ml.field import jitter, make_field_set, write_npz


def _extra(count: int = 50, seed: int = 3) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    rng = np.random.default_rng(seed)
    x, y, names = load_digits()
    rows = rng.choice(len(y), count, replace=False)
    return np.clip(x[rows] + rng.normal(0, 1, x[rows].shape), 0, 16).astype(np.float32), y[rows], names


def test_extra_samples_join_training_only_and_change_the_fingerprint() -> None:
    x, y, names = load_digits()
    base = split(x, y, names, name="digits", seed=0)
    extra = _extra()
    grown = split(x, y, names, name="digits", seed=0, extra_train=[("field.npz", extra)])
    assert len(grown.y_train) == len(base.y_train) + 50
    np.testing.assert_array_equal(grown.y_val, base.y_val)
    np.testing.assert_array_equal(grown.y_test, base.y_test)
    # the statistics moved with the extra samples, so val/test differ only by normalisation
    raw_test = grown.x_test * np.asarray(grown.channel_std, np.float32)[:, None, None] + grown.channel_mean[0]
    base_raw = base.x_test * np.asarray(base.channel_std, np.float32)[:, None, None] + base.channel_mean[0]
    np.testing.assert_allclose(raw_test, base_raw, atol=1e-4)
    assert base.fingerprint == fingerprint(x, y)  # no extras: the plain fingerprint, as before
    assert grown.fingerprint != base.fingerprint
    other = split(x, y, names, name="digits", seed=0, extra_train=[("field.npz", _extra(seed=4))])
    assert other.fingerprint not in (base.fingerprint, grown.fingerprint)


def test_pinned_normalization_is_used_as_given() -> None:
    x, y, names = load_digits()
    base = split(x, y, names, name="digits", seed=0)
    pinned = split(
        x,
        y,
        names,
        name="digits",
        seed=0,
        extra_train=[("field.npz", _extra())],
        normalization=(base.channel_mean, base.channel_std),
    )
    assert pinned.channel_mean == base.channel_mean and pinned.channel_std == base.channel_std
    np.testing.assert_array_equal(pinned.x_test, base.x_test)
    np.testing.assert_array_equal(pinned.x_val, base.x_val)


@pytest.mark.parametrize(
    ("normalization", "message"),
    [(((1.0, 2.0), (1.0, 1.0)), "2 mean and 2 std values for 1 channel"), (((1.0,), (0.0,)), "std > 0")],
)
def test_bad_pinned_normalization_is_refused(normalization: object, message: str) -> None:
    x, y, names = load_digits()
    with pytest.raises(DataError, match=message):
        split(x, y, names, name="digits", normalization=normalization)  # type: ignore[arg-type]


def test_extra_data_with_other_classes_or_shape_is_refused_by_name() -> None:
    x, y, names = load_digits()
    ex, ey, _ = _extra()
    with pytest.raises(DataError, match=r"extra training data odd\.npz has classes"):
        split(x, y, names, name="digits", extra_train=[("odd.npz", (ex, ey, tuple("abcdefghij")))])
    with pytest.raises(DataError, match=r"extra training data big\.npz has samples of shape \(1, 16, 16\)"):
        split(
            x, y, names, name="digits", extra_train=[("big.npz", (np.zeros((4, 1, 16, 16)), ey[:4], names))]
        )


def _numbered_npz(path: Path, n: int = 120) -> Path:
    """A data set whose every sample is unique and says which row it is (pixel [0, 0] = row + 1)."""
    x = np.zeros((n, 1, 4, 4), dtype=np.float32)
    x[:, 0, 0, 0] = np.arange(1, n + 1)
    x[:, 0, 3, 3] = 1.0
    y = np.arange(n) % 3
    np.savez(path, x=x, y=y, class_names=np.array(["a", "b", "c"]))
    return path


def test_field_set_copies_training_rows_only(tmp_path: Path) -> None:
    source = str(_numbered_npz(tmp_path / "numbered.npz"))
    x, y, names = load_npz(source)
    train, val, test = split_indices(y, names, name=source, seed=5)
    field, field_y, field_names = make_field_set(
        source, count=60, seed=1, split_seed=5, max_shift=0, noise=0.0, gain=(1.0, 1.0)
    )
    rows = field[:, 0, 0, 0].astype(int) - 1
    assert field_names == names
    assert set(rows) <= set(train) and not set(rows) & (set(val) | set(test))
    assert len(set(rows)) == 60  # drawn without replacement while training rows last
    np.testing.assert_array_equal(field, x[rows])
    np.testing.assert_array_equal(field_y, y[rows])


def test_field_set_is_deterministic_new_data_and_loads_back(tmp_path: Path) -> None:
    a = make_field_set("digits", count=40, seed=1)
    b = make_field_set("digits", count=40, seed=1)
    c = make_field_set("digits", count=40, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    assert a[0].min() >= 0 and a[0].max() <= 16
    path = write_npz(tmp_path / "field.npz", a)
    x, y, names = load_npz(path)
    assert names == a[2]
    np.testing.assert_array_equal(x, a[0])
    np.testing.assert_array_equal(y, a[1])
    splits = load_splits("digits", extra_train=[str(path)])
    assert splits.fingerprint != load_splits("digits").fingerprint
    assert len(splits.y_train) == len(load_splits("digits").y_train) + 40


def test_jitter_shifts_with_a_background_border() -> None:
    image = np.zeros((1, 1, 5, 5), dtype=np.float32)
    image[0, 0, 2, 2] = 10.0
    image[0, 0, 0, 0] = 1.0
    moved = jitter(image, np.random.default_rng(0), max_shift=0, noise=0.0, gain=(1.0, 1.0))
    np.testing.assert_array_equal(moved, image)
    rng = np.random.default_rng(7)
    shifted = jitter(np.repeat(image, 20, axis=0), rng, max_shift=1, noise=0.0, gain=(1.0, 1.0))
    peaks = {tuple(np.argwhere(s[0] == 10.0)[0]) for s in shifted}
    assert peaks <= {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)} and len(peaks) > 1
    with pytest.raises(DataError, match="max_shift"):
        jitter(image, rng, max_shift=5, noise=0.0)
