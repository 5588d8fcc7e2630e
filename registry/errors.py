"""Typed errors of the registry layer.

RegistryError
├── ModelNotFoundError     no such registered model, version or alias
│   └── WeightsNotFoundError  the version exists but stores no torch weights to fine-tune from
└── PromotionRefusedError  promotion gates failed; the message is the gate table, ``review`` the checks
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.policy import PromotionReview


class RegistryError(Exception):
    """Root of every error raised by ``registry``."""


class ModelNotFoundError(RegistryError):
    """The registered model, version or alias does not exist."""


class WeightsNotFoundError(ModelNotFoundError):
    """The model version exists but has no stored torch weights (e.g. registered before they were kept)."""


class PromotionRefusedError(RegistryError):
    """A promotion was refused: a check failed and it was not forced, or the request itself is not allowed.

    Attributes:
        review: Every check of the refused promotion (``review.checks``, ``review.failures``); None when the
            request was refused before any check ran (``--force`` without a reason, a reserved alias).
    """

    def __init__(self, message: str, *, review: PromotionReview | None = None) -> None:
        super().__init__(message)
        self.review = review
