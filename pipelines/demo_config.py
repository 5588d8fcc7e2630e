"""The demo's configs: reading the pipeline YAMLs and deriving the fine-tune's (``make run``, phase 5).

The second version is a short, slow fine-tune of production with simulated field data (``ml.field``) added
to its training split; :func:`retrain_config` derives its YAML from the first version's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ml.files import write_atomic


class ConfigError(RuntimeError):
    """A pipeline YAML the demo reads is missing or is not a mapping."""


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a pipeline YAML file.

    Raises:
        ConfigError: Missing file or not a mapping.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a YAML mapping")
    return data


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def write_yaml(data: dict[str, Any], folder: Path, name: str) -> Path:
    """Write a derived config beside the demo state (atomically) and return its path."""
    return write_atomic(folder / name, yaml.safe_dump(data, sort_keys=False).encode())


def _fine_tune_settings(section: Any, epoch_fraction: float, lr_factor: float) -> Any:
    """Every optimiser block (a mapping with ``epochs``) shortened and slowed down, recursively."""
    if not isinstance(section, dict):
        return section
    changed = {key: _fine_tune_settings(value, epoch_fraction, lr_factor) for key, value in section.items()}
    if isinstance(changed.get("epochs"), int):
        changed["epochs"] = max(1, round(changed["epochs"] * epoch_fraction))
        if isinstance(changed.get("patience"), int):
            changed["patience"] = min(changed["patience"], changed["epochs"])
        if isinstance(changed.get("lr"), int | float):
            changed["lr"] = float(f"{changed['lr'] * lr_factor:.3g}")
    return changed


def retrain_config(
    training: dict[str, Any],
    *,
    init_from: str,
    field_data: Path,
    epoch_fraction: float,
    lr_factor: float,
) -> dict[str, Any]:
    """The second version's training YAML: a short, slow fine-tune of ``init_from`` with field data added.

    The parent's teacher is reused as it is. Every optimiser block gets ``epoch_fraction`` of its epochs and
    ``lr_factor`` times its learning rate (the student's is the one that trains);
    ``field_data`` joins the training split only (validation and test stay the first version's); the KD
    ablation is skipped. Pruning settings stay but are not applied: ``init_from`` keeps the parent's
    pruned architecture.
    """
    params = training["parameters"]["config"]
    data = dict(params.get("data") or {})
    data["extra_train"] = [*(data.get("extra_train") or []), str(field_data)]
    changed = _merge(
        _fine_tune_settings(params, epoch_fraction, lr_factor),
        {"init_from": init_from, "init_teacher": "reuse", "data": data, "student": {"ablation": False}},
    )
    return {**training, "parameters": {"config": changed}}


def make_field_data(training: dict[str, Any], destination: Path, *, count: int) -> Path:
    """Write the simulated field data set (``ml.field``) for the training config's data source.

    Only rows of the training split the config's seed and fractions make are used, so no validation or
    test image reaches the fine-tune.

    Raises:
        DataError: The source cannot be loaded or split.
    """
    from ml.config import DataConfig
    from ml.field import make_field_set, write_npz

    data = DataConfig.model_validate(training["parameters"]["config"].get("data") or {})
    arrays = make_field_set(
        data.source,
        count=count,
        seed=data.seed + 1,
        split_seed=data.seed,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
    )
    return write_npz(destination, arrays)
