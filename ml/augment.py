"""Training-batch augmentation through ``torchvision.transforms.v2``, built from ``data.augment``.

``ml.train.fit`` calls the function :func:`make_augment` returns on every training batch (on the CPU, before
the batch moves to the device); validation and test data are never augmented. Each sample draws its own
random crop, flip and jitter. Inputs are already normalised, so the colour jitter works in that space
(brightness as an additive shift, contrast as a scale about the sample's mean) rather than through
``ColorJitter``, which assumes pixels in [0, 1] and would clip normalised values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ml.errors import DataError
from ml.train import AugmentFn


def make_augment(
    *,
    input_hw: tuple[int, int],
    random_resized_crop: tuple[float, float] | None = None,
    horizontal_flip: bool = False,
    color_jitter: float = 0.0,
    seed: int = 0,
) -> AugmentFn | None:
    """A batch augmentation, or None when every option is off.

    Args:
        input_hw: ``(H, W)`` of the samples; random resized crops are resized back to it.
        random_resized_crop: ``(min_scale, max_scale)`` of the crop's area, e.g. ``(0.8, 1.0)``.
        horizontal_flip: Flip half the samples left-right.
        color_jitter: Strength ``j``: brightness shift and contrast factor drawn from ``±j``.
        seed: Seeds the augmentation's own generator, so runs repeat.

    Raises:
        DataError: A crop scale outside ``(0, 1]`` or a negative jitter.
    """
    if random_resized_crop is None and not horizontal_flip and color_jitter == 0:
        return None
    from torchvision.transforms import v2

    steps: list[torch.nn.Module] = []
    if random_resized_crop is not None:
        low, high = random_resized_crop
        if not 0 < low <= high <= 1:
            raise DataError(
                f"random_resized_crop scales must satisfy 0 < min ≤ max ≤ 1, got {random_resized_crop}"
            )
        steps.append(v2.RandomResizedCrop(size=input_hw, scale=(low, high), antialias=True))
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter < 0:
        raise DataError(f"color_jitter must be ≥ 0, got {color_jitter}")
    geometric = v2.Compose(steps) if steps else None
    generator = torch.Generator().manual_seed(seed)

    def augment(batch: Tensor) -> Tensor:
        # torchvision draws from torch's global generator; fork it so the augmentation has its own stream.
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            out = torch.stack([geometric(sample) for sample in batch]) if geometric is not None else batch
        if color_jitter > 0:
            n = len(out)
            shift = (torch.rand((n, 1, 1, 1), generator=generator) * 2 - 1) * color_jitter
            scale = 1 + (torch.rand((n, 1, 1, 1), generator=generator) * 2 - 1) * color_jitter
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * scale + mean + shift
        return out

    return augment
