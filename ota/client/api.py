"""``OperatorClient``: the operator's HTTP client of the OTA server (bearer token, typed answers and errors).

Every answer is read through one method (:meth:`OperatorClient._call`): capped at ``max_body_bytes`` before
it is parsed, decoded as JSON, and turned into :mod:`ota.client.models`; every httpx exception and every HTTP
error becomes a :mod:`ota.client.errors` error there, so callers never see ``KeyError``, ``ValueError`` or
an httpx exception. Artifacts are streamed from their file, never held whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

from ota.client.config import OPERATOR_TOKEN_ENV, SERVER_ENV
from ota.client.errors import (
    AuthenticationError,
    ResponseError,
    ServerUnreachableError,
    error_for_status,
)
from ota.client.models import (
    AuditEntry,
    Device,
    DeviceDetail,
    OperatorToken,
    ProvisioningToken,
    Publication,
    Release,
    Rollout,
    RolloutReport,
    SelftestStaged,
    TokenCreated,
    TokenInfo,
    parse,
    parse_list,
)

#: The largest JSON answer read (a 10 000-device page is about 3 MB).
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
RolloutAction = Literal["pause", "resume", "abort", "rollback", "advance"]
AdmissionDecision = Literal["accepted", "rejected"]


def _segment(value: str) -> str:
    return quote(value, safe="")


class OperatorClient:
    """An operator client of the OTA server's API.

    Example::

        with OperatorClient(base_url="http://127.0.0.1:18080", token=token) as api:
            for release in api.releases():
                print(release.id)
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        timeout_s: float = 60.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Open a client on ``base_url`` authenticated with the operator ``token``."""
        self.base_url = base_url.rstrip("/")
        self.max_body_bytes = max_body_bytes
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> Self:
        """Use as a context manager; the connection pool closes on exit."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the connection pool."""
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ---- the one place answers are read ----------------------------------------------------------------

    def _read_capped(self, answer: httpx.Response, what: str) -> bytes:
        declared = answer.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise ResponseError(
                f"{what}: answer of {declared} bytes is over the cap of {self.max_body_bytes}"
            )
        body = bytearray()
        for chunk in answer.iter_bytes():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise ResponseError(f"{what}: answer is over the cap of {self.max_body_bytes} bytes")
        return bytes(body)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        what = f"{method} {self.base_url}{path}"
        try:
            with self._http.stream(method, path, **kwargs) as answer:
                body = self._read_capped(answer, what)
                status = answer.status_code
        except httpx.TransportError as exc:
            raise ServerUnreachableError(
                f"cannot reach the OTA server at {self.base_url} ({type(exc).__name__}: {exc}); "
                f"start it with `edgefleet server run` or point elsewhere with --server or ${SERVER_ENV}"
            ) from exc
        except httpx.HTTPError as exc:
            raise ResponseError(f"{what}: {type(exc).__name__}: {exc}") from exc
        if status >= 400:
            raise self._error(status, body, what)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ResponseError(f"{what} answered non-JSON: {body[:200]!r}") from exc

    @staticmethod
    def _error(status: int, body: bytes, what: str) -> Exception:
        code, message = f"http_{status}", body[:300].decode("utf-8", "replace")
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            if isinstance(document.get("error"), str):
                code = document["error"]
            if isinstance(document.get("message"), str):
                message = document["message"]
            elif "detail" in document:
                message = json.dumps(document["detail"])[:300]
        cls = error_for_status(status)
        hint = f" (is ${OPERATOR_TOKEN_ENV} a valid token?)" if cls is AuthenticationError else ""
        return cls(f"{what} → {status} {code}: {message}{hint}", status=status, code=code, message=message)

    # ---- releases --------------------------------------------------------------------------------------

    def releases(self) -> list[Release]:
        """``GET /v1/releases``, newest first (read scope).

        Raises:
            ClientError: Refused, unreachable or an unusable answer.
        """
        return parse_list(Release, self._call("GET", "/v1/releases"), where="releases")

    def release(self, release_id: str) -> Publication:
        """``GET /v1/releases/{id}``: one release and its deltas (read scope).

        Raises:
            NotFoundError: Unknown release.
            ClientError: Refused, unreachable or an unusable answer.
        """
        return parse(Publication, self._call("GET", f"/v1/releases/{_segment(release_id)}"), where="release")

    def upload_selftest(self, vectors: Path | bytes) -> SelftestStaged:
        """``PUT /v1/releases/selftest``: stage self-test vectors (idempotent; release scope).

        Raises:
            InvalidRequestError: Empty, oversized or not an .npz file.
            ClientError: Refused, unreachable or an unusable answer.
            OSError: The file cannot be read.
        """
        answer = self._put_body("/v1/releases/selftest", vectors)
        return parse(SelftestStaged, answer, where="selftest")

    def _put_body(self, path: str, body: Path | bytes, params: dict[str, str] | None = None) -> Any:
        """PUT ``body`` as application/octet-stream, streamed from the file when it is a path."""
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(body, bytes):
            return self._call("PUT", path, params=params, content=body, headers=headers)
        headers["Content-Length"] = str(body.stat().st_size)
        with body.open("rb") as stream:
            return self._call("PUT", path, params=params, content=_chunks(stream), headers=headers)

    def publish_release(
        self,
        artifact: Path | bytes,
        *,
        model: str,
        version: str,
        profile: str,
        source_uri: str | None = None,
        selftest: Path | bytes | None = None,
        mlflow_run_id: str | None = None,
        data_fingerprint: str | None = None,
        artifact_format: Literal["onnx", "raw"] = "onnx",
    ) -> Publication:
        """``PUT /v1/releases``: publish an artifact (a file is streamed; idempotent; release scope).

        With ``selftest`` the vectors are staged first and attached by their sha256, so the server signs the
        model target and its self-test target in one targets version. ``artifact_format="raw"`` skips the
        server's ONNX check (audited).

        Raises:
            InvalidRequestError: Bad names, not ONNX, or an oversized artifact.
            ConflictError: model/version/profile taken by another artifact.
            ClientError: Refused, unreachable or an unusable answer.
            OSError: A file cannot be read.
        """
        params: dict[str, str] = {
            "model": model,
            "version": version,
            "profile": profile,
            "artifact_format": artifact_format,
        }
        if source_uri:
            params["source_uri"] = source_uri
        if selftest is not None:
            params["selftest_sha256"] = self.upload_selftest(selftest).sha256
        if mlflow_run_id:
            params["mlflow_run_id"] = mlflow_run_id
        if data_fingerprint:
            params["data_fingerprint"] = data_fingerprint
        return parse(Publication, self._put_body("/v1/releases", artifact, params), where="publish")

    # ---- rollouts --------------------------------------------------------------------------------------

    def start_rollout(self, body: Mapping[str, Any]) -> Rollout:
        """``POST /v1/rollouts`` with the server's ``RolloutCreate`` body (rollout scope).

        Raises:
            NotFoundError: Unknown release.
            ConflictError: An active rollout holds the selector.
            ClientError: Refused, unreachable or an unusable answer.
        """
        return parse(Rollout, self._call("POST", "/v1/rollouts", json=dict(body)), where="rollout")

    def rollouts(self) -> list[Rollout]:
        """``GET /v1/rollouts``, newest first (read scope).

        Raises:
            ClientError: Refused, unreachable or an unusable answer.
        """
        return parse_list(Rollout, self._call("GET", "/v1/rollouts"), where="rollouts")

    def rollout(self, rollout_id: str) -> Rollout:
        """``GET /v1/rollouts/{id}`` (read scope).

        Raises:
            NotFoundError: Unknown rollout.
            ClientError: Refused, unreachable or an unusable answer.
        """
        return parse(Rollout, self._call("GET", f"/v1/rollouts/{_segment(rollout_id)}"), where="rollout")

    def rollout_report(self, rollout_id: str) -> RolloutReport:
        """``GET /v1/rollouts/{id}/report``: counts, bytes saved and timeline (read scope).

        Raises:
            NotFoundError: Unknown rollout.
            ClientError: Refused, unreachable or an unusable answer.
        """
        answer = self._call("GET", f"/v1/rollouts/{_segment(rollout_id)}/report")
        return parse(RolloutReport, answer, where="report")

    def act(self, rollout_id: str, action: RolloutAction) -> Rollout:
        """``POST /v1/rollouts/{id}/{action}`` (rollout scope).

        Raises:
            ApiError: The action is not allowed in the rollout's state (409) or the rollout is unknown.
            ClientError: Unreachable or an unusable answer.
        """
        answer = self._call("POST", f"/v1/rollouts/{_segment(rollout_id)}/{action}")
        return parse(Rollout, answer, where="rollout")

    # ---- devices ---------------------------------------------------------------------------------------

    def devices_page(
        self, *, limit: int = 1000, after: str | None = None, **filters: str | None
    ) -> list[Device]:
        """``GET /v1/devices``: one page, ordered by id, of the devices after ``after`` (read scope).

        Args:
            limit: Page size (the server allows up to 10 000).
            after: The last id of the previous page (keyset paging).
            **filters: ``state``, ``profile``, ``group``, ``sha256``, ``version``, ``seen_before`` and
                ``seen_after`` (ISO-8601); None leaves one out.

        Raises:
            InvalidRequestError: A bad filter value.
            ClientError: Refused, unreachable or an unusable answer.
        """
        params = {k: v for k, v in filters.items() if v is not None}
        params["limit"] = str(limit)
        if after is not None:
            params["after"] = after
        return parse_list(Device, self._call("GET", "/v1/devices", params=params), where="devices")

    def devices(self, *, page_size: int = 1000, **filters: str | None) -> list[Device]:
        """Every device matching ``filters`` (see :meth:`devices_page`), page after page.

        Raises:
            ClientError: Refused, unreachable or an unusable answer.
        """
        found: list[Device] = []
        after: str | None = None
        while True:
            page = self.devices_page(limit=page_size, after=after, **filters)
            found.extend(page)
            if len(page) < page_size:
                return found
            after = page[-1].id

    def device(self, device_id: str) -> DeviceDetail:
        """``GET /v1/devices/{id}``: state, installed release, recent reports (read scope).

        Raises:
            NotFoundError: Unknown device.
            ClientError: Refused, unreachable or an unusable answer.
        """
        return parse(DeviceDetail, self._call("GET", f"/v1/devices/{_segment(device_id)}"), where="device")

    def admit(self, device_id: str, decision: AdmissionDecision, *, reason: str | None = None) -> Device:
        """``POST /v1/devices/{id}/admission/{decision}``: accept or reject (admin scope).

        Raises:
            NotFoundError: Unknown device.
            ConflictError: The device was revoked.
            ClientError: Refused, unreachable or an unusable answer.
        """
        answer = self._call(
            "POST", f"/v1/devices/{_segment(device_id)}/admission/{decision}", json={"reason": reason}
        )
        return parse(Device, answer, where="device")

    def revoke_device(self, device_id: str, *, reason: str | None = None) -> Device:
        """``POST /v1/devices/{id}/revoke`` (admin scope).

        Raises:
            NotFoundError: Unknown device.
            ClientError: Refused, unreachable or an unusable answer.
        """
        answer = self._call("POST", f"/v1/devices/{_segment(device_id)}/revoke", json={"reason": reason})
        return parse(Device, answer, where="device")

    # ---- tokens and audit ------------------------------------------------------------------------------

    def create_token(self, *, name: str, scopes: list[str]) -> TokenCreated:
        """``POST /v1/tokens``: a new operator token (admin scope).

        Raises:
            ClientError: Refused, unreachable or an unusable answer.
        """
        answer = self._call("POST", "/v1/tokens", json={"name": name, "scopes": scopes})
        return parse(TokenCreated, answer, where="token")

    def create_provisioning_token(
        self, *, name: str, auto_accept: bool = False, group: str | None = None
    ) -> TokenCreated:
        """``POST /v1/provisioning-tokens`` (admin scope).

        Raises:
            ClientError: Refused, unreachable or an unusable answer.
        """
        body = {"name": name, "auto_accept": auto_accept, "group": group}
        return parse(TokenCreated, self._call("POST", "/v1/provisioning-tokens", json=body), where="token")

    def tokens(self) -> list[OperatorToken]:
        """``GET /v1/tokens`` (admin scope).

        Raises:
            ClientError: Refused, unreachable or an unusable answer.
        """
        return parse_list(OperatorToken, self._call("GET", "/v1/tokens"), where="tokens")

    def provisioning_tokens(self) -> list[ProvisioningToken]:
        """``GET /v1/provisioning-tokens`` (admin scope).

        Raises:
            ClientError: Refused, unreachable or an unusable answer.
        """
        answer = self._call("GET", "/v1/provisioning-tokens")
        return parse_list(ProvisioningToken, answer, where="provisioning tokens")

    def revoke_token(self, token_id: str, *, reason: str | None = None) -> TokenInfo:
        """``POST /v1/tokens/{id}/revoke``: an operator or provisioning token (admin scope).

        Raises:
            NotFoundError: No token has that id.
            ClientError: Refused, unreachable or an unusable answer.
        """
        answer = self._call("POST", f"/v1/tokens/{_segment(token_id)}/revoke", json={"reason": reason})
        return parse(TokenInfo, answer, where="token")

    def audit(self, *, limit: int = 100) -> list[AuditEntry]:
        """``GET /v1/audit``: the newest entries (admin scope).

        Raises:
            ClientError: Refused, unreachable or an unusable answer.
        """
        answer = self._call("GET", "/v1/audit", params={"limit": str(limit)})
        return parse_list(AuditEntry, answer, where="audit")


def _chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk
