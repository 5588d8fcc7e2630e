"""Step: build the self-test vectors the agent's health check runs (format: ``ota.edge.health``).

The work is ``registry.release_inputs`` (shared with ``edgefleet release publish --model-uri``): the first
held-out test samples, expected logits and top-1 from an ONNX Runtime run of the exact artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import step

from registry.release_inputs import build_vectors, selftest_inputs
from steps._runtime import edgefleet_home
from steps.release_config import ReleasePipelineConfig


@step(enable_cache=False)
def build_selftest_vectors(
    models: list[dict[str, Any]], config: ReleasePipelineConfig
) -> Annotated[dict[str, str], "selftest_vectors"]:
    """One ``.npz`` per profile from the first ``vectors.count`` held-out test samples."""
    inputs = selftest_inputs(config.data, config.vectors.count)
    folder = edgefleet_home() / "release" / "vectors"
    folder.mkdir(parents=True, exist_ok=True)
    spec = config.vectors.spec()
    return {
        m["profile"]: str(
            build_vectors(Path(m["onnx_path"]), inputs, folder / f"{m['name']}-{m['version']}.npz", spec)
        )
        for m in models
    }
