"""Step: write the release and rollout ids back to each model version as ``edgefleet.release.*`` tags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import step

from ml.files import file_sha256
from ota.client.config import server_url_from_env
from registry.fetch import RELEASE_PREFIX, tag_version
from steps._runtime import ensure_tracking_uri
from steps.release_config import ReleasePipelineConfig


@step(enable_cache=False)
def tag_released_versions(
    models: list[dict[str, Any]],
    releases: list[dict[str, Any]],
    rollouts: list[dict[str, Any]],
    config: ReleasePipelineConfig,
) -> Annotated[dict[str, dict[str, str]], "release_tags"]:
    """Tag ``edgefleet.release.{id,rollout_id,server,selftest_sha256}`` on every released version."""
    tracking_uri = ensure_tracking_uri()
    by_profile_release = {r["profile"]: r for r in releases}
    by_profile_rollout = {r["profile"]: r for r in rollouts}
    written: dict[str, dict[str, str]] = {}
    for model in models:
        release = by_profile_release[model["profile"]]
        tags = {
            f"{RELEASE_PREFIX}id": release["release_id"],
            f"{RELEASE_PREFIX}server": server_url_from_env(config.server_url),
        }
        rollout = by_profile_rollout.get(model["profile"])
        if rollout is not None:
            tags[f"{RELEASE_PREFIX}rollout_id"] = rollout["rollout_id"]
        if release.get("vectors"):
            tags[f"{RELEASE_PREFIX}selftest_sha256"] = file_sha256(Path(release["vectors"]))
        tag_version(model["name"], model["version"], tags, tracking_uri=tracking_uri)
        written[model["profile"]] = tags
    return written
