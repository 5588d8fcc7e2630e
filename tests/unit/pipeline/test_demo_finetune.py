"""The demo's second version: the fine-tune config it derives and the field data it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.config import TrainingPipelineConfig
from ml.data import load_npz, load_splits
from pipelines.demo_config import make_field_data, retrain_config

TRAINING: dict[str, Any] = {
    "model": {"name": "x"},
    "parameters": {
        "config": {
            "model_name": "x",
            "data": {"source": "digits", "seed": 4},
            "teacher": {"epochs": 20, "lr": 0.002, "patience": 6},
            "student": {"ablation": True, "train": {"epochs": 30, "lr": 0.003, "patience": 10}},
            "prune": {"fine_tune": {"epochs": 1, "patience": 1}},
        }
    },
}


def test_retrain_config_is_a_short_slow_fine_tune_on_added_data(tmp_path: Path) -> None:
    field = tmp_path / "field.npz"
    config = retrain_config(
        TRAINING, init_from="models:/x-p@production", field_data=field, epoch_fraction=0.2, lr_factor=0.03
    )["parameters"]["config"]
    assert config["init_from"] == "models:/x-p@production"
    assert config["init_teacher"] == "reuse"
    # same source and seed: validation and test stay the first version's; the field data joins training
    assert config["data"] == {"source": "digits", "seed": 4, "extra_train": [str(field)]}
    assert config["teacher"] == {"epochs": 4, "lr": 6e-05, "patience": 4}
    assert config["student"]["train"] == {"epochs": 6, "lr": 9e-05, "patience": 6}
    assert config["student"]["ablation"] is False
    assert config["prune"]["fine_tune"]["epochs"] == 1  # never below one epoch
    assert TRAINING["parameters"]["config"]["data"] == {"source": "digits", "seed": 4}  # input unchanged
    TrainingPipelineConfig.model_validate(config)  # and the pipeline accepts it


def test_field_data_is_deterministic_and_only_adds_training_samples(tmp_path: Path) -> None:
    a = make_field_data(TRAINING, tmp_path / "a.npz", count=100)
    b = make_field_data(TRAINING, tmp_path / "b.npz", count=100)
    np.testing.assert_array_equal(load_npz(a)[0], load_npz(b)[0])
    base = load_splits("digits", seed=4)
    grown = load_splits("digits", seed=4, extra_train=[str(a)])
    assert grown.fingerprint != base.fingerprint
    assert len(grown.y_train) == len(base.y_train) + 100
    np.testing.assert_array_equal(grown.y_test, base.y_test)
