"""``ota.core.savings.bytes_saved``: the one definition of bytes saved; never negative."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota.core.savings import bytes_saved


@pytest.mark.parametrize(
    ("downloaded", "full", "saved", "fraction", "overhead"),
    [
        (0, 0, 0, 0.0, 0),
        (250, 1000, 750, 0.75, 0),
        (1000, 1000, 0, 0.0, 0),
        # Retries and resumes: more bytes than full-only is overhead, not "-25 % saved".
        (1250, 1000, 0, 0.0, 250),
        (10, 0, 0, 0.0, 10),
    ],
)
def test_rows(downloaded: int, full: int, saved: int, fraction: float, overhead: int) -> None:
    result = bytes_saved(downloaded, full)
    assert (result.saved_bytes, result.saved_fraction, result.overhead_bytes) == (saved, fraction, overhead)


@given(st.integers(0, 10**12), st.integers(0, 10**12))
def test_never_negative(downloaded: int, full: int) -> None:
    result = bytes_saved(downloaded, full)
    assert result.saved_bytes >= 0 and result.overhead_bytes >= 0
    assert 0.0 <= result.saved_fraction <= 1.0
    assert downloaded + result.saved_bytes - result.overhead_bytes == full


def test_negative_input_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        bytes_saved(-1, 10)


def test_describe_names_overhead() -> None:
    assert "over full-only" in bytes_saved(1250, 1000).describe()
    assert bytes_saved(250, 1000).describe() == "saved 750 B (75.0%)"
