"""Step: prune, export, quantize and score every variant; the artifact is the folder of ONNX files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import torch
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
    manifest = build(
        teacher=teacher,
        student=student,
        splits=splits,
        folder=folder,
        prune=prune,
        quantize=quantize,
        log=logger.info,
    )
    log_metadata({f"accuracy.{v.name}": v.accuracy for v in manifest.variants})
    return folder
