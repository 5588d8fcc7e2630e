"""Step: publish every fetched artifact to the OTA server through its HTTP API, with its provenance.

The release records ``models:/NAME/VERSION?run_id=…&data_fingerprint=…`` as its source (see
``registry.trace``) and the run id and data fingerprint as its own fields too. Each profile's self-test
vectors (from ``build_selftest_vectors``) travel in the same publish: the server signs them as their own
TUF target named by the model target's ``selftest`` custom field, which the edge agent's health check
downloads. Publishing is idempotent on the server, so a re-run answers ``created: false``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.logger import get_logger

from ota.client.api import OperatorClient
from ota.client.config import operator_token_from_env, server_url_from_env
from registry.fetch import VersionFacts
from registry.trace import release_source_uri
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
    """PUT each artifact (with its profile's self-test vectors) to ``/v1/releases``.

    Returns:
        Per profile: release id, created flag, delta count, length, source and the vectors target.

    Raises:
        ClientError: The server refused or is unreachable (ota.client.errors).
        OSError: An artifact or vectors file cannot be read.
    """
    published: list[dict[str, Any]] = []
    server = server_url_from_env(config.server_url)
    with OperatorClient(base_url=server, token=operator_token_from_env()) as api:
        for model in models:
            vectors_path = vectors.get(model["profile"])
            answer = api.publish_release(
                Path(model["onnx_path"]),
                model=model["name"],
                version=model["version"],
                profile=model["profile"],
                source_uri=source_uri_of(model),
                selftest=Path(vectors_path) if vectors_path else None,
                mlflow_run_id=model.get("run_id"),
                data_fingerprint=model.get("data_fingerprint"),
            )
            release = answer.release
            logger.info(
                "%s v%s → release %s (%s, %d delta(s))",
                model["name"],
                model["version"],
                release.id,
                "new" if answer.created else "already published",
                len(answer.deltas),
            )
            published.append(
                {
                    "profile": model["profile"],
                    "release_id": release.id,
                    "created": answer.created,
                    "deltas": len(answer.deltas),
                    "length": release.length,
                    "source_uri": release.source_uri,
                    "vectors": vectors.get(model["profile"], ""),
                    "selftest_target": release.selftest_target or "",
                }
            )
    log_metadata({"releases": {r["profile"]: r["release_id"] for r in published}})
    return published
