"""``ActiveModel``: what applications on the device use to run the committed model.

It gives a stable path (``<state_dir>/current/model.onnx``, a symlink moved only on commit) and a small API
that hands out a ready ONNX Runtime session. After the agent commits a new model, the next call loads the
new session *beside* the old one and swaps a reference under a lock; a call already running keeps its own
reference to the old session, so no in-flight inference is dropped, and the old session is freed when the
last such call returns. A model that fails to load leaves the old session in service.

Changes are noticed by polling the state file's modification time, at most every ``check_interval_s``,
so the hot path costs one clock read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from ota.edge.config import AgentConfig
from ota.edge.errors import EdgeError, SlotError, StateError
from ota.edge.health import make_session
from ota.edge.slots import MODEL_FILE, SlotStore
from ota.edge.state import StateStore


@dataclass(frozen=True)
class LoadedModel:
    """A session together with the model it was built from."""

    session: ort.InferenceSession
    sha256: str
    version: str
    path: Path


class ActiveModel:
    """Hands out a ready session for the committed model and follows commits.

    Args:
        state_dir: The agent's state directory.
        config: Thread settings for ONNX Runtime.
        providers: Execution providers (ORT's available ones by default).
        check_interval_s: How often to look for a newly committed model.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        config: AgentConfig | None = None,
        providers: list[str] | None = None,
        check_interval_s: float = 1.0,
    ) -> None:
        self.state_dir = state_dir
        self.config = config or AgentConfig()
        self.providers = providers
        self.check_interval_s = check_interval_s
        self._states = StateStore(state_dir)
        self._slots = SlotStore(state_dir)
        self._lock = threading.Lock()
        self._loaded: LoadedModel | None = None
        self._seen_mtime_ns: int | None = None
        self._next_check = 0.0

    @property
    def path(self) -> Path:
        """The stable path applications may open: it always leads to the committed model."""
        return self._slots.current_link / MODEL_FILE

    def current(self) -> LoadedModel:
        """Return the loaded committed model, loading or swapping first if the agent committed another.

        Returns:
            The model and its session.

        Raises:
            EdgeError: If no model has been committed yet, or the first load fails.
        """
        now = time.monotonic()
        loaded = self._loaded
        if loaded is not None and now < self._next_check:
            return loaded
        self._next_check = now + self.check_interval_s
        self.refresh()
        loaded = self._loaded
        if loaded is None:
            raise EdgeError(f"no committed model under {self.state_dir} yet")
        return loaded

    def session(self) -> ort.InferenceSession:
        """Return a ready session for the committed model.

        Raises:
            EdgeError: If no model has been committed yet, or it cannot be loaded.
        """
        return self.current().session

    def run(self, feeds: Mapping[str, Any], output_names: Sequence[str] | None = None) -> list[Any]:
        """Run the committed model once.

        The session reference is taken before the call, so a swap during the call does not affect it.

        Args:
            feeds: Input name → array.
            output_names: Outputs to return (all by default).

        Returns:
            The outputs, as ONNX Runtime returns them.

        Raises:
            EdgeError: If no model has been committed yet, or it cannot be loaded.
        """
        session = self.session()
        names = list(output_names) if output_names is not None else None
        outputs: list[Any] = session.run(names, dict(feeds))
        return outputs

    def refresh(self) -> bool:
        """Swap to the committed model if it changed since the last look.

        Returns:
            True when a new session was swapped in.

        Raises:
            EdgeError: If nothing is loaded yet and the committed model cannot be loaded.
        """
        try:
            mtime_ns = self._states.path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime_ns == self._seen_mtime_ns and self._loaded is not None:
            return False
        try:
            state = self._states.load()
        except (StateError, SlotError):
            if self._loaded is None:
                raise
            return False  # keep serving the old model; the agent will rewrite the state
        self._seen_mtime_ns = mtime_ns
        if state.committed_slot is None or state.committed is None:
            return False
        if self._loaded is not None and self._loaded.sha256 == state.committed.sha256:
            return False
        path = self._slots.model_path(state.committed_slot)
        try:
            # Built outside the lock: loading can take seconds and callers keep using the old session.
            session = make_session(path, config=self.config, providers=self.providers)
        except Exception as exc:  # ORT's error types are not public
            if self._loaded is None:
                raise EdgeError(f"cannot load the committed model {path}: {exc}") from exc
            return False
        with self._lock:
            self._loaded = LoadedModel(
                session=session, sha256=state.committed.sha256, version=state.committed.version, path=path
            )
        return True
