"""Library loggers stay at WARNING unless asked: one switch for the demo, the CLIs and the fleet's workers.

httpx logs every request at INFO (``HTTP Request: GET ...``); with a root logger at INFO (ZenML sets one on
import) a fleet of simulated agents prints thousands of such lines between the useful output. The
libraries listed here are kept at WARNING; ``-v`` on a command or ``EDGEFLEET_LOG_LEVEL=INFO`` (or
``DEBUG``) in the environment lets them through. The environment variable is what reaches spawned
worker processes.
"""

from __future__ import annotations

import logging
import os

LOG_LEVEL_ENV = "EDGEFLEET_LOG_LEVEL"

LIBRARY_LOGGERS: tuple[str, ...] = (
    "httpx",
    "httpcore",
    "urllib3",
    "requests",
    "alembic",
    "botocore",
    "boto3",
    "s3transfer",
    "filelock",
    "matplotlib",
    "PIL",
    "multipart",
    "asyncio",
)
"""Loggers of libraries we call; our own (``ota``, ``registry``, ...) and the frameworks' keep their level."""


def library_log_level(*, verbose: bool = False) -> int:
    """The level for library loggers: ``DEBUG`` with ``verbose``, else ``$EDGEFLEET_LOG_LEVEL``, else WARNING.

    An unknown ``EDGEFLEET_LOG_LEVEL`` (``"loud"``) counts as unset rather than failing a run over logging.
    """
    if verbose:
        return logging.DEBUG
    asked = logging.getLevelName(os.environ.get(LOG_LEVEL_ENV, "").strip().upper() or "WARNING")
    return asked if isinstance(asked, int) else logging.WARNING


def quiet_library_loggers(*, verbose: bool = False) -> int:
    """Set every logger of :data:`LIBRARY_LOGGERS` to :func:`library_log_level` and return that level."""
    level = library_log_level(verbose=verbose)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    return level
