"""Pruning of ``ConvNet``s: global magnitude (unstructured) and channel removal (structured).

Pipeline step 3 (see ARCHITECTURE.md): takes the distilled student from ``ml.distill`` and hands a
pruned ``ConvNet`` to ``ml.export``. Fine-tuning is delegated to a caller-supplied callable (the
pipeline passes a closure over ``ml.train.fit``), so this module stays free of training policy.

* :func:`prune_unstructured` zeroes the smallest-magnitude conv/linear weights across the whole
  network (``torch.nn.utils.prune.global_unstructured``), fine-tunes with the masks in place, then
  makes the pruning permanent (``prune.remove``): the exported graph holds plain tensors with zeros.
  Dense kernels do not run faster on zeros; the gain shows up in the compressed size.
* :func:`prune_structured` ranks each block's output channels and builds a NEW, physically narrower
  ``ConvNet`` (widths rounded up to a multiple of 8 for SIMD), copying the kept slices of conv
  weights, BN parameters and buffers, the next block's input channels and the classifier's inputs.
  Any other architecture (torchvision, timm, a user's module) goes through
  :func:`prune_structured_generic`: torch-pruning's ``DependencyGraph`` traces the network once and
  removes channels group by group, so residual adds, depthwise convs, squeeze-excitation and
  concatenations stay consistent; channel counts are rounded to ``multiple_of`` and the classifier's
  outputs are never touched.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
import zstandard
from torch import nn
from torch.nn.utils import prune

from ml.errors import PruningError
from ml.export import export_onnx
from ml.nets import ConvBlock, ConvNet, build_net, count_parameters, spec_from_widths

FineTune = Callable[[nn.Module], object]
"""Fine-tunes a model in place (e.g. ``lambda m: fit(m, train, val, epochs=2, lr=1e-3)``)."""


class ChannelCriterion(StrEnum):
    """How structured pruning ranks a block's output channels."""

    L1 = "l1"  # L1 norm of each conv filter
    BN_GAMMA = "bn_gamma"  # |γ| of the following BatchNorm (network slimming)


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all conv and linear weights."""
    total = zeros = 0
    for module, name in _prunable(model):
        weight = getattr(module, name)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0


def count_nonzero_parameters(model: nn.Module) -> int:
    """Number of non-zero parameters (what unstructured pruning reduces)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def prune_unstructured(model: nn.Module, sparsity: float, *, fine_tune: FineTune | None = None) -> nn.Module:
    """Global magnitude pruning of conv and linear weights to ``sparsity``; returns a pruned copy.

    Masks stay attached during ``fine_tune`` (torch recomputes ``weight = weight_orig * mask`` before
    every forward, so pruned weights stay zero while the rest learn) and are removed afterwards so
    no ``weight_orig``/``weight_mask`` reaches the exporter.

    Args:
        model: The network; left unchanged.
        sparsity: Target fraction of zero weights, in ``[0, 1)``.
        fine_tune: Optional in-place fine-tune run with the masks attached.

    Returns:
        A copy of ``model`` whose conv/linear weights are ``sparsity`` zeros (to rounding).

    Raises:
        PruningError: ``sparsity`` is outside ``[0, 1)`` or the model has no conv or linear layer.
    """
    if not _prunable(model):
        raise PruningError(f"{type(model).__name__} has no conv or linear layer to prune")
    if not 0.0 <= sparsity < 1.0 or math.isnan(sparsity):
        raise PruningError(f"sparsity must lie in [0, 1), got {sparsity}")
    pruned = copy.deepcopy(model)
    targets = _prunable(pruned)
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(sparsity))
    if fine_tune is not None:
        fine_tune(pruned)
    for module, name in targets:
        prune.remove(module, name)
    return pruned


def kept_width(width: int, ratio: float, multiple_of: int) -> int:
    """Channels kept when pruning ``ratio`` of ``width``: rounded UP to a multiple, never above ``width``.

    A width already below ``multiple_of`` is left as it is (rounding up would not shrink it).

    Raises:
        PruningError: ``ratio`` is outside ``[0, 1)`` or ``multiple_of`` < 1.
    """
    if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
        raise PruningError(f"ratio must lie in [0, 1), got {ratio}")
    if multiple_of < 1:
        raise PruningError(f"multiple_of must be ≥ 1, got {multiple_of}")
    wanted = max(1, math.ceil(width * (1.0 - ratio)))
    rounded = math.ceil(wanted / multiple_of) * multiple_of
    return min(width, rounded)


def _channel_scores(block: ConvBlock, criterion: ChannelCriterion) -> torch.Tensor:
    if criterion is ChannelCriterion.BN_GAMMA:
        return block.bn.weight.detach().abs()
    return block.conv.weight.detach().abs().sum(dim=(1, 2, 3))


