"""Unit tests of ml.prune: structured widths and real ONNX shrinkage, unstructured sparsity, reports."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from onnx import numpy_helper

from ml.errors import PruningError
from ml.export import export_onnx
from ml.nets import ConvBlock, ConvNet
from ml.prune import (
    block_widths,
    count_nonzero_parameters,
    kept_width,
    prune_report,
    prune_structured,
    prune_unstructured,
    weight_sparsity,
)

INPUT_SHAPE = (1, 8, 8)


def _block(model: ConvNet, index: int) -> ConvBlock:
    block = model.features[index]
    assert isinstance(block, ConvBlock)
    return block


def _conv_weight_shapes(path: Path) -> list[tuple[int, ...]]:
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    return [
        tuple(numpy_helper.to_array(inits[n.input[1]]).shape) for n in model.graph.node if n.op_type == "Conv"
    ]


@pytest.mark.parametrize(
    ("width", "ratio", "multiple", "expected"),
    [
        (64, 0.5, 8, 32),
        (64, 0.3, 8, 48),  # 44.8 → 45 → rounded up to 48
        (32, 0.3, 8, 24),  # 22.4 → 23 → 24
        (16, 0.9, 8, 8),  # never below one multiple
        (6, 0.5, 8, 6),  # a width below the multiple stays as it is
        (64, 0.0, 8, 64),
        (64, 0.5, 1, 32),
    ],
)
def test_kept_width_rounds_up_to_multiple(width: int, ratio: float, multiple: int, expected: int) -> None:
    assert kept_width(width, ratio, multiple) == expected


@pytest.mark.parametrize("ratio", [-0.1, 1.0, float("nan")])
def test_bad_ratio_is_a_pruning_error(random_net: Callable[..., ConvNet], ratio: float) -> None:
    with pytest.raises(PruningError):
        prune_structured(random_net(), ratio)
    with pytest.raises(PruningError):
        prune_unstructured(random_net(), ratio)


def test_structured_pruning_gives_multiple_of_8_widths(random_net: Callable[..., ConvNet]) -> None:
    model = random_net()
    pruned = prune_structured(model, 0.3)
    assert block_widths(pruned) == [16, 24, 24, 48]
    assert all(w % 8 == 0 for w in block_widths(pruned))
    assert block_widths(model) == [16, 32, 32, 64]  # the input model is untouched
    assert pruned.classifier.in_features == 48


def test_structured_pruning_really_shrinks_the_onnx_graph(
    random_net: Callable[..., ConvNet], tmp_path: Path
) -> None:
    model = random_net()
    pruned = prune_structured(model, 0.5)
    big = _conv_weight_shapes(export_onnx(model, tmp_path / "big.onnx", INPUT_SHAPE))
    small = _conv_weight_shapes(export_onnx(pruned, tmp_path / "small.onnx", INPUT_SHAPE))
    assert big == [(16, 1, 3, 3), (32, 16, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3)]
    assert small == [(8, 1, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3)]
    assert (tmp_path / "small.onnx").stat().st_size < 0.4 * (tmp_path / "big.onnx").stat().st_size


def test_structured_ratio_zero_keeps_outputs(random_net: Callable[..., ConvNet]) -> None:
    model = random_net()
    same = prune_structured(model, 0.0)
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(same(x), model(x))


@pytest.mark.parametrize("criterion", ["l1", "bn_gamma"])
def test_structured_drops_the_weakest_channels(random_net: Callable[..., ConvNet], criterion: str) -> None:
    model = random_net((16,))
    with torch.no_grad():
        block = _block(model, 0)
        weakest = [3, 7, 11]
        for channel in weakest:
            block.conv.weight[channel] *= 1e-3
            block.bn.weight[channel] = 1e-3
    pruned = prune_structured(model, 0.5, multiple_of=1, criterion=criterion)
    kept = _block(pruned, 0).conv.weight.detach()
    original = _block(model, 0).conv.weight.detach()
    survivors = [c for c in range(16) if any(torch.equal(kept[k], original[c]) for k in range(len(kept)))]
    assert len(survivors) == 8
    assert not set(weakest) & set(survivors)
    assert survivors == sorted(survivors)


def test_structured_copies_bn_and_classifier_slices(random_net: Callable[..., ConvNet]) -> None:
    model = random_net((16, 32))
    pruned = prune_structured(model, 0.5)
    old_block, new_block = _block(model, 1), _block(pruned, 1)
    scores = old_block.conv.weight.detach().abs().sum(dim=(1, 2, 3))
    keep = torch.sort(torch.topk(scores, 16).indices).values
    torch.testing.assert_close(
        new_block.bn.get_buffer("running_var"), old_block.bn.get_buffer("running_var")[keep]
    )
    torch.testing.assert_close(new_block.bn.weight.detach(), old_block.bn.weight.detach()[keep])
    torch.testing.assert_close(pruned.classifier.weight.detach(), model.classifier.weight.detach()[:, keep])


def test_structured_fine_tune_runs_on_the_smaller_net(random_net: Callable[..., ConvNet]) -> None:
    seen: list[list[int]] = []

    def fine_tune(model: torch.nn.Module) -> None:
        assert isinstance(model, ConvNet)
        seen.append(list(block_widths(model)))

    prune_structured(random_net(), 0.5, fine_tune=fine_tune)
    assert seen == [[8, 16, 16, 32]]


def test_unstructured_hits_sparsity_and_leaves_no_masks(random_net: Callable[..., ConvNet]) -> None:
    model = random_net()
    pruned = prune_unstructured(model, 0.6)
    assert weight_sparsity(pruned) == pytest.approx(0.6, abs=0.01)
    assert weight_sparsity(model) < 0.01  # input untouched
    keys = list(pruned.state_dict())
    assert not [k for k in keys if k.endswith(("_orig", "_mask"))]
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    assert count_nonzero_parameters(pruned) < count_nonzero_parameters(model)


def test_unstructured_fine_tune_keeps_masks(random_net: Callable[..., ConvNet], digits: Any) -> None:
    from ml.train import fit

    masks_seen: list[bool] = []

    def fine_tune(m: torch.nn.Module) -> None:
        masks_seen.append(hasattr(m.get_submodule("features.0.conv"), "weight_mask"))
        fit(m, (digits.x_train[:256], digits.y_train[:256]), (digits.x_val, digits.y_val), epochs=1, lr=1e-2)

    pruned = prune_unstructured(random_net(), 0.5, fine_tune=fine_tune)
    assert masks_seen == [True]
    # Training with the masks attached must not resurrect pruned weights.
    assert weight_sparsity(pruned) == pytest.approx(0.5, abs=0.01)


def test_unstructured_zeros_survive_export(random_net: Callable[..., ConvNet], tmp_path: Path) -> None:
    pruned = prune_unstructured(random_net(), 0.7)
    model = onnx.load(str(export_onnx(pruned, tmp_path / "sparse.onnx", INPUT_SHAPE)))
    # The exporter folds BN into the conv weights (renaming them); scaling keeps zeros at zero.
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer]
    conv_linear = [w for w in weights if w.ndim in (2, 4)]
    zeros = sum(int((w == 0).sum()) for w in conv_linear) / sum(w.size for w in conv_linear)
    assert zeros == pytest.approx(0.7, abs=0.02)


def test_prune_report_structured_and_unstructured(trained_student: ConvNet) -> None:
    model = copy.deepcopy(trained_student)
    structured = prune_report("structured", model, prune_structured(model, 0.5), INPUT_SHAPE, runs=30)
    assert structured.after.params < 0.4 * structured.before.params
    assert structured.after.onnx_bytes < 0.4 * structured.before.onnx_bytes
    assert structured.after.p50_ms > 0
    sparse = prune_report("unstructured", model, prune_unstructured(model, 0.8), INPUT_SHAPE, runs=30)
    # Same dense shapes, so same file size, but zeros compress.
    assert sparse.after.params == sparse.before.params
    assert sparse.after.nonzero_params < 0.35 * sparse.before.nonzero_params
    assert sparse.after.zstd_bytes < 0.6 * sparse.before.zstd_bytes
    rows = {name: (b, a, r) for name, b, a, r in sparse.rows()}
    assert rows["zstd_bytes"][2] == pytest.approx(sparse.after.zstd_bytes / sparse.before.zstd_bytes)
    assert np.isfinite(rows["p50_ms"][2])


@given(
    width=st.integers(min_value=1, max_value=1024),
    ratio=st.floats(min_value=0.0, max_value=0.999, allow_nan=False),
    multiple=st.integers(min_value=1, max_value=32),
)
def test_kept_width_properties(width: int, ratio: float, multiple: int) -> None:
    kept = kept_width(width, ratio, multiple)
    assert 1 <= kept <= width
    assert kept == width or kept % multiple == 0  # SIMD-friendly unless the layer is already narrow
    assert kept >= width * (1.0 - ratio) - 1e-9  # never prunes more than asked
