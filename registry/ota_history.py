"""A model version's OTA history, read from the OTA server for promotion: did its rollout abort?

The release pipeline tags each released version with ``edgefleet.release.{id,rollout_id,server}``. Promotion
(``registry.promotion``) asks here for the state of that rollout, so that a version whose rollout aborted
on its own (devices failed its health check) is not promoted again without ``--force --reason``.

The HTTP call goes through the operator client (``ota.client.api.OperatorClient``), which caps and parses
the answer; every failure becomes a :class:`~registry.errors.RegistryError` naming the server and the
cause.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import httpx

from ota.client.api import OperatorClient
from ota.client.errors import ApiError, ClientError, ResponseError
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
    server: str, rollout_id: str, *, token: str, transport: httpx.BaseTransport | None = None
) -> RolloutRecord:
    """``GET {server}/v1/rollouts/{rollout_id}`` with an operator token (read scope).

    Args:
        server: Base URL of the OTA server.
        rollout_id: The rollout to read.
        token: An operator token.
        transport: The HTTP transport (tests pass a mock one); a real connection by default.

    Returns:
        The rollout's state and reason.

    Raises:
        RegistryError: The call failed, the server answered an error, or the answer is not a rollout.
    """
    try:
        with OperatorClient(
            base_url=server, token=token, timeout_s=10.0, max_body_bytes=MAX_ANSWER_BYTES, transport=transport
        ) as api:
            rollout = api.rollout(rollout_id)
    except ApiError as exc:
        raise RegistryError(f"rollout {rollout_id}: {server} answered HTTP {exc.status}: {exc.said}") from exc
    except ResponseError as exc:
        raise RegistryError(f"rollout {rollout_id}: {server}'s answer is not a rollout: {exc}") from exc
    except ClientError as exc:
        raise RegistryError(f"cannot read rollout {rollout_id} from {server}: {exc}") from exc
    return RolloutRecord(rollout.id, rollout.state, rollout.reason or None)


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
