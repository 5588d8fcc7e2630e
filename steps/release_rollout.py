"""Step: start one staged rollout per published release, with the phases and abort rule from config."""

from __future__ import annotations

from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.logger import get_logger

from ota.client.api import OperatorClient
from ota.client.config import operator_token_from_env, server_url_from_env
from steps.release_config import ReleasePipelineConfig

logger = get_logger(__name__)


def rollout_body(release_id: str, config: ReleasePipelineConfig) -> dict[str, Any]:
    """The ``POST /v1/rollouts`` body for ``release_id`` (the server's ``RolloutCreate``)."""
    plan = config.rollout
    return {
        "release_id": release_id,
        "group": plan.group,
        "tags": list(plan.tags),
        "phases": [phase.model_dump(exclude_none=True) for phase in plan.phases],
        "failure_threshold": plan.failure_threshold,
        "min_reports_for_abort": plan.min_reports_for_abort,
        "abort_action": plan.abort_action,
        "progress_timeout": plan.progress_timeout,
    }


@step(enable_cache=False)
def start_rollouts(
    releases: list[dict[str, Any]], config: ReleasePipelineConfig
) -> Annotated[list[dict[str, Any]], "rollouts"]:
    """Start a rollout of each release (none when ``start_rollout`` is false); returns id and state."""
    if not config.start_rollout:
        return []
    started: list[dict[str, Any]] = []
    server = server_url_from_env(config.server_url)
    with OperatorClient(base_url=server, token=operator_token_from_env()) as api:
        for release in releases:
            rollout = api.start_rollout(rollout_body(release["release_id"], config))
            logger.info("rollout %s of %s: %s", rollout.id, release["release_id"], rollout.state)
            started.append(
                {
                    "profile": release["profile"],
                    "rollout_id": rollout.id,
                    "release_id": release["release_id"],
                }
            )
    log_metadata({"rollouts": {r["profile"]: r["rollout_id"] for r in started}})
    return started
