"""The one definition of "bytes saved" by delta downloads, shared by every report that shows it.

A fleet summary, ``rollout status`` and the console all compare what devices downloaded with what full
downloads of the same installs would have cost. This module is the single place that turns those two
counts into a figure, so the reports cannot disagree, and it is never negative: when deltas, retries or
self-test vectors cost more than full downloads would have, the excess is reported as overhead instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Savings:
    """Bytes saved against full downloads.

    Attributes:
        saved_bytes: ``max(0, full - downloaded)``.
        saved_fraction: ``saved_bytes / full`` (0.0 when ``full`` is 0), in [0, 1].
        overhead_bytes: ``max(0, downloaded - full)``: what was downloaded beyond full downloads.
    """

    saved_bytes: int
    saved_fraction: float
    overhead_bytes: int


def bytes_saved(downloaded: int, full: int) -> Savings:
    """Compare bytes downloaded with the bytes full downloads of the same installs would have taken.

    Args:
        downloaded: Bytes actually transferred.
        full: Bytes the same installs would have transferred as full downloads.

    Returns:
        The savings, never negative.

    Raises:
        ValueError: A count is negative.
    """
    if downloaded < 0 or full < 0:
        raise ValueError(f"byte counts must be ≥ 0, got downloaded={downloaded}, full={full}")
    saved = max(0, full - downloaded)
    return Savings(
        saved_bytes=saved,
        saved_fraction=saved / full if full else 0.0,
        overhead_bytes=max(0, downloaded - full),
    )
