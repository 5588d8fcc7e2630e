"""A model version's OTA history, read from the OTA server for promotion: did its rollout abort?

The release pipeline tags each released version with ``edgefleet.release.{id,rollout_id,server}``. Promotion
(``registry.promotion``) asks here for the state of that rollout, so that a version whose rollout aborted
on its own (devices failed its health check) is not promoted again without ``--force --reason``.

The HTTP call is a small local function for now: ``ota/client/`` (the operator CLI's client over the API)
is being written beside this; :func:`read_rollout` should become a call to it when it lands. Every failure
is a :class:`~registry.errors.RegistryError` naming the server and the cause; answers are capped and
parsed here only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Protocol

import httpx

from registry.errors import RegistryError

RELEASE_PREFIX = "edgefleet.release."
ROLLOUT_ID_TAG = f"{RELEASE_PREFIX}rollout_id"
SERVER_TAG = f"{RELEASE_PREFIX}server"
#: Rollout states that mean the release was taken back: by the failure rule or by an operator.
WITHDRAWN_STATES = frozenset({"aborted", "rolled-back"})
MAX_ANSWER_BYTES = 256 * 1024


@dataclass(frozen=True)
class RolloutRecord:
    """What the OTA server says about one rollout."""

    rollout_id: str
    state: str
    reason: str | None

    @property
    def withdrawn(self) -> bool:
        """True when the rollout was aborted or rolled back."""
        return self.state in WITHDRAWN_STATES


class RolloutReader(Protocol):
    """Reads a rollout's state from an OTA server (a fake in tests)."""

    def __call__(self, server: str, rollout_id: str) -> RolloutRecord:
        """Return the rollout's record.

        Raises:
            RegistryError: The server cannot be asked or does not know the rollout.
        """
        ...


def read_rollout(
    server: str, rollout_id: str, *, token: str, client: httpx.Client | None = None
) -> RolloutRecord:
    """``GET {server}/v1/rollouts/{rollout_id}`` with an operator token (read scope).

    Args:
        server: Base URL of the OTA server.
        rollout_id: The rollout to read.
        token: An operator token.
        client: An HTTP client (tests pass one with a mock transport).

    Returns:
        The rollout's state and reason.

    Raises:
        RegistryError: The call failed, the server answered an error, or the answer is not a rollout.
    """
    url = f"{server.rstrip('/')}/v1/rollouts/{rollout_id}"
    own = client is None
    http = client or httpx.Client(timeout=10.0)
    try:
        with http.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as answer:
            body = bytearray()
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise RegistryError(
                        f"rollout {rollout_id}: {server} answered over {MAX_ANSWER_BYTES} bytes"
                    )
            status = answer.status_code
    except httpx.HTTPError as exc:
        raise RegistryError(
            f"cannot read rollout {rollout_id} from {server}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if own:
            http.close()
    try:
        document = json.loads(bytes(body))
    except ValueError as exc:
        raise RegistryError(f"rollout {rollout_id}: {server} answered HTTP {status}, not JSON") from exc
    if status != 200:
        message = document.get("error") or document.get("detail") if isinstance(document, dict) else None
        raise RegistryError(f"rollout {rollout_id}: {server} answered HTTP {status}: {message or document}")
    if not isinstance(document, dict) or not isinstance(document.get("state"), str):
        raise RegistryError(f"rollout {rollout_id}: {server}'s answer is not a rollout")
    reason = document.get("reason")
    return RolloutRecord(
        str(document.get("id", rollout_id)), document["state"], str(reason) if reason else None
    )


def reader_from_env() -> RolloutReader | None:
    """A reader using ``EDGEFLEET_OPERATOR_TOKEN`` (and ``EDGEFLEET_SERVER`` over the version's server tag).

    Returns:
        None without an operator token: the OTA history cannot be checked, and promotion says so.
    """
    token = os.environ.get("EDGEFLEET_OPERATOR_TOKEN")
    if not token:
        return None
    override = os.environ.get("EDGEFLEET_SERVER")

    def read(server: str, rollout_id: str) -> RolloutRecord:
        return read_rollout(override or server, rollout_id, token=token)

    return read
