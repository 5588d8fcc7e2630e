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

from ml.config import TrainConfig
from ml.data import DataSplits
from ml.nets import build_net, count_macs, count_parameters, specs_for_input
from ml.train import TrainResult, accuracy, fit_splits, seed_everything
from ml.warmstart import load_warm_start
from steps.progress import epoch_progress


@step
def train_teacher(
    splits: DataSplits,
    config: TrainConfig,
    threads: int = 2,
    init_weights: Path | None = None,
    reuse: bool = False,
) -> tuple[Annotated[nn.Module, "teacher"], Annotated[dict[str, float], "teacher_metrics"]]:
    """Train the teacher (or take the parent's, as it is or fine-tuned); report accuracy, size and cost."""
    torch.set_num_threads(threads)
    seed_everything(config.seed)
    if init_weights is not None:
        teacher = load_warm_start(init_weights).fresh_teacher()
        label = "teacher (fine-tune)"
    else:
        teacher_spec, _ = specs_for_input(splits.input_shape)
        teacher = build_net(teacher_spec, in_channels=splits.input_shape[0], num_classes=splits.num_classes)
        label = "teacher"
    if init_weights is not None and reuse:
        result = TrainResult(best_val_accuracy=accuracy(teacher, splits.x_val, splits.y_val), epochs_run=0)
    else:
        with epoch_progress(label, config.epochs) as progress:
            result = fit_splits(teacher, splits, config, progress=progress)
    metrics = {
        "test_accuracy": accuracy(teacher, splits.x_test, splits.y_test),
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": float(result.epochs_run),
        "best_epoch": float(result.best_epoch),
        "parameters": float(count_parameters(teacher)),
        "macs": float(count_macs(teacher, splits.input_shape)),
    }
    log_metadata(dict(metrics.items()))
    return teacher, metrics
