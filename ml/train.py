"""Deterministic supervised training with early stopping: the loop every model in ``ml`` goes through.

Teacher training, the label-only student, distillation (``ml.distill``) and the pruning fine-tunes
(``ml.prune``) all call :func:`fit`. It owns seeding, batching, the optimiser, early stopping on
validation accuracy and restoring the best weights; callers customise it through ``loss_fn`` (what to
minimise), ``after_step`` (e.g. re-apply pruning masks) and ``progress`` (progress bars in ``steps/``).

This module imports only torch and numpy. Thread counts (``torch.set_num_threads``) are the caller's
business, so the pipeline config decides them, not the library.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.batchnorm import DEFAULT_SAMPLES, recalibrate_batchnorm
from ml.device import CPU, Runtime
from ml.errors import TrainingError

if TYPE_CHECKING:
    from ml.data import DataSplits

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``loss_fn(model, xb, yb) -> scalar loss``; the default is cross-entropy of ``model(xb)``."""

IndexedLossFn = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]
"""``indexed_loss_fn(model, xb, yb, rows) -> scalar loss``; ``rows`` are the batch's row numbers in the
training arrays, so a loss can look up per-sample targets computed once (e.g. a frozen teacher's outputs)."""

ProgressFn = Callable[[int, dict[str, float]], None]
"""``progress(epoch, metrics)``, called once per finished epoch (epochs count from 1)."""

AfterStepFn = Callable[[nn.Module], None]
"""Called with the model after every optimiser step."""

AugmentFn = Callable[[Tensor], Tensor]
"""Maps a training batch (N×C×H×W, on the CPU) to an augmented batch of the same shape."""


@dataclass
class TrainResult:
    """What :func:`fit` returns. The model itself is updated in place with the best weights.

    Attributes:
        best_val_accuracy: Validation accuracy (0..1) of the restored weights.
        epochs_run: Epochs actually run (fewer than asked when early stopping fired).
        history: One dict per epoch: ``epoch``, ``train_loss``, ``val_accuracy``, ``val_loss``, ``lr``
            (at the end of the epoch) and ``seconds``.
        best_epoch: The epoch (from 1) whose weights were restored; 0 when none beat the start.
    """

    best_val_accuracy: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators.

    ``fit`` also draws its shuffling order from its own seeded generator, so runs are reproducible
    even if other code touches the global generators between calls.

    Args:
        seed: Any non-negative integer.

    Raises:
        TrainingError: If ``seed`` is negative or not an integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TrainingError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))


