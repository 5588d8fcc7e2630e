"""QAT asked for on a torchvision student: the variant is skipped with its reason, never a crash, and the
pipeline's variants table shows the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ml.arch import build_model
from ml.config import QuantizeConfig
from ml.data import split
from ml.train import seed_everything
from ml.variants import build_variants, load_manifest

SHAPE = (3, 32, 32)


def test_qat_of_a_torchvision_student_is_skipped_with_its_reason(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, *SHAPE)).astype(np.float32)
    y = (np.arange(48) % 4).astype(np.int64)
    splits = split(x, y, ["a", "b", "c", "d"], name="tiny", val_fraction=0.25, test_fraction=0.25)
    net = build_model("torchvision:mobilenet_v3_small", role="student", input_shape=SHAPE, num_classes=4)
    manifest = build_variants(
        teacher=net,
        student=net,
        splits=splits,
        folder=tmp_path,
        prune=None,
        quantize=QuantizeConfig(static=False, dynamic=False, qat=True),
    )
    assert {v.name for v in manifest.variants} == {"teacher-fp32", "student-fp32"}
    (name, reason), *_ = manifest.skipped
    assert name == "student-int8-qat"
    assert reason.startswith("skipped: ") and "MobileNetV3" in reason
    assert load_manifest(tmp_path).skipped == manifest.skipped  # written to variants.json


def test_variants_table_shows_the_skip_reason() -> None:
    from pipelines.summary import variants_table

    row = {"accuracy": 0.9, "size_bytes": 2048, "p50_ms": 1.0, "p99_ms": 2.0, "throughput_sps": 10}
    benchmark = [{**row, "name": "teacher-torch-eager"}, {**row, "name": "student-fp32"}]
    reason = "skipped: eager-mode QAT needs an explicit conv-bn-relu fusion plan"
    console = Console(record=True, width=300)
    console.print(variants_table(benchmark, {"student-int8-qat": reason}))
    text = console.export_text()
    assert "student-int8-qat" in text and reason in text
    plain = Console(record=True, width=300)
    plain.print(variants_table(benchmark))
    assert "note" not in plain.export_text()
