"""Step: train the teacher CNN with a fixed seed and early stopping on validation accuracy.

In a fine-tune (``init_weights`` set) the teacher is the parent version's: reused unchanged (``reuse``,
the default of ``init_teacher``), so the student distils from the teacher it was made with and the
accuracy-drop gate keeps the reference the parent was held to; or fine-tuned first with the configured
(short) settings. ``fit`` keeps the starting weights unless an epoch beats them on validation, so a
fine-tuned teacher is never worse there than its parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from torch import nn
from zenml import log_metadata, step

from ml.arch import build_model, count_macs_generic, load_weights
from ml.augment import make_augment
from ml.config import AugmentConfig, TeacherConfig
from ml.data import DataSplits
from ml.device import resolve_runtime
from ml.nets import ConvNet, count_macs, count_parameters
from ml.train import TrainResult, accuracy, fit_splits, seed_everything
from ml.warmstart import load_warm_start
from steps.progress import epoch_progress


@step
def train_teacher(
    splits: DataSplits,
    config: TeacherConfig,
    threads: int = 2,
    init_weights: Path | None = None,
    reuse: bool = False,
    device: str = "cpu",
    precision: str = "fp32",
    augment: AugmentConfig | None = None,
) -> tuple[
    Annotated[nn.Module, "teacher"],
    Annotated[dict[str, float], "teacher_metrics"],
    Annotated[dict[str, str], "training_facts"],
]:
    """Train the teacher (or take the parent's or a pretrained file's, as it is or fine-tuned); report
    accuracy, size and cost, and the facts lineage records (architectures, weights sha256, device)."""
    torch.set_num_threads(threads)
    runtime = resolve_runtime(device, precision)
    seed_everything(config.seed)
    weights_sha = ""
    teacher: nn.Module
    if init_weights is not None:
        teacher = load_warm_start(init_weights).fresh_teacher()
        label = "teacher (fine-tune)"
    else:
        teacher = build_model(
            config.arch,
            role="teacher",
            input_shape=splits.input_shape,
            num_classes=splits.num_classes,
            kwargs=config.kwargs,
        )
        if config.weights:
            weights_sha = load_weights(teacher, config.weights, arch=f"teacher {config.arch}")
        label = "teacher"
    if (init_weights is not None and reuse) or (init_weights is None and not config.trains):
        result = TrainResult(best_val_accuracy=accuracy(teacher, splits.x_val, splits.y_val), epochs_run=0)
    else:
        hw = (splits.input_shape[1], splits.input_shape[2])
        batches = make_augment(input_hw=hw, seed=config.seed, **augment.model_dump()) if augment else None
        with epoch_progress(label, config.epochs) as progress:
            result = fit_splits(teacher, splits, config, progress=progress, runtime=runtime, augment=batches)
    metrics = {
        "test_accuracy": accuracy(teacher, splits.x_test, splits.y_test),
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": float(result.epochs_run),
        "best_epoch": float(result.best_epoch),
        "parameters": float(count_parameters(teacher)),
        "macs": float(
            count_macs(teacher, splits.input_shape)
            if isinstance(teacher, ConvNet)
            else count_macs_generic(teacher, splits.input_shape)
        ),
    }
    facts = {
        **runtime.as_tags(),
        "teacher_arch": config.arch,
        "teacher_weights_sha256": weights_sha,
        "teacher_trained": str(bool(result.epochs_run)).lower(),
    }
    log_metadata({**metrics, "training_facts": facts})
    return teacher, metrics, facts
