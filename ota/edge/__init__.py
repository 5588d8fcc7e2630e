"""The edge agent: poll, verify, download, A/B install, health check, commit or roll back, report.

Applications on the device use :class:`ActiveModel` (``from ota.edge import ActiveModel``) to get a ready
ONNX Runtime session for the committed model. It is loaded lazily so that ``import ota.edge`` stays cheap
for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ota.edge.active import ActiveModel

__all__ = ["ActiveModel"]


def __getattr__(name: str) -> Any:
    if name == "ActiveModel":
        from ota.edge.active import ActiveModel

        return ActiveModel
    raise AttributeError(f"module 'ota.edge' has no attribute {name!r}")
