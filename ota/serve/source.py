"""Where the served model comes from: an ONNX file, or the model the edge agent committed.

This is the service's only view of the agent (the agent may be split and rewritten; keep it this small).
It reads the state through the agent's public :class:`~ota.edge.state.StateStore` (read-only: no recovery,
never a write) and finds files through :class:`~ota.edge.slots.SlotStore`.

**How the service learns of a commit.** The agent records a commit as one atomic ``os.replace`` of
``<state_dir>/state.json``; the new file has a new inode and modification time. The service ``stat``s it
every ``watch_interval_s`` (one system call; 1 s by default) and reads the state only when the
``(inode, mtime, size)`` triple changed. Only ``committed_slot`` counts: a model on trial
(``installed-pending-health``) is never served. For an immediate swap the agent (or an operator) may also
call ``POST /v2/repository/models/{name}/load`` (Triton's model-repository extension) or send the
service ``SIGHUP``; both only trigger the same look, so a missed notification costs one interval at most.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from ota.edge.errors import EdgeError
from ota.edge.slots import SlotStore
from ota.edge.state import StateStore
from ota.serve.model import ModelCandidate

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    """Offers the model to serve now; called off the event loop every watch interval."""

    def describe(self) -> str:
        """One line for logs: what is watched."""
        ...

    def poll(self) -> ModelCandidate | None:
        """The model to serve, or None when there is none (yet)."""
        ...


def _stamp(path: Path) -> str | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return f"{info.st_ino}:{info.st_mtime_ns}:{info.st_size}"


class FileSource:
    """One ONNX file (and optional self-test vectors); replacing the file swaps the model.

    Args:
        path: The ONNX file.
        version: The version clients see.
        vectors: Self-test vectors to warm up with, if any.
        parameters: Extra facts for the model metadata.
    """

    def __init__(
        self,
        path: Path,
        *,
        version: str = "1",
        vectors: Path | None = None,
        parameters: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self.version = version
        self.vectors = vectors
        self.parameters = parameters or {}

    def describe(self) -> str:
        return f"model file {self.path}"

    def poll(self) -> ModelCandidate | None:
        stamp = _stamp(self.path)
        if stamp is None:
            return None
        return ModelCandidate(
            key=stamp, path=self.path, version=self.version, vectors=self.vectors, parameters=self.parameters
        )


class AgentStateSource:
    """The model the edge agent committed under ``state_dir`` (see the module docstring).

    Args:
        state_dir: The agent's state directory.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._states = StateStore(state_dir)  # no ``recover``: the service never rewrites the agent's state
        self._slots = SlotStore(state_dir)
        self._stamp: str | None = None
        self._last: ModelCandidate | None = None

    def describe(self) -> str:
        return f"the agent's committed model under {self.state_dir}"

    def poll(self) -> ModelCandidate | None:
        stamp = _stamp(self._states.path)
        if stamp is None or stamp == self._stamp:
            return self._last
        try:
            state = self._states.load()
        except EdgeError as exc:
            # A state file the agent is about to recover: keep serving what was committed before.
            log.warning("cannot read the agent's state (%s); keeping the model in service", exc)
            return self._last
        self._stamp = stamp
        if state.committed_slot is None or state.committed is None:
            self._last = None
            return None
        committed = state.committed
        vectors = self._slots.vectors_path(state.committed_slot)
        self._last = ModelCandidate(
            key=committed.sha256,
            path=self._slots.model_path(state.committed_slot),
            version=committed.version,
            sha256=committed.sha256,
            vectors=vectors if vectors.exists() else None,
            parameters={"target_name": committed.target_name, "slot": state.committed_slot},
        )
        return self._last
