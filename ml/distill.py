"""Knowledge distillation of the student from the frozen teacher, and the label-only ablation.

Pipeline step 2 (see ARCHITECTURE.md): ``steps/`` calls :func:`distill` with the teacher trained by
``ml.train.fit`` and a fresh student from ``ml.nets``, and :func:`train_label_only` on an identical fresh
student for the ablation; the difference in test accuracy is the reported KD gain. Both go through
``ml.train.fit``, so seeding, early stopping and best-weight restoring are the same as the teacher's.

The loss (Hinton et al. 2015, plus a FitNets-style hint term, Romero et al. 2015):

    loss = α·T²·KL(p_t ‖ p_s) + (1−α)·CE(s, y) + β·MSE(adapter(f_s), f_t)

with ``p = softmax(logits / T)``; the KL term is ``F.kl_div(log_softmax(s/T), softmax(t/T), "batchmean")``
(the issue writes the same term with its arguments in the other order). ``f_s`` and ``f_t`` are the
feature maps ``ConvNet.forward_features`` returns; the adapter is a learned 1×1 conv from the student's to
the teacher's channel count, trained with the student and discarded afterwards.

The teacher is frozen and there is no data augmentation, so its outputs on each training sample never
change: by default they are computed once up front and looked up per batch (``cache_teacher``), which
turns the teacher's per-epoch cost into a one-off forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.data import DataSplits
from ml.errors import TrainingError
from ml.nets import STUDENT_SPEC, ConvNet, NetSpec, build_net
from ml.train import IndexedLossFn, LossFn, TrainResult, fit_splits, seed_everything

ProgressFn = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of a distillation run; the label-only ablation reuses the optimiser settings.

    Attributes:
        temperature: Softmax temperature T (> 0).
        alpha: Weight of the soft-target term, in [0, 1]; ``1 − alpha`` weighs the label term.
        beta: Weight of the feature-matching term (≥ 0); 0 turns it off.
        epochs: Maximum epochs.
        lr: Peak learning rate.
        batch_size: Mini-batch size.
        patience: Early-stopping patience in epochs.
        seed: Seed of the adapter's initialisation and of the shuffling order.
        weight_decay: L2 penalty.
        cache_teacher: Compute the teacher's outputs on the training set once instead of every batch.
            Costs N×C_t×H×W float32 of memory: 10 MB on digits, about 0.85 GB on the 28×28
            synthetic set; turn it off to trade that memory for a teacher pass per batch.
    """

    temperature: float = 4.0
    alpha: float = 0.7
    beta: float = 0.5
    # Measured on digits (5 seeds): 30 cosine epochs with a long patience and a little weight decay keep
    # the FP32 student within one test sample of the teacher; short patience stops while lr is still high.
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64
    patience: int = 10
    seed: int = 0
    weight_decay: float = 5e-4
    cache_teacher: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise TrainingError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise TrainingError(f"alpha must be in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise TrainingError(f"beta must be ≥ 0, got {self.beta}")


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    student_feat: Tensor,
    teacher_feat: Tensor,
    adapter: nn.Module,
    *,
    temperature: float,
    alpha: float,
    beta: float,
) -> Tensor:
    """The distillation loss ``α·T²·KL + (1−α)·CE + β·MSE(adapter(f_s), f_t)``, averaged over the batch.

    KL is ``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean")``; the T² factor keeps its
    gradients on the scale of the CE term as T grows. When the adapted student map and the teacher map
    differ in height/width, the teacher map is adaptive-average-pooled to the student's size. With
    ``beta == 0`` the adapter is not evaluated.

    Args:
        student_logits: N×K.
        teacher_logits: N×K (no gradient is taken through it).
        labels: N int64 class ids.
        student_feat: N×Cs×Hs×Ws student feature map.
        teacher_feat: N×Ct×Ht×Wt teacher feature map.
        adapter: Maps Cs to Ct channels (a 1×1 conv, see :func:`make_adapter`).
        temperature: T > 0.
        alpha: Soft-target weight in [0, 1].
        beta: Feature-matching weight ≥ 0.

    Returns:
        A scalar tensor.

    Raises:
        TrainingError: If shapes disagree (logits, batch sizes, adapter output channels) or a weight is
            out of range.
    """
    if not (temperature > 0 and 0.0 <= alpha <= 1.0 and beta >= 0):
        raise TrainingError(
            f"need temperature > 0, 0 ≤ alpha ≤ 1, beta ≥ 0; got {temperature}, {alpha}, {beta}"
        )
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise TrainingError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "must both be N×K with the same K"
        )
    if labels.shape != student_logits.shape[:1]:
        raise TrainingError(f"labels {tuple(labels.shape)} do not match a batch of {student_logits.shape[0]}")
    T = temperature
    teacher_logits = teacher_logits.detach()
    soft = F.kl_div(
        F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1), reduction="batchmean"
    )
    hard = F.cross_entropy(student_logits, labels)
    loss = alpha * T * T * soft + (1.0 - alpha) * hard
    if beta > 0:
        adapted = adapter(student_feat)
        target = teacher_feat.detach()
        if adapted.ndim != 4 or target.ndim != 4 or adapted.shape[:2] != target.shape[:2]:
            raise TrainingError(
                f"adapted student feature {tuple(adapted.shape)} and teacher feature {tuple(target.shape)} "
                "must agree in batch and channels"
            )
        if adapted.shape[2:] != target.shape[2:]:
            target = F.adaptive_avg_pool2d(target, adapted.shape[2:])
        loss = loss + beta * F.mse_loss(adapted, target)
    return loss


