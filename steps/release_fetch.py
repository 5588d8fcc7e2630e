"""Step: fetch ``models:/NAME@ALIAS`` (production) of every configured profile, ONNX file and facts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.logger import get_logger

from registry.fetch import fetch_model
from registry.store import registered_name
from steps._runtime import edgefleet_home, ensure_tracking_uri
from steps.release_config import ReleasePipelineConfig

logger = get_logger(__name__)


@step(enable_cache=False)
def fetch_release_models(config: ReleasePipelineConfig) -> Annotated[list[dict[str, Any]], "release_models"]:
    """Download each profile's ``@alias`` version and check its bytes against the registered sha256."""
    tracking_uri = ensure_tracking_uri()
    destination = edgefleet_home() / "release" / "models"
    models: list[dict[str, Any]] = []
    for profile in config.profiles:
        fetched = fetch_model(
            registered_name(config.model_name, profile), config.alias, destination, tracking_uri=tracking_uri
        )
        facts = fetched.facts
        logger.info(
            "%s@%s is version %s (%s)", facts.name, config.alias, facts.version, fetched.onnx_path.name
        )
        models.append(
            {
                "name": facts.name,
                "version": facts.version,
                "profile": profile,
                "model_uri": facts.model_uri,
                "run_id": facts.run_id,
                "data_fingerprint": facts.data_fingerprint,
                "sha256": facts.sha256,
                "onnx_path": str(Path(fetched.onnx_path).resolve()),
            }
        )
    log_metadata({"release_models": {m["profile"]: m["model_uri"] for m in models}})
    return models
