"""Step: publish every fetched artifact to the OTA server through its HTTP API, with its provenance.

The release records ``models:/NAME/VERSION?run_id=…&data_fingerprint=…`` as its source (see
``registry.trace``). Publishing is idempotent on the server, so a re-run answers ``created: false``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.logger import get_logger

from registry.fetch import VersionFacts
from registry.trace import OtaApi, operator_token_from_env, release_source_uri, server_url_from_env
from steps.release_config import ReleasePipelineConfig

logger = get_logger(__name__)


def source_uri_of(model: dict[str, Any]) -> str:
    """The provenance URI of one fetched model (as ``fetch_release_models`` describes it)."""
    facts = VersionFacts(
        name=model["name"],
        version=model["version"],
        model_uri=model["model_uri"],
        run_id=model["run_id"],
        model_id=None,
        profile=model["profile"],
        sha256=model["sha256"],
        aliases=(),
        lineage={"data_fingerprint": model["data_fingerprint"]},
    )
    return release_source_uri(facts)


@step(enable_cache=False)
def publish_releases(
    models: list[dict[str, Any]], vectors: dict[str, str], config: ReleasePipelineConfig
) -> Annotated[list[dict[str, Any]], "releases"]:
    """PUT each artifact to ``/v1/releases``; returns release id, created flag and delta count per profile."""
    published: list[dict[str, Any]] = []
    with OtaApi(base_url=server_url_from_env(config.server_url), token=operator_token_from_env()) as api:
        for model in models:
            answer = api.publish_release(
                Path(model["onnx_path"]).read_bytes(),
                model=model["name"],
                version=model["version"],
                profile=model["profile"],
                source_uri=source_uri_of(model),
            )
            release = answer["release"]
            logger.info(
                "%s v%s → release %s (%s, %d delta(s))",
                model["name"],
                model["version"],
                release["id"],
                "new" if answer["created"] else "already published",
                len(answer["deltas"]),
            )
            published.append(
                {
                    "profile": model["profile"],
                    "release_id": release["id"],
                    "created": bool(answer["created"]),
                    "deltas": len(answer["deltas"]),
                    "length": int(release["length"]),
                    "source_uri": release["source_uri"],
                    "vectors": vectors.get(model["profile"], ""),
                }
            )
    log_metadata({"releases": {r["profile"]: r["release_id"] for r in published}})
    return published
