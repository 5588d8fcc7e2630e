"""The agent's client of the server's device API: the one place that talks HTTP to the device endpoints.

:class:`DeviceApi` owns every call to ``/v1/enrol`` and ``/v1/devices/{id}/…`` (challenge, token,
assignment with ETag, reports). Like python-tuf's updater around its bytes-in metadata checks, it does the
network part and nothing else:

* every body is streamed (``client.stream`` + ``iter_bytes``, identity encoding only) and cut off at a
  per-endpoint cap before it is parsed, so an endless or huge answer costs at most the cap plus one
  chunk of memory (:class:`~ota.edge.errors.AnswerTooLargeError`);
* every answer is parsed and validated into its typed document from :mod:`ota.core.manifest`;
* every failure is mapped to the edge error tree (``raise XError(...) from exc``): transport trouble to
  :class:`~ota.edge.errors.ApiTransportError`, an unexpected status to
  :class:`~ota.edge.errors.HttpStatusError`, bad JSON, a wrong type or a missing key to
  :class:`~ota.edge.errors.AnswerFormatError`.

The poll loop above therefore never sees ``KeyError``, ``ValueError``, ``TypeError`` or an httpx exception
from these endpoints. The assignment's signature is not checked here: that is verification, and stays
with :func:`ota.core.manifest.verify_assignment` in the agent; this module hands over its capped bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import httpx
from securesystemslib.signer import Signer

from ota.core.errors import OtaError
from ota.core.manifest import (
    Challenge,
    DeviceToken,
    EnrolmentRequest,
    EnrolmentResponse,
    TokenRequest,
    parse_time,
)
from ota.core.signing import sign_document
from ota.edge.errors import (
    AnswerFormatError,
    AnswerTooLargeError,
    ApiTransportError,
    HttpStatusError,
)

#: Cap on enrolment, challenge, token and report answers. The largest is the enrolment answer, which
#: carries the TUF root (a few KiB even with several root keys); 64 KiB leaves room and bounds memory.
SMALL_ANSWER_MAX_BYTES = 64 * 1024
#: A token is renewed this long before it expires, so a poll never starts with one about to lapse.
TOKEN_RENEW_MARGIN = timedelta(seconds=30)

_Doc = TypeVar("_Doc")


@dataclass(frozen=True)
class Answer:
    """One capped HTTP answer.

    Attributes:
        status_code: The HTTP status.
        headers: The response headers.
        body: The whole body, at most the endpoint's cap.
    """

    status_code: int
    headers: httpx.Headers
    body: bytes


@dataclass(frozen=True)
class AssignmentAnswer:
    """What ``GET /v1/devices/{id}/assignment`` returned.

    Attributes:
        envelope: The signed assignment bytes (not yet verified), or None for a 304.
        etag: The ETag to send next time, if the server gave one.
        poll_interval: The server's ``X-Poll-Interval`` in seconds, if it gave a usable one.
    """

    envelope: bytes | None
    etag: str | None
    poll_interval: float | None


class ReportVerdict(StrEnum):
    """What to do with a queued report after posting it."""

    #: Accepted, or refused as a replay (it had already arrived): drop it from the queue.
    DELIVERED = "delivered"
    #: Refused for good (400, 413, 422): drop it, sending it again cannot help.
    REFUSED = "refused"
    #: Expired token, 5xx, …: keep it and the ones behind it for the next poll.
    RETRY_LATER = "retry-later"


class DeviceApi:
    """Client of the server's device endpoints for one device.

    Args:
        server_url: Base URL of the OTA server.
        device_id: This device's id.
        client: The agent's HTTP client (timeouts and transport come from it).
        signer: The device key (signs enrolment and token requests).
        assignment_max_bytes: Cap on an assignment answer (``AgentConfig.max_metadata_bytes``).
        answer_max_bytes: Cap on every other answer.
    """

    def __init__(
        self,
        *,
        server_url: str,
        device_id: str,
        client: httpx.Client,
        signer: Signer,
        assignment_max_bytes: int,
        answer_max_bytes: int = SMALL_ANSWER_MAX_BYTES,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.device_id = device_id
        self.client = client
        self.signer = signer
        self.assignment_max_bytes = assignment_max_bytes
        self.answer_max_bytes = answer_max_bytes
        self._token: str | None = None
        self._token_expires = datetime.min.replace(tzinfo=UTC)

    @property
    def _device_base(self) -> str:
        return f"{self.server_url}/v1/devices/{self.device_id}"

    # ---- enrolment and tokens -------------------------------------------------------------------

    def enrol(self, request: EnrolmentRequest) -> EnrolmentResponse | None:
        """Enrol (or re-check admission) with a request signed by the device key.

        Args:
            request: The enrolment request.

        Returns:
            The server's answer, or None when the server refuses this device (403).

        Raises:
            ApiTransportError: The call failed below HTTP.
            HttpStatusError: Any status but 201, 202 or 403.
            AnswerTooLargeError: The answer exceeds ``answer_max_bytes``.
            AnswerFormatError: The answer is not a valid enrolment response.
        """
        envelope = sign_document(request.to_dict(), [self.signer])
        answer = self._call("POST", f"{self.server_url}/v1/enrol", what="enrolment", json_body=envelope)
        if answer.status_code == 403:
            return None
        _expect_status(answer, "enrolment", 201, 202)
        return _parse(answer, "enrolment", EnrolmentResponse.from_dict)

    def challenge(self) -> Challenge:
        """Ask for a nonce to sign.

        Raises:
            ApiTransportError: The call failed below HTTP.
            HttpStatusError: Any status but 200.
            AnswerTooLargeError: The answer exceeds ``answer_max_bytes``.
            AnswerFormatError: The answer is not a valid challenge.
        """
        answer = self._call("POST", f"{self._device_base}/challenge", what="challenge")
        _expect_status(answer, "challenge", 200)
        return _parse(answer, "challenge", Challenge.from_dict)

    def token(self) -> str:
        """Return a valid poll token, logging in (challenge, signed answer) when needed.

        Raises:
            ApiTransportError: A call failed below HTTP.
            HttpStatusError: The challenge or token endpoint answered an unexpected status.
            AnswerTooLargeError: An answer exceeds ``answer_max_bytes``.
            AnswerFormatError: An answer is not the expected document.
        """
        if self._token is not None and datetime.now(UTC) < self._token_expires - TOKEN_RENEW_MARGIN:
            return self._token
        challenge = self.challenge()
        request = TokenRequest(device_id=self.device_id, nonce=challenge.nonce)
        envelope = sign_document(request.to_dict(), [self.signer])
        answer = self._call("POST", f"{self._device_base}/token", what="token", json_body=envelope)
        _expect_status(answer, "token", 200)
        token = _parse(answer, "token", DeviceToken.from_dict)
        self._token = token.token
        # DeviceToken.from_dict has checked the format; parse_time cannot fail on it.
        self._token_expires = parse_time(token.expires, "expires")
        return self._token

    def forget_token(self) -> None:
        """Drop the cached token, so the next call logs in again."""
        self._token = None

    # ---- assignment and reports ---------------------------------------------------------------

    def assignment(self, *, current_sha256: str | None, etag: str | None) -> AssignmentAnswer:
        """Fetch this device's signed assignment.

        Args:
            current_sha256: The installed model's sha256, sent as ``?current=``.
            etag: The last ETag, sent as ``If-None-Match``.

        Returns:
            The capped envelope bytes (None for 304) with the ETag and poll interval headers.

        Raises:
            ApiTransportError: A call failed below HTTP.
            HttpStatusError: Any status but 200 or 304.
            AnswerTooLargeError: The answer exceeds ``assignment_max_bytes``.
            AnswerFormatError: A token answer was malformed.
        """
        url = f"{self._device_base}/assignment"
        if current_sha256:
            url += f"?current={current_sha256}"
        headers = {"If-None-Match": etag} if etag else {}
        answer = self._authorised(
            "GET", url, what="assignment", cap=self.assignment_max_bytes, headers=headers
        )
        interval = _header_float(answer.headers.get("x-poll-interval"))
        if answer.status_code == 304:
            return AssignmentAnswer(envelope=None, etag=etag, poll_interval=interval)
        _expect_status(answer, "assignment", 200)
        return AssignmentAnswer(envelope=answer.body, etag=answer.headers.get("etag"), poll_interval=interval)

    def post_report(self, envelope: dict[str, Any]) -> ReportVerdict:
        """Post one signed status report.

        Args:
            envelope: The signed report.

        Returns:
            What the queue should do with it.

        Raises:
            ApiTransportError: The call failed below HTTP.
            AnswerTooLargeError: The answer exceeds ``answer_max_bytes``.
            AnswerFormatError: A token answer was malformed.
            HttpStatusError: The challenge or token endpoint answered an unexpected status.
        """
        answer = self._authorised("POST", f"{self._device_base}/reports", what="report", json_body=envelope)
        if answer.status_code == 200 or (answer.status_code == 403 and _is_replay(answer.body)):
            return ReportVerdict.DELIVERED
        if answer.status_code in (400, 413, 422):
            return ReportVerdict.REFUSED
        return ReportVerdict.RETRY_LATER

    # ---- plumbing -------------------------------------------------------------------------------

    def _authorised(
        self,
        method: str,
        url: str,
        *,
        what: str,
        cap: int | None = None,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> Answer:
        answer: Answer | None = None
        for attempt in range(2):
            sent = {**(headers or {}), "Authorization": f"Bearer {self.token()}"}
            answer = self._call(method, url, what=what, cap=cap, headers=sent, json_body=json_body)
            if answer.status_code == 401 and attempt == 0:
                self.forget_token()  # expired, or the server restarted with new MAC keys: log in again
                continue
            break
        assert answer is not None
        return answer

    def _call(
        self,
        method: str,
        url: str,
        *,
        what: str,
        cap: int | None = None,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> Answer:
        """Make one request and read its body up to ``cap`` bytes.

        Raises:
            ApiTransportError: The request failed below HTTP.
            AnswerTooLargeError: The announced or received body exceeds the cap.
            AnswerFormatError: The server compressed the body although we asked it not to.
        """
        limit = self.answer_max_bytes if cap is None else cap
        # Identity encoding: a compressed body would be capped only after inflating it (a zip bomb).
        sent = {**(headers or {}), "Accept-Encoding": "identity"}
        try:
            with self.client.stream(method, url, headers=sent, json=json_body) as response:
                encoding = response.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise AnswerFormatError(f"{what} answer is {encoding}-encoded; identity was asked for")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise AnswerTooLargeError(f"{what} answer announces {declared} bytes, over {limit}")
                body = bytearray()
                # Content-Encoding is identity (checked above), so iter_bytes is the raw body, in chunks.
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise AnswerTooLargeError(f"{what} answer is over its {limit}-byte cap")
                return Answer(response.status_code, response.headers, bytes(body))
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise ApiTransportError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _expect_status(answer: Answer, what: str, *expected: int) -> None:
    if answer.status_code not in expected:
        snippet = answer.body[:200].decode("utf-8", "replace")
        raise HttpStatusError(
            f"{what} answered {answer.status_code}: {snippet}", status_code=answer.status_code
        )


def _parse(answer: Answer, what: str, from_dict: Callable[[Any], _Doc]) -> _Doc:
    """Decode a capped JSON body and validate it with a document's ``from_dict``.

    Raises:
        AnswerFormatError: Not UTF-8 JSON, or not the document (wrong type, missing or unknown key).
    """
    try:
        raw = json.loads(answer.body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AnswerFormatError(f"{what} answer is not JSON: {answer.body[:80]!r}") from exc
    try:
        return from_dict(raw)
    except (OtaError, KeyError, TypeError, ValueError) as exc:
        # from_dict raises DocumentFormatError; the others cover a key helper it calls on bad input.
        raise AnswerFormatError(f"{what} answer refused: {exc}") from exc


def _is_replay(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(document, dict) and "replay" in str(document.get("error", "")).lower()


def _header_float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    # NaN and infinities are not intervals; clamp_poll_interval treats None as "use the default".
    return number if number is not None and number == number and abs(number) != float("inf") else None
