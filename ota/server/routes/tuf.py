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
from ota.server.errors import BlobNotFoundError, InvalidRequestError, NotFoundError

router = APIRouter(prefix="/tuf", tags=["tuf"])

_VERSIONED = re.compile(r"^([1-9][0-9]{0,9})\.(root|snapshot|targets)\.json$")
_TARGET = re.compile(r"^[0-9a-f]{64}\.[A-Za-z0-9][A-Za-z0-9._+-]{0,300}$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
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
    # Versioned files never change; timestamp.json must be re-fetched every time.
    cache = "no-store" if filename == "timestamp.json" else "public, max-age=31536000, immutable"
    return Response(data, media_type=_JSON, headers={"Cache-Control": cache})


@router.get(
    "/targets/{filename}",
    responses={404: {"description": "No such target"}, 206: {"description": "Partial content"}},
    response_model=None,
)
def target(
    ctx: ContextDep,
    filename: str = Path(max_length=400),
    range_header: str | None = Header(default=None, alias="Range", max_length=64),
) -> Response:
    """Serve a target file by its consistent-snapshot name ``{sha256}.{name}``, with Range support.

    Raises:
        NotFoundError: Unknown target.
        InvalidRequestError: Unsatisfiable range.
    """
    if not _TARGET.match(filename):
        raise NotFoundError(f"no target {filename!r}")
    key = f"targets/{filename}"
    try:
        size = ctx.blobs.size(key)
    except BlobNotFoundError as exc:
        raise NotFoundError(f"no target {filename!r}") from exc
    url = ctx.blobs.presigned_url(key, 3600)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
    if range_header:
        match = _RANGE.match(range_header.strip())
        if match is None:
            raise InvalidRequestError("only a single 'bytes=start-[end]' range is supported")
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        if start >= size or end < start:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
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
