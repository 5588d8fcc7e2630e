"""The networks: a teacher CNN and a much smaller student, both a chain of conv blocks.

Both share one shape so pruning, distillation and export can treat them alike:

    input ─► features: Sequential[ConvBlock, ...] ─► global average pool ─► classifier: Linear

Each ``ConvBlock`` is conv(k×k, padding k//2, no bias) ─► BatchNorm ─► ReLU ─► optional 2×2 max-pool.
``forward_features`` returns the logits plus the feature map after block ``feature_block``: the
intermediate map that distillation matches between student and teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetSpec:
    """Widths of the conv blocks, which of them pool, and where the distillation feature is read."""

    widths: tuple[int, ...]
    pools: tuple[bool, ...]
    feature_block: int
    kernel: int = 3

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.pools) or not self.widths:
            raise ValueError("widths and pools must be non-empty and of equal length")
        if not 0 <= self.feature_block < len(self.widths):
            raise ValueError(f"feature_block {self.feature_block} is outside 0..{len(self.widths) - 1}")


TEACHER_SPEC = NetSpec(widths=(64, 128, 128, 256), pools=(False, True, False, True), feature_block=2)
STUDENT_SPEC = NetSpec(widths=(16, 32, 32, 64), pools=(False, True, False, True), feature_block=2)


# Inputs larger than this (e.g. 28×28) pool already in the first block: at full resolution the teacher would
# cost ~145M multiply-adds at 28×28 and train ~4× slower, with no accuracy to show for it.
EARLY_POOL_ABOVE = 16


def specs_for_input(input_shape: tuple[int, int, int]) -> tuple[NetSpec, NetSpec]:
    """Teacher and student specs for inputs of shape (C, H, W).

    Small inputs (the 8×8 digits) keep the default layout; larger ones also pool in the first block.
    """
    _, h, w = input_shape
    if min(h, w) <= EARLY_POOL_ABOVE:
        return TEACHER_SPEC, STUDENT_SPEC
    early = (True, *TEACHER_SPEC.pools[1:])
    return (
        NetSpec(widths=TEACHER_SPEC.widths, pools=early, feature_block=TEACHER_SPEC.feature_block),
        NetSpec(widths=STUDENT_SPEC.widths, pools=early, feature_block=STUDENT_SPEC.feature_block),
    )


class ConvBlock(nn.Module):
    """conv ─► BatchNorm ─► ReLU ─► optional max-pool. Structured pruning edits ``conv`` and ``bn``."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel: int = 3, pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.pool: nn.Module = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class ConvNet(nn.Module):
    """A chain of ``ConvBlock`` then global average pooling and one linear classifier."""

    def __init__(self, *, in_channels: int, num_classes: int, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.in_channels = in_channels
        self.num_classes = num_classes
        blocks: list[nn.Module] = []
        channels = in_channels
        for width, pool in zip(spec.widths, spec.pools, strict=True):
            blocks.append(ConvBlock(channels, width, kernel=spec.kernel, pool=pool))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    @property
    def feature_channels(self) -> int:
        """Channels of the intermediate map that distillation matches."""
        block = self.features[self.spec.feature_block]
        assert isinstance(block, ConvBlock)
        return int(block.conv.out_channels)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits, feature map after block spec.feature_block)``."""
        feature = x
        for index, block in enumerate(self.features):
            x = block(x)
            if index == self.spec.feature_block:
                feature = x
        logits = self.classifier(torch.flatten(self.pool(x), 1))
        return logits, feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_net(spec: NetSpec, *, in_channels: int, num_classes: int) -> ConvNet:
    """Build a ``ConvNet``; the single place where architectures are instantiated."""
    return ConvNet(in_channels=in_channels, num_classes=num_classes, spec=spec)


def spec_from_widths(widths: Sequence[int], like: NetSpec) -> NetSpec:
    """A spec with new widths and the pooling and feature layout of ``like`` (used after pruning)."""
    return NetSpec(
        widths=tuple(widths), pools=like.pools, feature_block=like.feature_block, kernel=like.kernel
    )


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not), counting zeros left by unstructured pruning."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: ConvNet, input_shape: tuple[int, int, int]) -> int:
    """Multiply-adds of one forward pass at batch 1 for an input of shape (C, H, W)."""
    macs = 0
    _, h, w = input_shape
    for block in model.features:
        assert isinstance(block, ConvBlock)
        conv = block.conv
        k = conv.kernel_size[0] * conv.kernel_size[1]
        macs += conv.in_channels * conv.out_channels * k * h * w
        if isinstance(block.pool, nn.MaxPool2d):
            h, w = h // 2, w // 2
    macs += model.classifier.in_features * model.classifier.out_features
    return macs
