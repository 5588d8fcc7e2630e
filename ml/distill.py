"""Knowledge distillation of the student from the frozen teacher, and the label-only ablation.

Pipeline step 2 (see ARCHITECTURE.md): ``steps/`` calls :func:`distill` with the teacher trained by
``ml.train.fit`` and a fresh student from ``ml.nets``, and :func:`train_label_only` on an identical fresh
student for the ablation; the difference in test accuracy is the reported KD gain. Both go through
``ml.train.fit``, so seeding, early stopping and best-weight restoring are the same as the teacher's.

The loss (Hinton et al. 2015, plus a FitNets-style hint term, Romero et al. 2015):

    loss = α·T²·KL(p_t ‖ p_s) + (1−α)·CE(s, y) + β·MSE(adapter(f_s), f_t)

with ``p = softmax(logits / T)``; the KL term is ``F.kl_div(log_softmax(s/T), softmax(t/T), "batchmean")``
(the issue writes the same term with its arguments in the other order). ``f_s`` and ``f_t`` are the
outputs of a named layer of each network (``student_layer`` / ``teacher_layer``, e.g. ``features.9`` of a
MobileNetV3 and ``layer3`` of a ResNet), read with forward hooks, so any architecture works; for
EdgeFleet's ``ConvNet`` the default is ``features.<feature_block>``, the map ``forward_features`` returns.
The adapter is sized by probing both layers with one input: a learned 1×1 conv from the student's to the
teacher's channel count (a linear layer for N×C features); when the spatial sizes differ, the larger map is
pooled (teacher) or interpolated (adapted student) to the other's size. It is trained with the student and
discarded afterwards. Without a layer on either side (an architecture with no default and none named),
only the logits are distilled.

The teacher is frozen and there is no data augmentation, so its outputs on each training sample never
change: by default they are computed once up front and looked up per batch (``cache_teacher``), which
turns the teacher's per-epoch cost into a one-off forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.arch import default_feature_layer, find_layer, probe_feature_shape
from ml.data import DataSplits
from ml.device import CPU, Runtime
from ml.errors import TrainingError
from ml.nets import STUDENT_SPEC, ConvNet, NetSpec, build_net
from ml.train import AugmentFn, IndexedLossFn, LossFn, TrainResult, fit_splits, seed_everything

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
        optimizer: ``adam`` or ``sgd`` (Nesterov momentum 0.9; see ``ml.train.fit``).
        cache_teacher: Compute the teacher's outputs on the training set once instead of every batch.
            Costs N×C_t×H×W float32 of memory: 10 MB on digits, about 0.85 GB on the 28×28
            synthetic set; turn it off to trade that memory for a teacher pass per batch. Ignored (the
            teacher runs every batch) when training batches are augmented.
        student_layer: Student layer whose output is matched; None: :func:`ml.arch.default_feature_layer`.
        teacher_layer: Teacher layer it is matched to; None: the default likewise.
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
    optimizer: Literal["adam", "sgd"] = "adam"
    cache_teacher: bool = True
    student_layer: str | None = None
    teacher_layer: str | None = None

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
        if adapted.ndim != target.ndim or adapted.ndim not in (2, 4) or adapted.shape[:2] != target.shape[:2]:
            raise TrainingError(
                f"adapted student feature {tuple(adapted.shape)} and teacher feature {tuple(target.shape)} "
                "must agree in batch and channels"
            )
        adapted, target = match_spatial(adapted, target)
        if adapted.dtype != target.dtype:  # autocast: a bf16/fp16 adapter output against FP32 cached maps
            adapted, target = adapted.float(), target.float()
        loss = loss + beta * F.mse_loss(adapted, target)
    return loss


def match_spatial(adapted: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Bring two N×C×H×W maps to one size: pool the target down when it is larger in both axes, else
    interpolate the adapted student map (bilinear) to the target's size. N×C features pass unchanged."""
    if adapted.ndim != 4 or adapted.shape[2:] == target.shape[2:]:
        return adapted, target
    if target.shape[2] >= adapted.shape[2] and target.shape[3] >= adapted.shape[3]:
        return adapted, F.adaptive_avg_pool2d(target, (int(adapted.shape[2]), int(adapted.shape[3])))
    return F.interpolate(adapted, size=target.shape[2:], mode="bilinear", align_corners=False), target


def adapter_for_shapes(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """The adapter from probed feature shapes (without batch): 1×1 conv for maps, linear for vectors.

    Raises:
        TrainingError: One side is a map and the other a vector.
    """
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        return nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1, bias=True)
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    raise TrainingError(
        f"cannot match a student feature of shape {student_shape} to a teacher feature of shape "
        f"{teacher_shape}: pick layers that both output maps (N×C×H×W) or both vectors (N×C)"
    )


