"""Step: fetch the torch weights of the version ``init_from`` names, for a fine-tune instead of a fresh start.

Never cached: ``models:/NAME@production`` names another version as soon as the alias moves. The output is
a folder (``ml.warmstart`` files plus ``origin.json``) that the training steps rebuild the modules from.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from ml.warmstart import load_warm_start, write_origin
from registry.fetch import fetch_weights
from steps._runtime import ensure_tracking_uri

logger = get_logger(__name__)


@step(enable_cache=False)
def fetch_init_weights(init_from: str) -> Annotated[Path, "init_weights"]:
    """Download the teacher and student weights behind ``init_from`` and check that they load.

    Raises:
        RegistryError: Malformed URI, unknown model/version/alias, or a version without stored weights
            (``WeightsNotFoundError``); the message names the URI.
        WarmStartError: The stored files are corrupt or inconsistent.
    """
    tracking_uri = ensure_tracking_uri()
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-init-"))
    fetched = fetch_weights(init_from, folder, tracking_uri=tracking_uri)
    write_origin(
        folder,
        requested=init_from,
        source=fetched.facts.model_uri,
        teacher_model_id=fetched.teacher_model_id,
    )
    warm = load_warm_start(folder)  # fails here, clearly, rather than halfway through training
    card = warm.student.card
    logger.info(
        "fine-tuning from %s (%s): student %s (%s), ships %s; teacher %s",
        fetched.facts.model_uri,
        init_from,
        card.variant,
        f"widths {list(card.spec.widths)}" if card.spec is not None else card.arch,
        card.deployed_variant,
        fetched.teacher_model_id,
    )
    log_metadata({"init_from": fetched.facts.model_uri, "requested": init_from})
    return folder
