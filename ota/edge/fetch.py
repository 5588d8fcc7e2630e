"""Resumable, capped, verified HTTP downloads for the edge agent (the network half of installing).

:class:`Fetcher` downloads one artifact whose length and sha256 come from verified metadata:

* it keeps the partial file in the staging area and resumes it with an HTTP ``Range`` request, so a cut
  connection costs only the bytes in flight (the acceptance bound is ≤ 5 % downloaded twice);
* it never writes more than the declared length: more bytes is the endless-data attack
  (:class:`~ota.edge.errors.DownloadTooLargeError`);
* it refuses a transfer slower than ``min_download_rate_bps`` once the grace period is over, and a read
  silence longer than ``read_timeout_s`` (slow-retrieval attack);
* on connection errors and 5xx answers it retries with exponential backoff and full jitter, capped;
* it verifies length and sha256 before moving the file into place with a rename, and deletes a partial
  file whose hash is wrong, so the next attempt starts clean;
* it counts every byte received, for the status reports.

python-tuf's ngclient fetcher downloads whole files only; this one does the resumable part, and the
caller verifies the result against the same TUF target info.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from ota.edge.backoff import full_jitter_delay
from ota.edge.config import AgentConfig
from ota.edge.errors import (
    DownloadTooLargeError,
    FetchError,
    HashMismatchError,
    HttpStatusError,
    LengthMismatchError,
    RetriesExhaustedError,
    SlotError,
    SlowRetrievalError,
)
from ota.edge.fsutil import fsync_dir

FSYNC_EVERY_BYTES = 4 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class FetchStats:
    """What one download cost.

    Attributes:
        bytes_transferred: Body bytes received over the network for this artifact, all attempts included.
        resumed_from: Bytes already on disk from an earlier, interrupted run.
        attempts: HTTP requests made.
        retries: Requests that failed and were retried.
    """

    bytes_transferred: int
    resumed_from: int
    attempts: int
    retries: int


def make_client(config: AgentConfig, *, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """Build the agent's HTTP client with its timeouts and limits.

    Args:
        config: The agent's limits.
        transport: An optional transport (tests inject faults this way).

    Returns:
        A client following at most 5 redirects (presigned S3 URLs answer with one).
    """
    timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
    return httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=5, transport=transport)


class Fetcher:
    """Downloads artifacts with resume, caps, verification and backoff.

    Args:
        config: The agent's limits.
        client: HTTP client; built from ``config`` when omitted.
        rng: Randomness for the backoff jitter.
        sleep: Called to wait between retries (tests pass a recorder).
        clock: Monotonic clock used for the slow-retrieval rate.
        on_progress: Called after each chunk with the bytes received so far in this attempt.
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        client: httpx.Client | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.client = client or make_client(config)
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock
        self.on_progress = on_progress
        #: Body bytes received by this fetcher over its life, for reports and the simulator's summary.
        self.total_bytes_transferred = 0

    def fetch(
        self,
        url: str,
        destination: Path,
        *,
        length: int,
        sha256: str,
        partial: Path | None = None,
    ) -> FetchStats:
        """Download ``url`` to ``destination``, resuming ``partial`` if it exists, and verify it.

        Args:
            url: Where to download from.
            destination: Final path; written only once length and hash are verified.
            length: The signed length; no more bytes than this are accepted.
            sha256: The signed lowercase hex sha256.
            partial: Where to keep the partial download (default: ``destination`` + ``.part``).

        Returns:
            What the download cost.

        Raises:
            DownloadTooLargeError: The declared length exceeds ``max_download_bytes``, or the server sent
                more than the declared length.
            SlowRetrievalError: The server sent slower than ``min_download_rate_bps``.
            HttpStatusError: A 4xx answer other than a Range mismatch.
            RetriesExhaustedError: Connection errors or 5xx answers outlasted ``max_download_retries``.
            LengthMismatchError: The finished file has the wrong length.
            HashMismatchError: The finished file has the wrong sha256 (the partial file is deleted).
            SlotError: The partial or final file cannot be written (for example, the disk is full).
        """
        if length > self.config.max_download_bytes:
            raise DownloadTooLargeError(
                f"{url}: declared length {length} exceeds max_download_bytes {self.config.max_download_bytes}"
            )
        partial = partial or destination.with_name(destination.name + ".part")
        resumed_from = _size(partial)
        if resumed_from > length:
            # A partial file longer than the signed length is garbage from an earlier target: start over.
            _truncate(partial, 0)
            resumed_from = 0
        transferred = attempts = retries = 0
        reused = resumed_from
        # A partial file left by an earlier run may be corrupt (a torn write, a bad sector, a tampered cache):
        # if the finished file fails its hash and part of it came from disk, start over once before calling
        # it an attack. A mismatch on bytes all received in this call is reported at once.
        for fresh_start in (False, True):
            received, tried, failed = self._download(url, partial, length)
            transferred += received
            attempts += tried
            retries += failed
            try:
                self._verify_and_install(url, partial, destination, length=length, sha256=sha256)
            except HashMismatchError:
                if fresh_start or resumed_from == 0:
                    raise
                resumed_from = 0
                continue
            break
        return FetchStats(
            bytes_transferred=transferred, resumed_from=reused, attempts=attempts, retries=retries
        )

    def _download(self, url: str, partial: Path, length: int) -> tuple[int, int, int]:
        """Fill ``partial`` up to ``length`` bytes; return (bytes received, requests, retried requests)."""
        transferred = attempts = failures_in_a_row = retries = 0
        last_error: BaseException | None = None
        # Progress resets the consecutive-failure count, so a flaky link still finishes; this overall bound
        # stops a server that sends one byte per connection from holding the agent forever.
        max_attempts = self.config.max_download_retries * 16
        while _size(partial) < length:
            if failures_in_a_row > self.config.max_download_retries or attempts >= max_attempts:
                raise RetriesExhaustedError(
                    f"{url}: gave up after {attempts} attempts "
                    f"({_size(partial)}/{length} bytes kept for later)"
                ) from last_error
            attempts += 1
            try:
                received = self._attempt(url, partial, length)
            except _RetryableError as exc:
                received = exc.received
                last_error = exc.__cause__ or exc
                transferred += received
                self.total_bytes_transferred += received
                failures_in_a_row = 0 if received > 0 else failures_in_a_row + 1
                retries += 1
                self.sleep(
                    full_jitter_delay(
                        failures_in_a_row,
                        base_s=self.config.retry_base_s,
                        cap_s=self.config.retry_cap_s,
                        rng=self.rng,
                    )
                )
                continue
            except _CountedError as exc:
                transferred += exc.received
                self.total_bytes_transferred += exc.received
                raise exc.error from exc.__cause__
            transferred += received
            self.total_bytes_transferred += received
            failures_in_a_row = 0
        return transferred, attempts, retries

    def _attempt(self, url: str, partial: Path, length: int) -> int:
        have = _size(partial)
        headers = {"Accept-Encoding": "identity"}
        if have > 0:
            headers["Range"] = f"bytes={have}-"
        received = 0
        try:
            with self.client.stream("GET", url, headers=headers) as response:
                if response.status_code >= 500 or response.status_code == 429:
                    raise _RetryableError(0, f"{url}: server answered {response.status_code}")
                if response.status_code == 416 and have > 0:
                    # The server does not accept our range: the partial file cannot be trusted, start over.
                    _truncate(partial, 0)
                    raise _RetryableError(0, f"{url}: range not satisfiable, restarting")
                if response.status_code == 206:
                    start = _range_start(response.headers.get("content-range", ""))
                    if start != have:
                        _truncate(partial, 0)
                        raise _RetryableError(0, f"{url}: server resumed at {start}, not {have}")
                elif response.status_code == 200:
                    if have > 0:
                        _truncate(partial, 0)  # the server ignored Range: it sends the whole file
                        have = 0
                else:
                    raise _CountedError(
                        0,
                        HttpStatusError(
                            f"{url}: server answered {response.status_code}", status_code=response.status_code
                        ),
                    )
                remaining = length - have
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > remaining:
                    raise _CountedError(
                        0,
                        DownloadTooLargeError(
                            f"{url}: server announces {int(declared)} bytes "
                            f"where {remaining} remain of {length}"
                        ),
                    )
                received = self._copy_body(url, response, partial, remaining)
        except (_RetryableError, _CountedError):
            raise
        except httpx.TimeoutException as exc:
            raise _CountedError(
                received,
                SlowRetrievalError(f"{url}: no data for {self.config.read_timeout_s} s"),
            ) from exc
        except httpx.TransportError as exc:
            # A cut connection: the bytes written so far are kept and the next attempt resumes after them.
            raise _RetryableError(_size(partial) - have, f"{url}: {type(exc).__name__}: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            # Too many redirects, a bad URL, …: retrying the same request cannot help.
            raise _CountedError(
                _size(partial) - have, FetchError(f"{url}: {type(exc).__name__}: {exc}")
            ) from exc
        return received

    def _copy_body(self, url: str, response: httpx.Response, partial: Path, remaining: int) -> int:
        started = self.clock()
        try:
            # 0600 like every file the agent keeps (the state dir is 0700 too).
            handle = os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        except OSError as exc:
            raise _CountedError(0, SlotError(f"cannot open {partial}: {exc}")) from exc
        try:
            return self._write_body(url, response, partial, handle, remaining, started)
        except OSError as exc:
            # Closing flushes the last buffered bytes: a full disk can surface there, after the loop.
            raise _CountedError(0, SlotError(f"cannot write {partial}: {exc}")) from exc

    def _write_body(
        self,
        url: str,
        response: httpx.Response,
        partial: Path,
        handle: BinaryIO,
        remaining: int,
        started: float,
    ) -> int:
        received = 0
        since_fsync = 0
        with handle:
            try:
                # No chunk_size: httpx would buffer up to it and lose the buffer when the connection is cut.
                for chunk in response.iter_raw():
                    if received + len(chunk) > remaining:
                        # Keep only what was declared; the surplus is never written (endless-data attack).
                        handle.write(chunk[: remaining - received])
                        raise _CountedError(
                            received + len(chunk),
                            DownloadTooLargeError(f"{url}: server sent more than the declared length"),
                        )
                    handle.write(chunk)
                    received += len(chunk)
                    since_fsync += len(chunk)
                    if since_fsync >= FSYNC_EVERY_BYTES:
                        handle.flush()
                        os.fsync(handle.fileno())
                        since_fsync = 0
                    elapsed = self.clock() - started
                    if (
                        elapsed > self.config.slow_retrieval_grace_s
                        and received / elapsed < self.config.min_download_rate_bps
                    ):
                        raise _CountedError(
                            received,
                            SlowRetrievalError(
                                f"{url}: {received / elapsed:.0f} B/s is below the minimum "
                                f"{self.config.min_download_rate_bps:.0f} B/s"
                            ),
                        )
                    if self.on_progress is not None:
                        self.on_progress(received)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise _CountedError(received, SlotError(f"cannot write {partial}: {exc}")) from exc
            except httpx.TimeoutException as exc:
                # Like python-tuf's fetcher: a read silence longer than the timeout is slow retrieval.
                raise _CountedError(
                    received, SlowRetrievalError(f"{url}: no data for {self.config.read_timeout_s} s")
                ) from exc
            except httpx.TransportError as exc:
                handle.flush()
                raise _RetryableError(received, f"{url}: {type(exc).__name__}: {exc}") from exc
        return received

    def _verify_and_install(
        self, url: str, partial: Path, destination: Path, *, length: int, sha256: str
    ) -> None:
        size = _size(partial)
        if size != length:
            raise LengthMismatchError(f"{url}: downloaded {size} bytes, signed length is {length}")
        digest = hashlib.sha256()
        with partial.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise HashMismatchError(f"{url}: sha256 {digest.hexdigest()} does not match the signed {sha256}")
        try:
            partial.replace(destination)
        except OSError as exc:
            raise SlotError(f"cannot move {partial} to {destination}: {exc}") from exc
        fsync_dir(destination.parent)


class _RetryableError(Exception):
    """Internal: this attempt failed in a way worth retrying; ``received`` bytes arrived first."""

    def __init__(self, received: int, message: str) -> None:
        super().__init__(message)
        self.received = received


class _CountedError(Exception):
    """Internal: carries a public error out of an attempt together with the bytes it received."""

    def __init__(self, received: int, error: FetchError | SlotError) -> None:
        super().__init__(str(error))
        self.received = received
        self.error = error


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _truncate(path: Path, size: int) -> None:
    with contextlib.suppress(FileNotFoundError), path.open("r+b") as handle:
        handle.truncate(size)


def _range_start(header: str) -> int | None:
    match = _CONTENT_RANGE.match(header.strip())
    return int(match.group(1)) if match else None