def _keep_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    # Sorted so kept channels keep their original order: with ratio 0 the copy is the identity.
    top = torch.topk(scores, keep, largest=True, sorted=False).indices
    return torch.sort(top).values


def classifier_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[nn.Module]:
    """Layers whose outputs are the logits (linear or conv with as many outputs as the model has logits).

    Structured pruning leaves them alone: their outputs are the classes.

    Raises:
        PruningError: The model cannot run on ``input_shape``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            classes = int(model(torch.zeros((1, *input_shape))).shape[1])
    except Exception as exc:  # a user's module may raise anything on a bad shape
        raise PruningError(f"cannot probe {type(model).__name__} on inputs {input_shape}: {exc}") from exc
    finally:
        model.train(was_training)
    found: list[nn.Module] = [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == classes)
        or (isinstance(m, nn.Conv2d) and m.out_channels == classes and m.kernel_size == (1, 1))
    ]
    return found[-1:] if found else []


def prune_structured_generic(
    model: nn.Module,
    ratio: float,
    input_shape: tuple[int, int, int],
    *,
    multiple_of: int = 8,
    fine_tune: FineTune | None = None,
) -> nn.Module:
    """Structured channel pruning of any architecture with torch-pruning's dependency graph.

    Channels are ranked by the L1 norm of their group (every weight tied to them through residual adds,
    depthwise convs, squeeze-excitation or concatenations), ``ratio`` of each prunable layer's channels are
    removed, and kept counts are rounded to ``multiple_of``. The classifier (:func:`classifier_layers`)
    keeps its outputs. The copy is physically narrower: its ONNX weights have fewer channels.

    Args:
        model: The network; left unchanged.
        ratio: Fraction of channels to remove, in ``[0, 1)``.
        input_shape: One sample's ``(C, H, W)``, to trace the graph.
        multiple_of: Kept channel counts are multiples of this.
        fine_tune: Optional in-place fine-tune of the narrower network.

    Returns:
        The pruned copy.

    Raises:
        PruningError: Bad ``ratio``/``multiple_of``, or torch-pruning cannot trace or prune the network.
    """
    if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
        raise PruningError(f"ratio must lie in [0, 1), got {ratio}")
    if multiple_of < 1:
        raise PruningError(f"multiple_of must be ≥ 1, got {multiple_of}")
    import torch_pruning as tp  # imported here: tracing machinery that the digits demo never needs

    pruned = copy.deepcopy(model).cpu().eval()
    if ratio > 0:
        try:
            pruner = tp.pruner.BasePruner(
                pruned,
                torch.zeros((1, *input_shape)),
                importance=tp.importance.GroupMagnitudeImportance(p=1),
                pruning_ratio=float(ratio),
                ignored_layers=classifier_layers(pruned, input_shape),
                round_to=multiple_of,
            )
            pruner.step()
        except Exception as exc:  # torch-pruning raises plain errors from tracing and index arithmetic
            raise PruningError(f"structured pruning of {type(model).__name__} failed: {exc}") from exc
    pruned.train(model.training)
    if fine_tune is not None:
        fine_tune(pruned)
    return pruned


def prune_structured(
    model: nn.Module,
    ratio: float,
    *,
    multiple_of: int = 8,
    criterion: ChannelCriterion | str = ChannelCriterion.L1,
    fine_tune: FineTune | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> nn.Module:
    """Remove the least important output channels of every block; return a new, narrower ``ConvNet``.

    Args:
        model: The network; left unchanged.
        ratio: Fraction of each block's channels to remove, in ``[0, 1)``.
        multiple_of: Kept widths are rounded up to a multiple of this (8 suits AVX2/NEON lanes).
        criterion: ``l1`` (filter L1 norm) or ``bn_gamma`` (|BN γ|).
        fine_tune: Optional in-place fine-tune of the narrower network.
        input_shape: ``(C, H, W)``; needed for any model that is not a ``ConvNet``, which goes through
            :func:`prune_structured_generic` (L1 criterion only).

    Returns:
        For a ``ConvNet``: a ``ConvNet`` built by ``spec_from_widths`` whose weights are slices of
        ``model``'s; otherwise the pruned copy.

    Raises:
        PruningError: Bad ``ratio``/``multiple_of``/``criterion``, a ConvNet not made of ConvBlocks, or
            another model without ``input_shape``.
    """
    if not isinstance(model, ConvNet):
        if input_shape is None:
            raise PruningError(f"pruning a {type(model).__name__} needs the input_shape to trace it")
        return prune_structured_generic(
            model, ratio, input_shape, multiple_of=multiple_of, fine_tune=fine_tune
        )
    try:
        criterion = ChannelCriterion(criterion)
    except ValueError as exc:
        raise PruningError(
            f"unknown channel criterion {criterion!r}; use {[c.value for c in ChannelCriterion]}"
        ) from exc
    blocks: list[ConvBlock] = []
    for block in model.features:
        if not isinstance(block, ConvBlock):
            raise PruningError(f"expected ConvBlocks, found {type(block).__name__}")
        blocks.append(block)

    keeps: list[torch.Tensor] = []
    for block in blocks:
        width = block.conv.out_channels
        keeps.append(_keep_indices(_channel_scores(block, criterion), kept_width(width, ratio, multiple_of)))

    smaller = build_net(
        spec_from_widths([len(k) for k in keeps], model.spec),
        in_channels=model.in_channels,
        num_classes=model.num_classes,
    )
    with torch.no_grad():
        keep_in = torch.arange(model.in_channels)
        for old, new, keep_out in zip(blocks, smaller.features, keeps, strict=True):
            assert isinstance(new, ConvBlock)
            new.conv.weight.copy_(old.conv.weight[keep_out][:, keep_in])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new.bn, name).copy_(getattr(old.bn, name)[keep_out])
            new.bn.load_state_dict(
                {"num_batches_tracked": old.bn.state_dict()["num_batches_tracked"]}, strict=False
            )
            keep_in = keep_out
        smaller.classifier.weight.copy_(model.classifier.weight[:, keep_in])
        if model.classifier.bias is not None and smaller.classifier.bias is not None:
            smaller.classifier.bias.copy_(model.classifier.bias)
    smaller.train(model.training)
    if fine_tune is not None:
        fine_tune(smaller)
    return smaller


@dataclass(frozen=True)
class Footprint:
    """Size and speed of one model: parameters, ONNX bytes, zstd-compressed bytes, batch-1 P50."""

    params: int
    nonzero_params: int
    onnx_bytes: int
    zstd_bytes: int
    p50_ms: float


@dataclass(frozen=True)
class PruneReport:
    """Before/after footprint of one pruning method (step 3's report)."""

    method: str
    before: Footprint
    after: Footprint

    def rows(self) -> list[tuple[str, float, float, float]]:
        """``(quantity, before, after, after/before)`` rows for a table or an MLflow log."""
        out: list[tuple[str, float, float, float]] = []
        for field in ("params", "nonzero_params", "onnx_bytes", "zstd_bytes", "p50_ms"):
            b, a = float(getattr(self.before, field)), float(getattr(self.after, field))
            out.append((field, b, a, a / b if b else float("nan")))
        return out


def zstd_size(path: str | Path, *, level: int = 19) -> int:
    """Bytes of ``path`` after zstd compression (how an OTA download of the full file would weigh).

    Raises:
        PruningError: The file cannot be read.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PruningError(f"cannot read {path}: {exc}") from exc
    return len(zstandard.ZstdCompressor(level=level).compress(data))


def footprint(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    onnx_path: str | Path | None = None,
    threads: int = 1,
    runs: int = 300,
) -> Footprint:
    """Measure ``model``: export it (to ``onnx_path`` or a temp file) and time it on ONNX Runtime.

    Raises:
        PruningError: Export or timing failed.
    """
    # Imported here: ml.benchmark imports this module's siblings and onnxruntime; keep import cheap.
    from ml.benchmark import latency_samples_ms
    from ml.errors import MLError
    from ml.evaluate import make_session

    with tempfile.TemporaryDirectory(prefix="edgefleet-prune-") as scratch:
        path = Path(onnx_path) if onnx_path is not None else Path(scratch) / "model.onnx"
        try:
            export_onnx(model, path, input_shape)
            session = make_session(path, threads=threads)
            sample = np.zeros((1, *input_shape), dtype=np.float32)
            p50 = float(np.median(latency_samples_ms(session, sample, runs=runs, warmup=min(50, runs))))
        except MLError as exc:
            raise PruningError(f"cannot measure the pruned model: {exc}") from exc
        return Footprint(
            params=count_parameters(model),
            nonzero_params=count_nonzero_parameters(model),
            onnx_bytes=path.stat().st_size,
            zstd_bytes=zstd_size(path),
            p50_ms=p50,
        )


def prune_report(
    method: str,
    before: nn.Module,
    after: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    threads: int = 1,
    runs: int = 300,
) -> PruneReport:
    """Footprints of a model before and after pruning, measured the same way in the same process.

    Raises:
        PruningError: Export or timing failed.
    """
    return PruneReport(
        method=method,
        before=footprint(before, input_shape, threads=threads, runs=runs),
        after=footprint(after, input_shape, threads=threads, runs=runs),
    )


def block_widths(model: ConvNet) -> Sequence[int]:
    """Output channels of each block (what structured pruning changes)."""
    return [int(b.conv.out_channels) for b in model.features if isinstance(b, ConvBlock)]