def make_adapter(student: ConvNet, teacher: ConvNet) -> nn.Conv2d:
    """A 1×1 conv from the student's to the teacher's distillation-feature channels.

    Args:
        student: The student network.
        teacher: The teacher network.

    Returns:
        The adapter (with bias).
    """
    return nn.Conv2d(student.feature_channels, teacher.feature_channels, kernel_size=1, bias=True)


def build_student(splits: DataSplits, *, seed: int, spec: NetSpec = STUDENT_SPEC) -> ConvNet:
    """A freshly initialised student for ``splits``; the same seed gives identical weights.

    Build the distilled and the label-only student with the same seed so the ablation differs only in
    the loss.

    Args:
        splits: The data (gives input channels and class count).
        seed: Initialisation seed.
        spec: Architecture; default ``STUDENT_SPEC``.

    Returns:
        The student, in training mode.

    Raises:
        TrainingError: If the seed is invalid.
    """
    seed_everything(seed)
    return build_net(spec, in_channels=splits.input_shape[0], num_classes=splits.num_classes)


class _StudentWithAdapter(nn.Module):
    """Lets ``fit`` optimise student and adapter together while ``model(x)`` stays the student's logits."""

    def __init__(self, student: ConvNet, adapter: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)


def _check_pair(student: ConvNet, teacher: ConvNet, splits: DataSplits) -> None:
    for role, net in (("student", student), ("teacher", teacher)):
        if net.num_classes != splits.num_classes:
            raise TrainingError(
                f"{role} has {net.num_classes} outputs but the data has {splits.num_classes} classes"
            )
        if net.in_channels != splits.input_shape[0]:
            raise TrainingError(
                f"{role} takes {net.in_channels} input channels but the data has {splits.input_shape[0]}"
            )


