"""Lineage facts recorded on every model version: code, config and data identity.

Nothing here talks to MLflow; ``registry.store`` writes these as model-version tags.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Lineage:
    """Where a model version came from.

    ``init_from`` is the parent of a fine-tune, resolved to ``models:/NAME/VERSION``; empty (and then not
    written as a tag) for a version trained from random weights. ``teacher_weights_sha256`` names a
    pretrained teacher file; ``device``, ``gpu_name`` and ``precision`` say where training ran.
    """

    git_commit: str
    git_dirty: bool
    data_fingerprint: str
    config_hash: str
    pipeline_run_id: str
    teacher_model_id: str
    init_from: str = ""
    teacher_arch: str = ""
    student_arch: str = ""
    teacher_weights_sha256: str = ""
    device: str = ""
    gpu_name: str = ""
    precision: str = ""

    def as_tags(self) -> dict[str, str]:
        """Model-version tags, under the ``edgefleet.lineage.`` prefix (optional facts only when set)."""
        optional = {"init_from", "teacher_arch", "student_arch", "teacher_weights_sha256"}
        optional |= {"device", "gpu_name", "precision"}
        return {
            f"edgefleet.lineage.{key}": str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in asdict(self).items()
            if not (key in optional and not value)
        }


def git_state(root: Path | None = None) -> tuple[str, bool]:
    """The current commit and whether the work tree has uncommitted changes.

    Returns ``("unknown", True)`` outside a git checkout, so lineage never blocks a run; the dirty flag
    then says honestly that the code is not pinned.
    """
    cwd = root or Path.cwd()
    git = shutil.which("git")
    if git is None:
        return "unknown", True
    try:
        commit = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", True
    return commit, bool(status.strip())


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a configuration (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
