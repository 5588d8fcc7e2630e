"""Signed status reports, queued on disk while offline and flushed in order.

Each report gets the next counter (persisted *before* the report is written, so a crash can skip a
counter but never reuse one), is signed with the device key through :mod:`ota.core.manifest`, and waits
as ``reports/<counter>.json`` until the server accepts it. :meth:`ReportQueue.flush` posts them oldest
first and stops at the first network or server error, keeping the rest for the next poll. The HTTP side
(and what a 403 ``replayed_report`` means: it had already arrived, drop it) lives in :mod:`ota.edge.api`;
the server is idempotent, so sending one twice is harmless.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer

from ota.core.manifest import (
    MAX_DETAIL_TEXT,
    MAX_DETAILS,
    ReportStatus,
    StatusReport,
    format_time,
    sign_status_report,
    utc_now,
)
from ota.edge.api import ReportVerdict
from ota.edge.errors import EdgeError
from ota.edge.fsutil import atomic_write_bytes, atomic_write_json, ensure_private_dir

log = logging.getLogger(__name__)

COUNTER_FILE = "counter"


def clean_details(details: dict[str, Any]) -> dict[str, Any]:
    """Make free-form details fit the report format: scalars only, bounded text, bounded count.

    Args:
        details: Anything the agent wants to say.

    Returns:
        At most ``MAX_DETAILS`` entries whose values are str, int, float, bool or None.
    """
    cleaned: dict[str, Any] = {}
    for key, value in list(details.items())[:MAX_DETAILS]:
        name = str(key)[:64]
        if value is None or isinstance(value, bool | int):
            cleaned[name] = value
        elif isinstance(value, float):
            cleaned[name] = value if value == value and abs(value) != float("inf") else str(value)
        else:
            cleaned[name] = str(value)[:MAX_DETAIL_TEXT]
    return cleaned


class ReportQueue:
    """The on-disk queue of signed status reports.

    Args:
        state_dir: The agent's state directory (reports live in ``reports/`` under it).
        device_id: This device's id.
        signer: The device key.
        max_queued: Oldest reports are dropped beyond this many (a device offline for months).
    """

    def __init__(self, state_dir: Path, *, device_id: str, signer: Signer, max_queued: int = 1000) -> None:
        self.directory = state_dir / "reports"
        self.device_id = device_id
        self.signer = signer
        self.max_queued = max_queued
        ensure_private_dir(self.directory)

    def _next_counter(self) -> int:
        path = self.directory / COUNTER_FILE
        try:
            current = int(path.read_text().strip() or "0")
        except FileNotFoundError:
            current = 0
        except (OSError, ValueError):
            # A damaged counter file: restart above every queued report so counters never repeat.
            current = max((int(p.stem) for p in self.pending()), default=0)
        atomic_write_bytes(path, str(current + 1).encode())
        return current + 1

    def enqueue(
        self,
        status: ReportStatus,
        *,
        release_id: str | None = None,
        rollout_id: str | None = None,
        target_sha256: str | None = None,
        current_sha256: str | None = None,
        bytes_downloaded: int = 0,
        attack: bool = False,
        details: dict[str, Any] | None = None,
    ) -> StatusReport:
        """Sign a report and store it until it is sent.

        Returns:
            The report as queued.

        Raises:
            SlotError: If the report cannot be written (for example, the disk is full).
            OtaError: If the report does not fit the format (a bug: details are cleaned first).
        """
        report = StatusReport(
            device_id=self.device_id,
            counter=self._next_counter(),
            status=status,
            timestamp=format_time(utc_now()),
            release_id=release_id,
            rollout_id=rollout_id,
            target_sha256=target_sha256,
            current_sha256=current_sha256,
            bytes_downloaded=bytes_downloaded,
            attack=attack,
            details=clean_details(details or {}),
        )
        envelope = sign_status_report(report, self.signer)
        atomic_write_json(self.directory / f"{report.counter:012d}.json", envelope)
        self._trim()
        return report

    def pending(self) -> list[Path]:
        """Return queued report files, oldest first."""
        return sorted(p for p in self.directory.glob("*.json") if p.stem.isdigit())

    def _trim(self) -> None:
        queued = self.pending()
        for path in queued[: max(0, len(queued) - self.max_queued)]:
            with contextlib.suppress(OSError):
                path.unlink()

    def flush(self, post: Callable[[dict[str, Any]], ReportVerdict]) -> int:
        """Send queued reports in order until one fails.

        Args:
            post: Sends one envelope and says what became of it (:meth:`ota.edge.api.DeviceApi.post_report`).

        Returns:
            How many reports left the queue.
        """
        sent = 0
        for path in self.pending():
            try:
                envelope = json.loads(path.read_bytes())
            except (OSError, ValueError):
                with contextlib.suppress(OSError):
                    path.unlink()  # a torn file cannot exist (atomic writes); drop anything unreadable
                continue
            try:
                verdict = post(envelope)
            except EdgeError as exc:
                log.info("report flush stopped: %s", exc)
                break
            if verdict is ReportVerdict.DELIVERED:
                with contextlib.suppress(OSError):
                    path.unlink()
                sent += 1
                continue
            if verdict is ReportVerdict.REFUSED:
                log.warning("server refused report %s for good; dropping it", path.name)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            break  # 401 (token expired), 5xx, …: keep the queue for the next poll
        return sent