class FeatureTap:
    """A forward hook on one named layer that keeps its latest output (read after ``model(x)``)."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        """Raises: ArchError: the layer does not exist."""
        self.output: Tensor | None = None
        self._handle = find_layer(model, layer).register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            self.output = output

    def take(self) -> Tensor:
        """The output recorded by the last forward pass.

        Raises:
            TrainingError: The layer did not run (or returned no tensor) in the last pass.
        """
        if self.output is None:
            raise TrainingError("the feature layer produced no tensor in the last forward pass")
        out, self.output = self.output, None
        return out

    def remove(self) -> None:
        """Detach the hook."""
        self._handle.remove()


@contextmanager
def tapped(model: nn.Module, layer: str | None) -> Iterator[FeatureTap | None]:
    """A :class:`FeatureTap` on ``layer`` for the duration of the block (None when ``layer`` is None)."""
    if layer is None:
        yield None
        return
    tap = FeatureTap(model, layer)
    try:
        yield tap
    finally:
        tap.remove()


def feature_layers(student: nn.Module, teacher: nn.Module, config: DistillConfig) -> tuple[str, str] | None:
    """The (student, teacher) layer names to match, or None when either side has none (logits only).

    Raises:
        ArchError: A named layer does not exist.
    """
    student_layer = config.student_layer or default_feature_layer(student)
    teacher_layer = config.teacher_layer or default_feature_layer(teacher)
    if student_layer is not None:
        find_layer(student, student_layer, arch="the student")
    if teacher_layer is not None:
        find_layer(teacher, teacher_layer, arch="the teacher")
    if student_layer is None or teacher_layer is None:
        return None
    return student_layer, teacher_layer


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

    def __init__(self, student: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)


def _check_fits(role: str, net: nn.Module, splits: DataSplits) -> None:
    if isinstance(net, ConvNet):
        if net.num_classes != splits.num_classes:
            raise TrainingError(
                f"{role} has {net.num_classes} outputs but the data has {splits.num_classes} classes"
            )
        if net.in_channels != splits.input_shape[0]:
            raise TrainingError(
                f"{role} takes {net.in_channels} input channels but the data has {splits.input_shape[0]}"
            )
        return
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros((1, *splits.input_shape)))
    except RuntimeError as exc:
        raise TrainingError(f"{role} cannot run on inputs of shape {splits.input_shape}: {exc}") from exc
    finally:
        net.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (1, splits.num_classes):
        raise TrainingError(f"{role} must return N×{splits.num_classes} logits for this data")


def _check_pair(student: nn.Module, teacher: nn.Module, splits: DataSplits) -> None:
    for role, net in (("student", student), ("teacher", teacher)):
        _check_fits(role, net, splits)


def _teacher_outputs(
    teacher: nn.Module,
    tap: FeatureTap | None,
    x: np.ndarray,
    feature_size: tuple[int, ...],
    *,
    with_features: bool,
    runtime: Runtime = CPU,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Teacher logits and feature maps on all of ``x`` (eval mode, no gradients), kept on the CPU.

    Maps larger than the student's (``feature_size``) are pooled once here rather than in every batch;
    kd_loss would pool to the same size. Without ``with_features`` (or without a tap) the second tensor is
    N×0: kd_loss never reads it when beta is 0, and the maps are by far the larger part of the cache.
    """
    logits: list[Tensor] = []
    features: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
            with runtime.autocast():
                out = teacher(xb.to(runtime.device)).float().cpu()
            if tap is None or not with_features:
                logits.append(out)
                features.append(out.new_zeros((len(out), 0)))
                continue
            feat = tap.take().float().cpu()
            if (
                feat.ndim == 4
                and tuple(feat.shape[2:]) != feature_size
                and all(t >= s for t, s in zip(feat.shape[2:], feature_size, strict=True))
            ):
                feat = F.adaptive_avg_pool2d(feat, (feature_size[0], feature_size[1]))
            logits.append(out)
            features.append(feat)
    return torch.cat(logits), torch.cat(features)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    splits: DataSplits,
    config: DistillConfig,
    progress: ProgressFn | None = None,
    *,
    runtime: Runtime | None = None,
    augment: AugmentFn | None = None,
) -> TrainResult:
    """Train ``student`` (in place) by distillation from the frozen ``teacher``.

    The teacher is put in eval mode (BatchNorm uses its running statistics) and receives no gradients;
    its previous train/eval mode is restored at the end. Student and a fresh adapter are optimised
    together by ``ml.train.fit``; early stopping uses the student's validation accuracy, the best student
    weights are restored and the adapter is dropped.

    Args:
        student: The student network (any architecture, e.g. from :func:`build_student` or ``ml.arch``).
        teacher: The trained teacher network.
        splits: The data.
        config: Loss weights, optimiser settings and the feature layers.
        progress: ``progress(epoch, metrics)`` after each epoch.
        runtime: Device and precision (``ml.device``); the CPU by default.
        augment: Training-batch augmentation; the teacher then runs on every augmented batch.

    Returns:
        The student's :class:`~ml.train.TrainResult`.

    Raises:
        TrainingError: If the networks do not fit the data or each other, or training fails (see
            ``ml.train.fit``).
        ArchError: A configured feature layer does not exist.
    """
    rt = runtime or CPU
    _check_pair(student, teacher, splits)
    layers = feature_layers(student, teacher, config) if config.beta > 0 else None
    beta = config.beta if layers is not None else 0.0
    shape = splits.input_shape
    if layers is not None:
        student_shape = probe_feature_shape(student, layers[0], shape)
        teacher_shape = probe_feature_shape(teacher, layers[1], shape)
    else:
        student_shape = teacher_shape = (1,)
    with torch.random.fork_rng():
        # Seeded so the adapter's initial weights depend on config.seed only, without touching global RNG.
        torch.manual_seed(config.seed)
        adapter = adapter_for_shapes(student_shape, teacher_shape)
    wrapper = _StudentWithAdapter(student, adapter)
    was_training = teacher.training
    teacher.eval()
    teacher.to(rt.device)
    try:
        with (
            tapped(student, layers[0] if layers else None) as student_tap,
            tapped(teacher, layers[1] if layers else None) as teacher_tap,
        ):

            def student_loss(
                model: nn.Module, xb: Tensor, yb: Tensor, t_logits: Tensor, t_feat: Tensor
            ) -> Tensor:
                if not isinstance(model, _StudentWithAdapter):  # fit passes back the module it was given
                    raise TrainingError("distillation loss called with an unexpected model")
                s_logits = model.student(xb)
                s_feat = student_tap.take() if student_tap is not None and beta > 0 else s_logits
                return kd_loss(
                    s_logits,
                    t_logits.to(s_logits.device),
                    yb,
                    s_feat,
                    t_feat.to(s_logits.device),
                    model.adapter,
                    temperature=config.temperature,
                    alpha=config.alpha,
                    beta=beta,
                )

            online_loss: LossFn | None = None
            indexed_loss: IndexedLossFn | None = None
            if config.cache_teacher and augment is None:
                cached_logits, cached_feat = _teacher_outputs(
                    teacher,
                    teacher_tap,
                    splits.x_train,
                    student_shape[1:],
                    with_features=beta > 0,
                    runtime=rt,
                )

                def indexed_loss(model: nn.Module, xb: Tensor, yb: Tensor, rows: Tensor) -> Tensor:
                    return student_loss(model, xb, yb, cached_logits[rows], cached_feat[rows])

            else:

                def online_loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
                    with torch.no_grad():
                        t_logits = teacher(xb)
                        t_feat = teacher_tap.take() if teacher_tap is not None and beta > 0 else t_logits
                    return student_loss(model, xb, yb, t_logits, t_feat)

            result = fit_splits(
                wrapper,
                splits,
                config,
                loss_fn=online_loss,
                indexed_loss_fn=indexed_loss,
                progress=progress,
                runtime=rt,
                augment=augment,
            )
    finally:
        teacher.to("cpu")
        teacher.train(was_training)
    student.eval()
    return result


