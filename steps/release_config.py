"""Parameters of the release pipeline (``configs/release*.yaml`` → ``parameters.config``), validated.

Lives beside the release steps that read it. The server URL may be set here or in
``$EDGEFLEET_SERVER`` (or the older ``$EDGEFLEET_SERVER_URL``); the operator token is read from
``$EDGEFLEET_OPERATOR_TOKEN`` only, so no secret is ever committed in a YAML file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ml.config import DataConfig
from ota.core.rollout_defaults import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_MIN_REPORTS_FOR_ABORT,
    DEFAULT_PERCENTS,
)
from registry.release_inputs import VectorsSpec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VectorsConfig(_Section):
    """How the self-test vectors the agent's health check runs are built from held-out (test) data."""

    count: int = Field(32, ge=1, le=4096)
    # Absolute logit tolerance: INT8 kernels differ a little between ISAs (VNNI vs AVX2 vs NEON).
    tolerance: float = Field(0.05, gt=0)
    min_top1_agreement: float = Field(1.0, ge=0, le=1)
    latency_budget_ms: float | None = Field(None, gt=0)

    def spec(self) -> VectorsSpec:
        """These settings as ``registry.release_inputs`` takes them."""
        return VectorsSpec(
            count=self.count,
            tolerance=self.tolerance,
            min_top1_agreement=self.min_top1_agreement,
            latency_budget_ms=self.latency_budget_ms,
        )


class PhaseConfig(_Section):
    """One rollout phase (the server's ``PhaseModel``); a field left out takes the server's safe default."""

    percent: float = Field(gt=0, le=100)
    min_soak_seconds: int | None = Field(None, ge=0)
    min_reports: int | None = Field(None, ge=1)
    min_success_ratio: float | None = Field(None, ge=0, le=1)


class RolloutConfig(_Section):
    """Phases and the automatic abort rule of the rollout the pipeline starts."""

    # The defaults are the server's (one owner: ota.core.rollout_defaults), so a config that leaves them
    # out gets the rollout an operator's `edgefleet rollout start` would.
    phases: list[PhaseConfig] = Field(
        default_factory=lambda: [PhaseConfig(percent=p) for p in DEFAULT_PERCENTS],
        min_length=1,
    )
    failure_threshold: float = Field(DEFAULT_FAILURE_THRESHOLD, ge=0, le=1)
    min_reports_for_abort: int = Field(DEFAULT_MIN_REPORTS_FOR_ABORT, ge=1)
    abort_action: Literal["abort", "pause"] = "abort"
    progress_timeout: int = Field(3600, ge=1)
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class ReleasePipelineConfig(_Section):
    """Everything the release pipeline needs: which versions, which data, which server, which rollout."""

    model_name: str = "edgefleet-digits"
    profiles: list[str] = Field(default_factory=lambda: ["cpu-int8-small"], min_length=1)
    alias: str = "production"
    data: DataConfig = DataConfig()
    vectors: VectorsConfig = VectorsConfig()
    rollout: RolloutConfig = RolloutConfig()
    server_url: str | None = None
    start_rollout: bool = True
