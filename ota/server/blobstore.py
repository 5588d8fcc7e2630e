"""Blob storage of the OTA server behind one Protocol: a local folder, or S3 (boto3).

Artifacts and delta patches are stored under their TUF target file names (``targets/<sha256>.<name>``).
Routes stream blobs from here, or redirect to a presigned S3 URL when the store offers one. Unit tests use
:class:`LocalBlobStore` on a temp folder; integration tests run :class:`S3BlobStore` against moto's server.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from botocore.exceptions import BotoCoreError, ClientError

from ota.core.files import atomic_copy, atomic_write_bytes
from ota.server.errors import BlobNotFoundError, BlobStoreError, ConfigError

CHUNK = 1024 * 1024
_S3_ERRORS = (BotoCoreError, ClientError)


@runtime_checkable
class BlobStore(Protocol):
    """Where artifact bytes live. Keys are relative POSIX paths without ``..``."""

    def put_file(self, key: str, source: Path) -> None:
        """Store the file at ``source`` under ``key`` (overwriting is allowed: keys are content-addressed)."""

    def exists(self, key: str) -> bool:
        """Return True when ``key`` exists."""

    def size(self, key: str) -> int:
        """Return the blob's size in bytes (raises ``BlobNotFoundError``)."""

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield the bytes ``[start, end]`` (inclusive end, like HTTP Range) in chunks."""

    def download(self, key: str, destination: Path) -> None:
        """Copy the blob into a local file (atomically)."""

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        """Return a time-limited direct URL, or None when the store cannot make one."""


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts) or "\\" in key:
        raise BlobStoreError(f"invalid blob key {key!r}")
    return key


class LocalBlobStore:
    """Blobs as files under one folder."""

    def __init__(self, *, root: Path) -> None:
        """Create the store.

        Args:
            root: The folder; created when missing, owner-only (0700) like the rest of the server's state.
        """
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        root.chmod(0o700)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_file(self, key: str, source: Path) -> None:
        """Copy ``source`` under ``key`` atomically.

        Raises:
            BlobStoreError: The copy failed.
        """
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_copy(source, target, mode=0o600)
        except OSError as exc:
            raise BlobStoreError(f"cannot store {key}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically.

        Raises:
            BlobStoreError: The write failed.
        """
        try:
            atomic_write_bytes(self._path(key), data, mode=0o600)
        except OSError as exc:
            raise BlobStoreError(f"cannot store {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        """Return True when ``key`` exists."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """Return the blob's size.

        Raises:
            BlobNotFoundError: No such blob.
            BlobStoreError: The blob cannot be examined.
        """
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise BlobNotFoundError(key) from exc
        except OSError as exc:
            raise BlobStoreError(f"cannot stat {key}: {exc.strerror}") from exc

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes ``[start, end]``.

        Raises:
            BlobNotFoundError: No such blob.
            BlobStoreError: The blob cannot be read.
        """
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFoundError(key)
        # Opened here, not in the generator: an unreadable blob must fail before an answer has started.
        try:
            handle = path.open("rb")
            handle.seek(start)
        except OSError as exc:
            raise BlobStoreError(f"cannot read {key}: {exc.strerror}") from exc
        return self._iter(handle, start, end)

    @staticmethod
    def _iter(handle: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
        with handle:
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                chunk = handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def download(self, key: str, destination: Path) -> None:
        """Copy the blob to ``destination``.

        Raises:
            BlobNotFoundError: No such blob.
            BlobStoreError: The copy failed.
        """
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFoundError(key)
        try:
            shutil.copyfile(path, destination)
        except OSError as exc:
            raise BlobStoreError(f"cannot copy {key}: {exc}") from exc

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        """Local folders have no direct URL: the API streams them."""
        return None


class S3BlobStore:
    """Blobs as S3 objects under ``s3://bucket/prefix``; works with AWS, MinIO and moto's server."""

    def __init__(
        self, *, bucket: str, prefix: str = "", endpoint_url: str | None = None, presign: bool = False
    ) -> None:
        """Create the store (the bucket is created when missing, which MinIO and moto allow).

        Args:
            bucket: Bucket name.
            prefix: Key prefix inside the bucket.
            endpoint_url: Non-AWS endpoint (MinIO, moto).
            presign: Whether target downloads redirect to presigned URLs.

        Raises:
            BlobStoreError: The bucket cannot be reached or created.
        """
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.presign = presign
        self._client = boto3.client(
            "s3", endpoint_url=endpoint_url, config=Config(retries={"max_attempts": 3, "mode": "standard"})
        )
        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError:
            try:
                self._client.create_bucket(Bucket=bucket)
            except _S3_ERRORS as exc:
                raise BlobStoreError(f"cannot create bucket {bucket}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"cannot reach bucket {bucket}: {exc}") from exc

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _not_found(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in {"404", "NoSuchKey", "NotFound"}

    def put_file(self, key: str, source: Path) -> None:
        """Upload ``source`` (multipart for big files, handled by boto3).

        Raises:
            BlobStoreError: The upload failed.
        """
        try:
            self._client.upload_file(str(source), self.bucket, self._key(key))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise BlobStoreError(f"cannot upload {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        """Return True when ``key`` exists.

        Raises:
            BlobStoreError: S3 failed for another reason than a missing key.
        """
        try:
            self.size(key)
        except BlobNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        """Return the object's size.

        Raises:
            BlobNotFoundError: No such object.
            BlobStoreError: S3 failed.
        """
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except _S3_ERRORS as exc:
            if self._not_found(exc):
                raise BlobNotFoundError(key) from exc
            raise BlobStoreError(f"cannot stat {key}: {exc}") from exc
        return int(head["ContentLength"])

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes ``[start, end]`` from a ranged GET.

        Raises:
            BlobNotFoundError: No such object.
            BlobStoreError: S3 failed.
        """
        byte_range = f"bytes={start}-{'' if end is None else end}"
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key), Range=byte_range)
        except _S3_ERRORS as exc:
            if self._not_found(exc):
                raise BlobNotFoundError(key) from exc
            raise BlobStoreError(f"cannot read {key}: {exc}") from exc
        body = response["Body"]
        return iter(lambda: body.read(CHUNK), b"")

    def download(self, key: str, destination: Path) -> None:
        """Download the object to ``destination``.

        Raises:
            BlobNotFoundError: No such object.
            BlobStoreError: S3 failed.
        """
        try:
            self._client.download_file(self.bucket, self._key(key), str(destination))
        except _S3_ERRORS as exc:
            if self._not_found(exc):
                raise BlobNotFoundError(key) from exc
            raise BlobStoreError(f"cannot download {key}: {exc}") from exc

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        """Return a presigned GET URL when presigning is on, else None.

        Raises:
            BlobStoreError: The URL cannot be made.
        """
        if not self.presign:
            return None
        try:
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_in
            )
        except _S3_ERRORS as exc:
            raise BlobStoreError(f"cannot presign {key}: {exc}") from exc
        return url


def open_blob_store(url: str, *, endpoint_url: str | None = None, presign: bool = False) -> BlobStore:
    """Open the store a URL names: ``file:///path`` or ``s3://bucket/prefix``.

    Args:
        url: The blob store URL.
        endpoint_url: S3 endpoint for non-AWS stores.
        presign: Whether S3 downloads redirect to presigned URLs.

    Returns:
        The store.

    Raises:
        ConfigError: Unknown scheme or malformed URL.
        BlobStoreError: The S3 bucket cannot be reached.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBlobStore(root=Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"S3 blob URL needs a bucket: {url!r}")
        return S3BlobStore(
            bucket=parsed.netloc, prefix=parsed.path, endpoint_url=endpoint_url, presign=presign
        )
    raise ConfigError(f"unsupported blob store URL {url!r}: use file:///path or s3://bucket/prefix")