def train_label_only(
    student: nn.Module,
    splits: DataSplits,
    config: DistillConfig,
    progress: ProgressFn | None = None,
    *,
    runtime: Runtime | None = None,
    augment: AugmentFn | None = None,
) -> TrainResult:
    """The ablation: train ``student`` (in place) on labels alone, with the same optimiser settings.

    Args:
        student: A fresh student built with the same seed as the distilled one.
        splits: The data.
        config: Only ``epochs``, ``lr``, ``batch_size``, ``patience``, ``seed`` and ``weight_decay`` apply.
        progress: ``progress(epoch, metrics)`` after each epoch.
        runtime: Device and precision (``ml.device``); the CPU by default.
        augment: Training-batch augmentation.

    Returns:
        The student's :class:`~ml.train.TrainResult`.

    Raises:
        TrainingError: If the student does not fit the data or training fails (see ``ml.train.fit``).
    """
    if isinstance(student, ConvNet) and (
        student.num_classes != splits.num_classes or student.in_channels != splits.input_shape[0]
    ):
        raise TrainingError(
            f"student ({student.in_channels} channels in, {student.num_classes} out) does not fit the data "
            f"({splits.input_shape[0]} channels, {splits.num_classes} classes)"
        )
    _check_fits("student", student, splits)
    return fit_splits(student, splits, config, progress=progress, runtime=runtime, augment=augment)
