"""Bytes saved by delta updates: the one definition every report uses (``rollout status``, the fleet
simulator's summary, the console).

Sits in ``ota.core`` because the server's reports and the edge-side simulator both print the figure and must
agree on it. Pure arithmetic, no I/O.

Why ``downloaded`` can exceed ``full``: a device may fetch more than one artifact's worth of bytes for one
install (a Range resume after a dropped connection re-reads a chunk, a failed hash check re-downloads the
whole file, a delta that does not apply falls back to the full artifact after its patch was fetched). Those
bytes are overhead, not negative savings: :func:`bytes_saved` reports them separately as ``overhead_bytes``
and never returns a negative saving.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Savings:
    """What deltas saved against downloading the full artifact every time.

    Attributes:
        downloaded_bytes: Bytes actually downloaded.
        full_bytes: What the same installs would have downloaded as full artifacts.
        saved_bytes: ``full - downloaded`` when positive, else 0.
        saved_fraction: ``saved_bytes / full_bytes`` in [0, 1] (0 when ``full_bytes`` is 0).
        overhead_bytes: ``downloaded - full`` when positive (retries, resumes, fallbacks), else 0.
    """

    downloaded_bytes: int
    full_bytes: int
    saved_bytes: int
    saved_fraction: float
    overhead_bytes: int

    def describe(self) -> str:
        """One line: ``saved 1,234 B (37.5 %)`` plus the overhead when there was any."""
        text = f"saved {self.saved_bytes:,} B ({self.saved_fraction:.1%})"
        if self.overhead_bytes:
            text += f", {self.overhead_bytes:,} B over full-only (retries, resumes, fallbacks)"
        return text


def bytes_saved(downloaded: int, full: int) -> Savings:
    """Compare bytes downloaded with what full downloads of the same installs would have cost.

    Args:
        downloaded: Bytes devices downloaded (deltas and full artifacts together).
        full: Bytes the same installs would have downloaded without deltas.

    Returns:
        The savings; never negative (an excess is ``overhead_bytes``).

    Raises:
        ValueError: A negative byte count.
    """
    if downloaded < 0 or full < 0:
        raise ValueError(f"byte counts cannot be negative (downloaded={downloaded}, full={full})")
    saved = max(full - downloaded, 0)
    return Savings(
        downloaded_bytes=downloaded,
        full_bytes=full,
        saved_bytes=saved,
        saved_fraction=saved / full if full else 0.0,
        overhead_bytes=max(downloaded - full, 0),
    )