def _check_arrays(x: np.ndarray, y: np.ndarray | None, what: str) -> None:
    """Raise TrainingError unless ``x`` is a non-empty float N×C×H×W array and ``y`` matches it."""
    if not isinstance(x, np.ndarray):
        raise TrainingError(f"{what}: x must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise TrainingError(f"{what}: x must be N×C×H×W (4 dimensions), got shape {x.shape}")
    if x.shape[0] == 0:
        raise TrainingError(f"{what}: the split is empty")
    if not np.issubdtype(x.dtype, np.floating):
        raise TrainingError(f"{what}: x must be a float array, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise TrainingError(f"{what}: x contains NaN or inf")
    if y is None:
        return
    if not isinstance(y, np.ndarray) or y.ndim != 1:
        raise TrainingError(f"{what}: y must be a 1-D numpy array")
    if len(y) != len(x):
        raise TrainingError(f"{what}: x has {len(x)} samples but y has {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise TrainingError(f"{what}: y must hold integer class ids, got dtype {y.dtype}")
    if (y < 0).any():
        raise TrainingError(f"{what}: y holds negative class ids")


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(
        np.ascontiguousarray(y, dtype=np.int64)
    )


def _default_loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
    return F.cross_entropy(model(xb), yb)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    # Clone, because state_dict() returns views that the next optimiser step would overwrite.
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` on ``x`` in eval mode, without gradients.

    The model's train/eval mode is restored afterwards, so this is safe to call inside a training loop.

    Args:
        model: Any module mapping N×C×H×W float tensors to N×K logits.
        x: Float array, N×C×H×W.
        batch_size: Samples per forward pass.

    Returns:
        float32 array of shape N×K.

    Raises:
        TrainingError: If ``x`` is not a non-empty finite N×C×H×W float array, ``batch_size`` is not
            positive, or the model's output is not N×K.
    """
    _check_arrays(x, None, "predict")
    if batch_size <= 0:
        raise TrainingError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()
    outputs: list[np.ndarray] = []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
                out = model(xb.to(device))
                if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != xb.shape[0]:
                    raise TrainingError("predict: the model must return an N×K tensor of logits")
                outputs.append(out.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)


def _val_scores(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on a validation split, from one prediction pass."""
    logits = torch.from_numpy(predict(model, x))
    labels = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    acc = float((logits.argmax(1) == labels).float().mean())
    return acc, float(F.cross_entropy(logits, labels))


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``(x, y)``.

    Args:
        model: Any module mapping N×C×H×W float tensors to N×K logits.
        x: Float array, N×C×H×W.
        y: Integer labels, length N.

    Returns:
        The fraction of samples whose arg-max logit equals the label.

    Raises:
        TrainingError: If the arrays are malformed or disagree in length (see :func:`predict`).
    """
    _check_arrays(x, y, "accuracy")
    logits = predict(model, x)
    return float((logits.argmax(axis=1) == y).mean())


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    patience: int = 3,
    weight_decay: float = 0.0,
    loss_fn: LossFn | None = None,
    progress: ProgressFn | None = None,
    after_step: AfterStepFn | None = None,
    optimizer: Literal["adam", "sgd"] = "adam",
    indexed_loss_fn: IndexedLossFn | None = None,
    schedule: Literal["cosine", "constant"] = "cosine",
    runtime: Runtime | None = None,
    augment: AugmentFn | None = None,
    bn_samples: int = DEFAULT_SAMPLES,
) -> TrainResult:
    """Train ``model`` in place, stop early on validation accuracy and restore the best weights.

    Deterministic for a given ``seed`` on CPU: the model is *not* re-initialised here (build it after
    :func:`seed_everything` for that), but the shuffling order comes from a generator seeded with
    ``seed``, and torch's global generator (dropout etc.) is re-seeded with it at the start.

    Every epoch shuffles the training set, takes optimiser steps on mini-batches (calling ``after_step``
    after each one), then measures validation accuracy. When accuracy has not improved for ``patience``
    epochs in a row (a tie in accuracy with a lower validation loss counts as an improvement), training
    stops. Before every validation (and before scoring the starting weights) the BatchNorm running
    statistics are recomputed from ``bn_samples`` un-augmented training images (``ml.batchnorm``), so
    eval-mode accuracy, the restored weights and what is exported from them match the trained weights
    even for nets whose BatchNorm momentum is too slow for a short run (torchvision's MobileNetV3). At
    the end the weights from the best epoch are loaded back; if no epoch beats the starting weights (e.g.
    a fine-tune from an already good model), those are kept.

    Args:
        model: The network; it must map N×C×H×W float tensors to N×K logits.
        train: ``(x, y)``: float32 N×C×H×W and int64 labels.
        val: ``(x, y)`` for early stopping and the best-weights choice.
        epochs: Maximum number of epochs (≥ 1).
        lr: Peak learning rate (> 0).
        batch_size: Mini-batch size (≥ 1).
        seed: Seed of the shuffling order and torch's global generator.
        patience: Epochs without improvement before stopping (≥ 1).
        weight_decay: L2 penalty passed to the optimiser.
        loss_fn: ``loss_fn(model, xb, yb) -> scalar``; defaults to cross-entropy of ``model(xb)``.
        progress: Called as ``progress(epoch, metrics)`` after each epoch.
        after_step: Called with ``model`` after each optimiser step.
        optimizer: ``"adam"`` or ``"sgd"`` (SGD with Nesterov momentum 0.9).
        indexed_loss_fn: Instead of ``loss_fn``: ``indexed_loss_fn(model, xb, yb, rows)`` where ``rows``
            (int64) are the batch's row numbers in ``train``.
        schedule: ``"cosine"`` anneals the rate to zero over ``epochs``; ``"constant"`` keeps ``lr``.
        runtime: Device and precision (``ml.device``); the CPU in FP32 by default. On CUDA the model
            trains there (channels-last, autocast in bf16/fp16) and is moved back to the CPU at the end.
        augment: Applied to every training batch before it is moved to the device (validation never).
        bn_samples: Training images the BatchNorm statistics are recomputed from before each validation;
            0 keeps the running averages of training as they are.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingError: If the arrays are malformed, a hyper-parameter is out of range, both ``loss_fn``
            and ``indexed_loss_fn`` are given, a label is not a valid class of the model's output, or the
            loss becomes NaN/inf (diverged).
    """
    x_train, y_train = train
    x_val, y_val = val
    _check_arrays(x_train, y_train, "train")
    _check_arrays(x_val, y_val, "val")
    if x_train.shape[1:] != x_val.shape[1:]:
        raise TrainingError(f"train samples are {x_train.shape[1:]} but val samples are {x_val.shape[1:]}")
    if epochs < 1:
        raise TrainingError(f"epochs must be ≥ 1, got {epochs}")
    if not (math.isfinite(lr) and lr > 0):
        raise TrainingError(f"lr must be a positive finite number, got {lr}")
    if batch_size < 1:
        raise TrainingError(f"batch_size must be ≥ 1, got {batch_size}")
    if patience < 1:
        raise TrainingError(f"patience must be ≥ 1, got {patience}")
    if weight_decay < 0:
        raise TrainingError(f"weight_decay must be ≥ 0, got {weight_decay}")
    if loss_fn is not None and indexed_loss_fn is not None:
        raise TrainingError("give loss_fn or indexed_loss_fn, not both")
    if bn_samples < 0:
        raise TrainingError(f"bn_samples must be ≥ 0, got {bn_samples}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters")

    seed_everything(seed)
    rt = runtime or CPU
    xt, yt = _to_tensors(x_train, y_train)
    if rt.is_cuda:
        model.to(rt.device)
        if rt.channels_last:
            model.to(memory_format=torch.channels_last)
    try:
        return _fit_loop(
            model, xt, yt, x_val, y_val, params, rt,
            epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, patience=patience,
            weight_decay=weight_decay, loss_fn=loss_fn, progress=progress, after_step=after_step,
            optimizer=optimizer, indexed_loss_fn=indexed_loss_fn, schedule=schedule, augment=augment,
            bn_samples=bn_samples,
        )  # fmt: skip
    finally:
        if rt.is_cuda:
            model.to("cpu")
            model.to(memory_format=torch.contiguous_format)


def _fit_loop(
    model: nn.Module,
    xt: Tensor,
    yt: Tensor,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: list[nn.Parameter],
    rt: Runtime,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    patience: int,
    weight_decay: float,
    loss_fn: LossFn | None,
    progress: ProgressFn | None,
    after_step: AfterStepFn | None,
    optimizer: str,
    indexed_loss_fn: IndexedLossFn | None,
    schedule: str,
    augment: AugmentFn | None,
    bn_samples: int,
) -> TrainResult:
    """The epochs of :func:`fit` on an already placed model (see there)."""
    num_classes = _num_outputs(model, xt[:1].to(rt.device))
    y_train = yt.numpy()
    top_label = int(max(y_train.max(), y_val.max()))
    if top_label >= num_classes:
        raise TrainingError(f"labels go up to {top_label} but the model has only {num_classes} outputs")

    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    else:
        raise TrainingError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if schedule not in ("cosine", "constant"):
        raise TrainingError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    steps_per_epoch = math.ceil(len(xt) / batch_size)
    total_steps = epochs * steps_per_epoch
    plain_loss = loss_fn or _default_loss

    def compute_loss(xb: Tensor, yb: Tensor, rows: Tensor) -> Tensor:
        if indexed_loss_fn is not None:
            return indexed_loss_fn(model, xb, yb, rows)
        return plain_loss(model, xb, yb)

    generator = torch.Generator().manual_seed(seed)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.is_cuda and rt.precision == "fp16")

    x_train = xt.numpy()

    def validate() -> tuple[float, float]:
        recalibrate_batchnorm(
            model, x_train, samples=bn_samples, batch_size=max(batch_size, 2), seed=seed, runtime=rt
        )
        return _val_scores(model, x_val, y_val)

    # The starting weights are the baseline to beat, so a fine-tune can never make the model worse on val.
    best_acc, best_loss = validate()
    best_state = _snapshot(model)
    best_epoch = 0
    history: list[dict[str, float]] = []
    stale = 0
    step = 0
    epoch = 0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        loss_sum = 0.0
        for start in range(0, len(xt), batch_size):
            index = order[start : start + batch_size]
            xb, yb = xt[index], yt[index]
            if augment is not None:
                xb = augment(xb)
            if rt.is_cuda:
                xb = xb.to(rt.device, non_blocking=True)
                if rt.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                yb = yb.to(rt.device, non_blocking=True)
            if schedule == "cosine":
                # Per-step cosine decay: smooth, and the last epochs fine-tune at a small rate.
                rate = 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))
                for group in opt.param_groups:
                    group["lr"] = rate
            opt.zero_grad(set_to_none=True)
            with rt.autocast():
                loss = compute_loss(xb, yb, index)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TrainingError("loss_fn must return a scalar tensor")
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"training diverged: loss is {loss.item()} at epoch {epoch}, step {step}; "
                    f"try a lower lr than {lr}"
                )
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if after_step is not None:
                after_step(model)
            step += 1
            loss_sum += float(loss.detach()) * len(index)
        train_seconds = time.perf_counter() - started
        val_acc, val_loss = validate()
        row = {
            "epoch": float(epoch),
            "train_loss": loss_sum / len(xt),
            "val_accuracy": val_acc,
            "val_loss": val_loss,
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - started,
            "images_per_s": len(xt) / train_seconds if train_seconds > 0 else 0.0,
        }
        history.append(row)
        if progress is not None:
            progress(epoch, dict(row))
        # Accuracy decides; on a tie (common once a small val split is saturated) a lower val loss
        # still counts as progress, so training does not stop while the model keeps getting surer.
        if val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss):
            best_acc, best_loss, best_epoch = val_acc, val_loss, epoch
            best_state = _snapshot(model)
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                break

    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_val_accuracy=best_acc, epochs_run=epoch, history=history, best_epoch=best_epoch)


def _num_outputs(model: nn.Module, probe: Tensor) -> int:
    """Number of logits the model produces, found with one eval-mode forward pass on one sample."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except RuntimeError as exc:
        raise TrainingError(
            f"the model cannot run on inputs of shape {tuple(probe.shape[1:])}: {exc}"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2:
        raise TrainingError("the model must return an N×K tensor of logits")
    return int(out.shape[1])


class TrainSettings(Protocol):
    """Optimiser settings as ``ml.config.TrainConfig`` and ``ml.distill.DistillConfig`` both carry them."""

    @property
    def epochs(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def patience(self) -> int: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def optimizer(self) -> Literal["adam", "sgd"]: ...


def fit_splits(
    model: nn.Module,
    splits: DataSplits,
    settings: TrainSettings,
    *,
    loss_fn: LossFn | None = None,
    indexed_loss_fn: IndexedLossFn | None = None,
    progress: ProgressFn | None = None,
    runtime: Runtime | None = None,
    augment: AugmentFn | None = None,
) -> TrainResult:
    """:func:`fit` on a data set's train and validation splits with one settings object.

    Raises:
        TrainingError: See :func:`fit`.
    """
    return fit(
        model,
        (splits.x_train, splits.y_train),
        (splits.x_val, splits.y_val),
        epochs=settings.epochs,
        lr=settings.lr,
        batch_size=settings.batch_size,
        seed=settings.seed,
        patience=settings.patience,
        weight_decay=settings.weight_decay,
        optimizer=settings.optimizer,
        loss_fn=loss_fn,
        indexed_loss_fn=indexed_loss_fn,
        progress=progress,
        runtime=runtime,
        augment=augment,
    )
