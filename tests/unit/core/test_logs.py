"""Library loggers stay at WARNING unless asked (issue 14, 6: `make run` printed ~2,000 httpx lines)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ota.core.logs import LIBRARY_LOGGERS, LOG_LEVEL_ENV, library_log_level, quiet_library_loggers

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("env", "verbose", "expected"),
    [
        (None, False, logging.WARNING),
        ("info", False, logging.INFO),
        ("DEBUG", False, logging.DEBUG),
        ("loud", False, logging.WARNING),  # unknown: the default, not a failed run
        (None, True, logging.DEBUG),
    ],
)
def test_library_level(
    monkeypatch: pytest.MonkeyPatch, env: str | None, verbose: bool, expected: int
) -> None:
    if env is None:
        monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    else:
        monkeypatch.setenv(LOG_LEVEL_ENV, env)
    assert library_log_level(verbose=verbose) == expected


def test_quiet_sets_every_library_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    saved = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    try:
        quiet_library_loggers()
        assert {logging.getLogger(name).level for name in LIBRARY_LOGGERS} == {logging.WARNING}
        assert {"httpx", "httpcore", "urllib3", "alembic"} <= set(LIBRARY_LOGGERS)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


# What the demo does before its fleet runs, under a root logger at INFO as ZenML leaves it; the fleet's
# spawned workers import the demo module and call the same function, so the probe also checks that
# importing the demo configures nothing.
DEMO_PROBE = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
os.environ.pop("EDGEFLEET_LOG_LEVEL", None)
import pipelines.demo
assert "zenml" not in sys.modules, "importing the demo must not start ZenML (its workers re-import it)"
assert "ZENML_CONFIG_PATH" not in os.environ, "importing the demo must not change the environment"
from ota.edge import fleet
fleet.quiet_library_loggers()
logging.getLogger("httpx").info("HTTP Request: GET http://x/ 200 OK")
print("httpx level", logging.getLevelName(logging.getLogger("httpx").getEffectiveLevel()))
"""


def test_the_demo_and_its_fleet_workers_keep_httpx_at_warning() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (LOG_LEVEL_ENV, "ZENML_CONFIG_PATH")}
    result = subprocess.run(
        [sys.executable, "-c", DEMO_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HTTP Request" not in result.stdout + result.stderr
    assert "httpx level WARNING" in result.stdout
