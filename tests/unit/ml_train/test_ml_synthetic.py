"""Unit tests of ml.synthetic: determinism, shape, balance, atomic npz and its round trip through load_npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml import synthetic
from ml.data import SYNTHETIC_SOURCE, load_dataset, load_npz
from ml.errors import DataError


@pytest.fixture(scope="module")
def small_set() -> tuple[np.ndarray, np.ndarray]:
    return synthetic.generate(6, seed=0)


def test_generate_shape_dtype_and_balance(small_set: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = small_set
    assert x.shape == (60, 28, 28) and x.dtype == np.uint8
    assert y.dtype == np.int64
    assert np.bincount(y).tolist() == [6] * 10
    # Not blank and not saturated noise: there is ink, and a dark background around it.
    assert x.max() > 150
    assert np.median(x) < 100


def test_generate_is_deterministic_and_seeded(small_set: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = small_set
    again_x, again_y = synthetic.generate(6, seed=0)
    np.testing.assert_array_equal(x, again_x)
    np.testing.assert_array_equal(y, again_y)
    other_x, _ = synthetic.generate(6, seed=1)
    assert not np.array_equal(x, other_x)


def test_samples_of_a_class_differ(small_set: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = small_set
    sevens = x[y == 7].astype(np.float32)
    assert len({s.tobytes() for s in sevens}) == len(sevens)
    assert np.abs(sevens[0] - sevens[1]).mean() > 5


def test_builtin_font_alone_works() -> None:
    x, _ = synthetic.generate(2, seed=3, fonts=[None])
    assert x.shape == (20, 28, 28)
    assert x.max() > 100


def test_find_fonts_only_lists_fonts_with_distinct_digits(tmp_path: Path) -> None:
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    assert synthetic.find_fonts([str(tmp_path)]) == []
    for font in synthetic.find_fonts():
        assert Path(font).suffix.lower() in {".ttf", ".otf"}


def test_write_npz_round_trips_through_load_npz(
    tmp_path: Path, small_set: tuple[np.ndarray, np.ndarray]
) -> None:
    path = synthetic.write_npz(tmp_path / "sub" / "glyphs.npz", 6, seed=0)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["glyphs.npz"]  # no temp file left behind
    x, y, names = load_npz(path)
    assert x.shape == (60, 1, 28, 28)
    np.testing.assert_array_equal(x[:, 0], small_set[0].astype(np.float32))
    np.testing.assert_array_equal(y, small_set[1])
    assert names == tuple(str(d) for d in range(10))


def test_cached_npz_generates_once(tmp_path: Path) -> None:
    first = synthetic.cached_npz(tmp_path, n_per_class=3, seed=4)
    stamp = first.stat().st_mtime_ns
    second = synthetic.cached_npz(tmp_path, n_per_class=3, seed=4)
    assert second == first and second.stat().st_mtime_ns == stamp
    assert "n3-s4" in first.name
    assert synthetic.cached_npz(tmp_path, n_per_class=3, seed=5) != first


def test_load_dataset_synthetic_uses_the_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real = synthetic.generate

    def counting(n_per_class: int = 1200, seed: int = 0, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append((n_per_class, seed))
        return real(2, seed, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "generate", counting)
    x, _, _ = load_dataset(SYNTHETIC_SOURCE, cache_dir=tmp_path)
    load_dataset(SYNTHETIC_SOURCE, cache_dir=tmp_path)
    assert calls == [(synthetic.DEFAULT_N_PER_CLASS, 0)]  # the second load hit the cache
    assert x.shape == (20, 1, 28, 28)
    assert len(list(tmp_path.glob("synthetic-glyphs-*.npz"))) == 1


@pytest.mark.parametrize(("n", "seed"), [(0, 0), (-1, 0), (2, -1), (True, 0)])
def test_bad_arguments(n: int, seed: int) -> None:
    with pytest.raises(DataError):
        synthetic.generate(n, seed)


def test_unloadable_font_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="font"):
        synthetic.generate(1, 0, fonts=[str(tmp_path / "missing.ttf")])
