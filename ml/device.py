"""Where and in which precision training runs: ``device: auto|cpu|cuda|cuda:N``, ``precision: fp32|bf16``.

(``fp16`` too, with a gradient scaler.)

:func:`resolve_runtime` turns the config's two strings into a :class:`Runtime` that ``ml.train.fit`` (and so
every training step: teacher, students, pruning fine-tunes, QAT) follows. Mixed precision and channels-last
memory layout apply on CUDA only; on the CPU training stays FP32 and deterministic for a seed, and the
recorded precision says so (``fp32``), so lineage never claims a precision that was not used.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ml.errors import TrainingError

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:[0-9]+)$")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """A resolved training device.

    Attributes:
        device: ``cpu`` or ``cuda:N``.
        precision: The precision actually used: ``fp32`` on the CPU whatever was asked.
        requested_precision: What the config asked for.
        gpu_name: The CUDA device's name, or empty on the CPU.
        channels_last: Whether models and batches use the channels-last layout (CUDA only).
    """

    device: str = "cpu"
    precision: str = "fp32"
    requested_precision: str = "fp32"
    gpu_name: str = ""
    channels_last: bool = False

    @property
    def is_cuda(self) -> bool:
        """True on a CUDA device."""
        return self.device.startswith("cuda")

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision for the forward pass on CUDA with bf16/fp16; a no-op otherwise."""
        if self.is_cuda and self.precision in _DTYPES:
            with torch.autocast("cuda", dtype=_DTYPES[self.precision]):
                yield
        else:
            yield

    def as_tags(self) -> dict[str, str]:
        """Lineage facts: device, GPU name and precision."""
        return {"device": self.device, "gpu_name": self.gpu_name or "-", "precision": self.precision}


CPU = Runtime()


def resolve_runtime(device: str = "auto", precision: str = "fp32") -> Runtime:
    """Resolve the config's ``device`` and ``precision``.

    Raises:
        TrainingError: A malformed device or precision, ``cuda`` asked for on a machine without it, or a
            device index that does not exist.
    """
    if not _DEVICE.match(device):
        raise TrainingError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise TrainingError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    available = torch.cuda.is_available()
    if device == "auto":
        device = "cuda:0" if available else "cpu"
    elif device.startswith("cuda"):
        if not available:
            raise TrainingError(f"device {device!r} asked for, but torch sees no CUDA device on this machine")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise TrainingError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
            )
        device = f"cuda:{index}"
    if device == "cpu":
        return Runtime(device="cpu", precision="fp32", requested_precision=precision)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"{torch.cuda.get_device_name(device)} does not support bf16; use fp16 or fp32")
    return Runtime(
        device=device,
        precision=precision,
        requested_precision=precision,
        gpu_name=torch.cuda.get_device_name(device),
        channels_last=True,
    )
