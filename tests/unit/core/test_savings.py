"""ota.core.savings: the one definition of bytes saved (never negative), as data rows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota.core.savings import Savings, bytes_saved

# downloaded, full, expected
CASES = [
    (0, 0, Savings(0, 0.0, 0)),
    (25, 100, Savings(75, 0.75, 0)),
    (100, 100, Savings(0, 0.0, 0)),
    # The "bandwidth saved -25.0 %": downloading more than full downloads is overhead, not savings.
    (125, 100, Savings(0, 0.0, 25)),
    (10, 0, Savings(0, 0.0, 10)),
]


@pytest.mark.parametrize(("downloaded", "full", "expected"), CASES)
def test_bytes_saved(downloaded: int, full: int, expected: Savings) -> None:
    assert bytes_saved(downloaded, full) == expected


@given(st.integers(0, 2**40), st.integers(0, 2**40))
def test_never_negative_and_consistent(downloaded: int, full: int) -> None:
    savings = bytes_saved(downloaded, full)
    assert savings.saved_bytes >= 0 and savings.overhead_bytes >= 0
    assert 0.0 <= savings.saved_fraction <= 1.0
    assert full - downloaded == savings.saved_bytes - savings.overhead_bytes


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="≥ 0"):
        bytes_saved(-1, 10)


def test_savings_is_frozen() -> None:
    with pytest.raises(AttributeError):
        bytes_saved(1, 2).saved_bytes = 5  # type: ignore[misc]
