"""The names EdgeFleet gives its MLflow tags and aliases, and the two tag families read back as numbers.

Pure (no MLflow import): the promotion policy (``registry.policy``) and the in-memory registry
(``registry.memory``) read versions through these as ``registry.store`` does.
"""

from __future__ import annotations

from collections.abc import Mapping

TAG_PREFIX = "edgefleet."
CONTENT_HASH_TAG = "edgefleet.content_hash"
PROFILE_TAG = "edgefleet.profile"
VARIANT_TAG = "edgefleet.variant"
SHA256_TAG = "edgefleet.sha256"
WEIGHTS_TAG = "edgefleet.torch_weights"
"""Set on versions (and teacher LoggedModels) that store torch weights; the value is their artifact folder."""
WEIGHTS_DIR = "torch"
CANDIDATE_ALIAS = "candidate"
METRIC_PREFIX = "edgefleet.metric."
GATE_PREFIX = "edgefleet.gate."
MODEL_FILE = "model.onnx"


def metrics_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """The metrics recorded on a version (its ``edgefleet.metric.*`` tags)."""
    return {k[len(METRIC_PREFIX) :]: float(v) for k, v in tags.items() if k.startswith(METRIC_PREFIX)}


def gates_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """The gate limits recorded on a version at registration (its ``edgefleet.gate.*`` tags).

    A tag whose value is not a number is skipped: ``GateProfile.from_config`` then reports the profile as
    incomplete rather than this helper crashing on a hand-edited tag.
    """
    gates: dict[str, float] = {}
    for key, value in tags.items():
        if not key.startswith(GATE_PREFIX):
            continue
        try:
            gates[key[len(GATE_PREFIX) :]] = float(value)
        except ValueError:
            continue
    return gates
