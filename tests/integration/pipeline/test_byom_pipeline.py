"""Bring your own model through the whole pipeline (issue 10): a torchvision ResNet-18 teacher loaded from
a local weights file (made here with ``torch.save``) and used as it is (``teacher.train: false``), distilled
into a torchvision MobileNetV3-small, pruned, quantized, benchmarked, gated and registered in MLflow; then the
three config mistakes the first step must catch, each failing the run there and registering nothing.

Tiny on purpose (3×32×32 synthetic images, 4 classes, one epoch, short benchmarks) so the module stays within
a few minutes on a 2-core CI machine; the point is the wiring and the lineage, not the accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from ml.arch import file_sha256
from ml.device import resolve_runtime

from .conftest import Stack

pytestmark = pytest.mark.slow
MODEL_NAME = "edgefleet-byom-it"
MODEL = f"{MODEL_NAME}-cpu-any"
CLASSES = 4


def _write_data(path: Path) -> Path:
    """4 classes × 32 samples of 3×32×32: each class a brighter quadrant over noise (learnable, tiny)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 64, size=(CLASSES * 32, 3, 32, 32)).astype(np.float32)
    y = np.repeat(np.arange(CLASSES), 32)
    for index, label in enumerate(y):
        row, col = divmod(int(label), 2)
        x[index, :, row * 16 : row * 16 + 16, col * 16 : col * 16 + 16] += 160
    np.savez(path, x=x, y=y, class_names=np.array([f"q{i}" for i in range(CLASSES)]))
    return path


def _document(data: Path, weights: Path) -> dict[str, Any]:
    return {
        "enable_cache": True,
        "settings": {"experiment_tracker": {"experiment_name": "edgefleet-training"}},
        "steps": {"register_models": {"experiment_tracker": "edgefleet_mlflow_tracker"}},
        "model": {"name": MODEL_NAME, "tags": ["edgefleet", "byom"]},
        "parameters": {
            "config": {
                "model_name": MODEL_NAME,
                "device": "auto",
                "precision": "bf16",
                "data": {"source": str(data), "seed": 0, "val_fraction": 0.2, "test_fraction": 0.2},
                "teacher": {
                    "arch": "torchvision:resnet18",
                    "weights": str(weights),
                    "train": False,
                    "feature_layer": "layer3",
                },
                "student": {
                    "arch": "torchvision:mobilenet_v3_small",
                    "feature_layer": "features.9",
                    "ablation": False,
                    "train": {"epochs": 1, "lr": 0.002, "batch_size": 32, "patience": 1, "seed": 0},
                },
                "prune": {
                    "unstructured_sparsity": 0.3,
                    "structured_ratio": 0.25,
                    "multiple_of": 8,
                    "fine_tune": {"epochs": 1, "lr": 0.0005, "batch_size": 32, "patience": 1, "seed": 0},
                },
                "quantize": {
                    "calibration_method": "MinMax",
                    "calibration_size": 16,
                    "per_channel": True,
                    "dynamic": False,
                    "qat": False,
                },
                "benchmark": {
                    "threads": 1,
                    "runs": 20,
                    "warmup": 2,
                    "throughput_batch": 8,
                    "throughput_runs": 2,
                },
                "profiles": {"cpu-any": {"min_accuracy": 0.0, "max_p99_ms": 10000.0}},
            }
        },
    }


def _write_config(folder: Path, name: str, document: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def byom(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One BYOM run on the module's stack; its inputs and the registered candidate."""
    folder = tmp_path_factory.mktemp("byom")
    data = _write_data(folder / "quadrants.npz")
    weights = folder / "teacher.pt"
    torch.manual_seed(0)
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None, num_classes=CLASSES).state_dict(), weights)
    document = _document(data, weights)
    run = stack.run_pipeline(_write_config(folder, "byom", document))
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    version = stack.client.get_model_version_by_alias(MODEL, "candidate")
    return {"folder": folder, "data": data, "weights": weights, "document": document, "version": version}


def test_byom_registers_a_version_whose_lineage_names_teacher_weights_archs_device_and_precision(
    byom: dict[str, Any],
) -> None:
    tags = byom["version"].tags
    assert tags["edgefleet.lineage.teacher_weights_sha256"] == file_sha256(byom["weights"])
    assert tags["edgefleet.lineage.teacher_arch"] == "torchvision:resnet18"
    assert tags["edgefleet.lineage.student_arch"] == "torchvision:mobilenet_v3_small"
    # device auto + bf16 resolves to what this machine has: cpu/fp32 here, cuda:0/bf16 on a GPU machine
    expected = resolve_runtime("auto", "bf16").as_tags()
    assert tags["edgefleet.lineage.device"] == expected["device"]
    assert tags["edgefleet.lineage.precision"] == expected["precision"]
    assert tags["edgefleet.lineage.gpu_name"] == expected["gpu_name"]
    assert tags["edgefleet.variant"].startswith("student"), tags["edgefleet.variant"]
    assert float(tags["edgefleet.metric.size_kb"]) > 0


def _break(document: dict[str, Any], section: str, key: str, value: Any) -> dict[str, Any]:
    broken = yaml.safe_load(yaml.safe_dump(document))
    broken["parameters"]["config"][section][key] = value
    return broken


@pytest.mark.parametrize(
    ("case", "section", "key", "message"),
    [
        ("bad-arch", "teacher", "arch", "teacher.arch: torchvision has no classification model 'resnet_no'"),
        ("wrong-keys", "teacher", "weights", "does not fit teacher torchvision:resnet18:\n  missing keys"),
        ("no-layer", "student", "feature_layer", "student.feature_layer: student torchvision:mobilenet"),
    ],
)
def test_config_mistakes_fail_the_first_step_clearly_and_register_nothing(
    stack: Stack, byom: dict[str, Any], case: str, section: str, key: str, message: str
) -> None:
    folder: Path = byom["folder"]
    value: Any = {"bad-arch": "torchvision:resnet_no", "no-layer": "features.99"}.get(case)
    if case == "wrong-keys":  # a real state_dict, of another network
        value = str(folder / "student-not-teacher.pt")
        torch.save(torch.nn.Linear(3, CLASSES).state_dict(), value)
    before = stack.versions()
    run = stack.run_pipeline(_write_config(folder, case, _break(byom["document"], section, key, value)))
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "ArchError" in output and message in output, output[-3000:]
    # the first step failed, and only it: every later step needs its output
    assert "Pipeline run has failed due to failure in step(s): load_data\n" in output, output[-3000:]
    assert stack.versions() == before
