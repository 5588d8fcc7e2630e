"""Typed errors of the registry layer.

RegistryError
├── ModelNotFoundError     no such registered model, version or alias
│   └── WeightsNotFoundError  the version exists but stores no torch weights to fine-tune from
└── PromotionRefusedError  promotion gates failed; the message is the gate table
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of every error raised by ``registry``."""


class ModelNotFoundError(RegistryError):
    """The registered model, version or alias does not exist."""


class WeightsNotFoundError(ModelNotFoundError):
    """The model version exists but has no stored torch weights (e.g. registered before they were kept)."""


class PromotionRefusedError(RegistryError):
    """A promotion failed its gates and was not forced."""
