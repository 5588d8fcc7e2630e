"""TUF image repository over HTTP, laid out as ``tuf.ngclient.Updater`` fetches it.

``/tuf/metadata/{n}.root.json``, ``/tuf/metadata/timestamp.json``, ``/tuf/metadata/{n}.snapshot.json``,
``/tuf/metadata/{n}.targets.json`` and ``/tuf/targets/{sha256}.{name}`` (consistent snapshots). Targets are
content-addressed blobs: streamed with HTTP Range support, or redirected to a presigned S3 URL.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Header, Path
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from ota.server.deps import ContextDep
from ota.server.errors import BlobNotFoundError, NotFoundError

router = APIRouter(prefix="/tuf", tags=["tuf"])

_VERSIONED = re.compile(r"^([1-9][0-9]{0,9})\.(root|snapshot|targets)\.json$")
_TARGET = re.compile(r"^[0-9a-f]{64}\.[A-Za-z0-9][A-Za-z0-9._+-]{0,300}$")
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")
_JSON = "application/json"


@router.get("/metadata/{filename}", responses={404: {"description": "No such metadata"}})
def metadata(ctx: ContextDep, filename: str = Path(max_length=64)) -> Response:
    """Serve one metadata file (timestamp.json is always the newest).

    Raises:
        NotFoundError: Unknown file or version.
    """
    with ctx.sessions() as session:
        if filename == "timestamp.json":
            data = ctx.repository.read(session, "timestamp")
        else:
            match = _VERSIONED.match(filename)
            if match is None:
                raise NotFoundError(f"no metadata file {filename!r}")
            data = ctx.repository.read(session, match.group(2), int(match.group(1)))
    if data is None:
        raise NotFoundError(f"no metadata file {filename!r}")
    # Versioned files never change; timestamp.json is re-fetched every time (or after a short max-age).
    cache = "public, max-age=31536000, immutable"
    if filename == "timestamp.json":
        age = ctx.settings.timestamp_max_age
        cache = f"public, max-age={age}" if age else "no-store"
    return Response(data, media_type=_JSON, headers={"Cache-Control": cache})


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Read a ``Range`` header against a blob of ``size`` bytes (RFC 9110 §14).

    Returns:
        ``(start, end)`` (inclusive) to serve as 206; None to ignore the header and serve 200 in full
        (no header, another unit, bad syntax, or several ranges, which the RFC lets a server ignore);
        ``"unsatisfiable"`` for a single well-formed range that selects no byte (416).
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None  # syntactically invalid: ignored, like any other bad range
        return (start, end) if start < size else "unsatisfiable"
    if not last:
        return None  # "bytes=-" is no range at all
    suffix = int(last)  # the last N bytes
    if suffix == 0 or size == 0:
        return "unsatisfiable"
    return max(size - suffix, 0), size - 1


@router.get(
    "/targets/{filename}",
    responses={
        404: {"description": "No such target"},
        206: {"description": "Partial content"},
        416: {"description": "Range not satisfiable"},
    },
    response_model=None,
)
def target(
    ctx: ContextDep,
    filename: str = Path(max_length=400),
    range_header: str | None = Header(default=None, alias="Range"),
) -> Response:
    """Serve a target file by its consistent-snapshot name ``{sha256}.{name}``, with Range support.

    One range (``bytes=a-b``, ``bytes=a-``, or the suffix ``bytes=-n``) is served as 206; several ranges or
    a malformed header are ignored (200, the whole file); a range past the end is 416 with
    ``Content-Range: bytes */LEN``.

    Raises:
        NotFoundError: Unknown target.
    """
    if not _TARGET.match(filename):
        raise NotFoundError(f"no target {filename!r}")
    key = f"targets/{filename}"
    try:
        size = ctx.blobs.size(key)
    except BlobNotFoundError as exc:
        raise NotFoundError(f"no target {filename!r}") from exc
    if ctx.settings.targets_cdn_url:
        return RedirectResponse(f"{ctx.settings.targets_cdn_url.rstrip('/')}/{filename}", status_code=307)
    url = ctx.blobs.presigned_url(key, ctx.settings.s3_presign_expiry)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
    selected = parse_range(range_header, size)
    if selected == "unsatisfiable":
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    if isinstance(selected, tuple):
        start, end = selected
        headers |= {"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)}
        return StreamingResponse(
            ctx.blobs.open_range(key, start, end),
            status_code=206,
            media_type="application/octet-stream",
            headers=headers,
        )
    headers["Content-Length"] = str(size)
    return StreamingResponse(
        ctx.blobs.open_range(key), media_type="application/octet-stream", headers=headers
    )
