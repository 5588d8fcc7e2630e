"""Step: prune, export, quantize and score every variant; the artifact is the folder of ONNX files.

In a fine-tune (``init_weights`` set) the student is the parent's pruned module, fine-tuned: it is not
pruned again, and it is quantized only the way the parent version shipped (``ml.warmstart.student_plan``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from zenml import log_metadata, step
from zenml.logger import get_logger

from ml.config import PruneConfig, QuantizeConfig
from ml.data import DataSplits
from ml.device import resolve_runtime
from ml.variants import build_variants as build
from ml.warmstart import load_warm_start, student_plan

logger = get_logger(__name__)


@step
def build_variants(
    splits: DataSplits,
    teacher: nn.Module,
    student: nn.Module,
    prune: PruneConfig,
    quantize: QuantizeConfig,
    threads: int = 2,
    init_weights: Path | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> Annotated[Path, "variants"]:
    """Structured + unstructured pruning, ONNX export with parity, static/dynamic/QAT INT8, scoring."""
    torch.set_num_threads(threads)
    student_name: str = "student-fp32"
    student_int8: tuple[str, ...] | None = None  # None: the kinds the config switches on
    if init_weights is not None:
        student_name, student_int8 = student_plan(load_warm_start(init_weights).student.card)
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-variants-"))
    with Progress(
        TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bars:

        def calibration_bar(name: str) -> Callable[[int, int], None]:
            task = bars.add_task(f"calibration {name}", total=quantize.calibration_size)

            def progress(done: int, total: int) -> None:
                bars.update(task, completed=done, total=total)

            return progress

        manifest = build(
            teacher=teacher,
            student=student,
            splits=splits,
            folder=folder,
            prune=None if init_weights is not None else prune,
            quantize=quantize,
            student_name=student_name,
            student_int8=student_int8,
            log=logger.info,
            calibration_progress=calibration_bar,
            runtime=resolve_runtime(device, precision),
        )
    log_metadata(
        {
            **{f"accuracy.{v.name}": v.accuracy for v in manifest.variants},
            **{f"skipped.{name}": reason for name, reason in manifest.skipped},
        }
    )
    return folder
