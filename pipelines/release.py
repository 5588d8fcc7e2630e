"""The release pipeline: ``models:/NAME@production`` → self-test vectors → OTA release → staged rollout.

Run it as users do (server URL from config or ``$EDGEFLEET_SERVER_URL``, operator token from
``$EDGEFLEET_OPERATOR_TOKEN``)::

    zenml pipeline run pipelines.release.release_pipeline -c configs/release.yaml

Wiring only; parameters come from the YAML's ``parameters.config`` block
(``steps.release_config.ReleasePipelineConfig``).

Optional trigger, MLflow webhooks (documented, not wired): MLflow 3.3+ on a SQL backend can POST a
signed ``model_version_alias.created`` event to a URL whenever an alias is set::

    from mlflow import MlflowClient

    MlflowClient("http://mlflow.example.com").create_webhook(
        name="edgefleet-release",
        url="https://ci.example.com/hooks/edgefleet-release",
        events=["model_version_alias.created"],
        secret="…",  # HMAC-SHA256 key; the receiver checks the X-MLflow-Signature header
    )

The receiver verifies the signature (``X-MLflow-Signature`` over ``X-MLflow-Delivery-Id``,
``X-MLflow-Timestamp`` and the body), keeps only ``data.alias == "production"`` and runs this pipeline.
MLflow marks webhooks experimental and delivers them from the tracking *server* process only; the
embedded SQLite store of the demo has no server to send them, so EdgeFleet documents the hook rather
than depending on it (and ``edgefleet models promote`` followed by this pipeline does the same by hand).
"""

from __future__ import annotations

from pipelines.paths import require_project_store

# `zenml pipeline run` has loaded ZenML before this module: if no store was chosen it is the home folder's,
# so stop here with one line that says what to run (see README, "What the two commands do").
require_project_store()

from zenml import pipeline  # noqa: E402

from steps.release_config import ReleasePipelineConfig  # noqa: E402
from steps.release_fetch import fetch_release_models  # noqa: E402
from steps.release_publish import publish_releases  # noqa: E402
from steps.release_rollout import start_rollouts  # noqa: E402
from steps.release_tag import tag_released_versions  # noqa: E402
from steps.release_vectors import build_selftest_vectors  # noqa: E402


@pipeline(enable_cache=False)
def release_pipeline(config: ReleasePipelineConfig = ReleasePipelineConfig()) -> None:  # noqa: B008
    """Fetch production versions, build self-test vectors, publish, roll out and tag the versions."""
    models = fetch_release_models(config)
    vectors = build_selftest_vectors(models, config)
    releases = publish_releases(models, vectors, config)
    rollouts = start_rollouts(releases, config)
    tag_released_versions(models, releases, rollouts, config)
