"""The rollout policy's safe defaults, one owner for the server (API, CLI, settings) and the release
pipeline (``steps.release_config``): a rollout that leaves a field out gets the same value either way.

Base install only (no server code), so the operator client and the pipeline steps can read them.
"""

from __future__ import annotations

DEFAULT_PERCENTS: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
DEFAULT_MIN_SOAK_SECONDS = 60
DEFAULT_MIN_REPORTS = 1
DEFAULT_MIN_SUCCESS_RATIO = 0.5
DEFAULT_FAILURE_THRESHOLD = 0.1
DEFAULT_MIN_REPORTS_FOR_ABORT = 5
