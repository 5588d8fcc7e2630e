"""Step: prune, export, quantize and score every variant; the artifact is the folder of ONNX files."""

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
from ml.nets import ConvNet
from ml.variants import build_variants as build

logger = get_logger(__name__)


@step
def build_variants(
    splits: DataSplits,
    teacher: nn.Module,
    student: nn.Module,
    prune: PruneConfig,
    quantize: QuantizeConfig,
    threads: int = 2,
) -> Annotated[Path, "variants"]:
    """Structured + unstructured pruning, ONNX export with parity, static/dynamic/QAT INT8, scoring."""
    torch.set_num_threads(threads)
    assert isinstance(teacher, ConvNet) and isinstance(student, ConvNet)
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
            prune=prune,
            quantize=quantize,
            log=logger.info,
            calibration_progress=calibration_bar,
        )
    log_metadata({f"accuracy.{v.name}": v.accuracy for v in manifest.variants})
    return folder