def _teacher_outputs(
    teacher: ConvNet,
    x: np.ndarray,
    feature_size: tuple[int, int],
    *,
    with_features: bool,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Teacher logits and feature maps on all of ``x`` (eval mode, no gradients), features pooled to size.

    Without ``with_features`` the second tensor is N×0: kd_loss never reads it when beta is 0, and the
    maps are by far the larger part of the cache.
    """
    logits: list[Tensor] = []
    features: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
            out, feat = teacher.forward_features(xb)
            if tuple(feat.shape[2:]) != feature_size:
                # Pool once here rather than in every batch; kd_loss would pool to the same size.
                feat = F.adaptive_avg_pool2d(feat, feature_size)
            logits.append(out)
            features.append(feat if with_features else feat.new_zeros((len(feat), 0)))
    return torch.cat(logits), torch.cat(features)


def distill(
    student: ConvNet,
    teacher: ConvNet,
    splits: DataSplits,
    config: DistillConfig,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``student`` (in place) by distillation from the frozen ``teacher``.

    The teacher is put in eval mode (BatchNorm uses its running statistics) and receives no gradients;
    its previous train/eval mode is restored at the end. Student and a fresh 1×1 adapter are optimised
    together by ``ml.train.fit``; early stopping uses the student's validation accuracy, the best student
    weights are restored and the adapter is dropped.

    Args:
        student: The student network (e.g. from :func:`build_student`).
        teacher: The trained teacher network.
        splits: The data.
        config: Loss weights and optimiser settings.
        progress: ``progress(epoch, metrics)`` after each epoch.

    Returns:
        The student's :class:`~ml.train.TrainResult`.

    Raises:
        TrainingError: If the networks do not fit the data or each other, or training fails (see
            ``ml.train.fit``).
    """
    _check_pair(student, teacher, splits)
    with torch.random.fork_rng():
        # Seeded so the adapter's initial weights depend on config.seed only, without touching global RNG.
        torch.manual_seed(config.seed)
        adapter = make_adapter(student, teacher)
    wrapper = _StudentWithAdapter(student, adapter)
    was_training = teacher.training
    teacher.eval()
    try:
        probe = torch.from_numpy(np.ascontiguousarray(splits.x_train[:1], dtype=np.float32))
        student_was_training = student.training
        student.eval()
        with torch.no_grad():
            _, student_feat = student.forward_features(probe)
        student.train(student_was_training)
        feature_size = (int(student_feat.shape[2]), int(student_feat.shape[3]))

        def student_loss(
            model: nn.Module, xb: Tensor, yb: Tensor, t_logits: Tensor, t_feat: Tensor
        ) -> Tensor:
            if not isinstance(model, _StudentWithAdapter):  # fit passes back the module it was given
                raise TrainingError("distillation loss called with an unexpected model")
            s_logits, s_feat = model.student.forward_features(xb)
            return kd_loss(
                s_logits,
                t_logits,
                yb,
                s_feat,
                t_feat,
                model.adapter,
                temperature=config.temperature,
                alpha=config.alpha,
                beta=config.beta,
            )

        online_loss: LossFn | None = None
        indexed_loss: IndexedLossFn | None = None
        if config.cache_teacher:
            cached_logits, cached_feat = _teacher_outputs(
                teacher, splits.x_train, feature_size, with_features=config.beta > 0
            )

            def indexed_loss(model: nn.Module, xb: Tensor, yb: Tensor, rows: Tensor) -> Tensor:
                return student_loss(model, xb, yb, cached_logits[rows], cached_feat[rows])

        else:

            def online_loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
                with torch.no_grad():
                    t_logits, t_feat = teacher.forward_features(xb)
                return student_loss(model, xb, yb, t_logits, t_feat)

        result = fit_splits(
            wrapper, splits, config, loss_fn=online_loss, indexed_loss_fn=indexed_loss, progress=progress
        )
    finally:
        teacher.train(was_training)
    student.eval()
    return result


def train_label_only(
    student: ConvNet,
    splits: DataSplits,
    config: DistillConfig,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """The ablation: train ``student`` (in place) on labels alone, with the same optimiser settings.

    Args:
        student: A fresh student built with the same seed as the distilled one.
        splits: The data.
        config: Only ``epochs``, ``lr``, ``batch_size``, ``patience``, ``seed`` and ``weight_decay`` apply.
        progress: ``progress(epoch, metrics)`` after each epoch.

    Returns:
        The student's :class:`~ml.train.TrainResult`.

    Raises:
        TrainingError: If the student does not fit the data or training fails (see ``ml.train.fit``).
    """
    if student.num_classes != splits.num_classes or student.in_channels != splits.input_shape[0]:
        raise TrainingError(
            f"student ({student.in_channels} channels in, {student.num_classes} out) does not fit the data "
            f"({splits.input_shape[0]} channels, {splits.num_classes} classes)"
        )
    return fit_splits(student, splits, config, progress=progress)
