"""Step: per target profile, pick the fastest variant passing every gate, or fail the run with the table."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from zenml import step
from zenml.logger import get_logger

from ml.benchmark import BenchmarkResult
from ml.config import ProfileGates
from ml.gates import profiles_from_config, select_variant

logger = get_logger(__name__)
BASELINE = "teacher-torch-eager"


@step
def select_variants(
    benchmark: list[dict[str, Any]],
    teacher_metrics: dict[str, float],
    profiles: dict[str, ProfileGates],
) -> Annotated[dict[str, dict[str, Any]], "selections"]:
    """Gates per profile; raises ``GateError`` (message: variant × gate table) if a profile has no winner.

    The torch-eager teacher is the baseline and never ships, so it is not a candidate.
    """
    results = [BenchmarkResult(**{**row, "latencies_ms": ()}) for row in benchmark if row["name"] != BASELINE]
    selections: dict[str, dict[str, Any]] = {}
    for profile in profiles_from_config(profiles):
        chosen = select_variant(profile, results, teacher_metrics["test_accuracy"])
        logger.info("profile %s ships %s (%s)\n%s", profile.name, chosen.variant, chosen.reason, chosen.table)
        selections[profile.name] = asdict(chosen)
    return selections
