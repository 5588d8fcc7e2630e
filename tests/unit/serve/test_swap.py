"""Hot swap from the agent's state dir: commits are followed, a model that fails warm-up never serves."""

from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np

from ota.edge.slots import SlotStore
from ota.edge.state import STATE_FILE, ArtifactRef, InstalledModel, Phase, StateStore, UpdatePlan
from ota.serve.app import ServeService
from ota.serve.config import BatchingConfig, ServeConfig
from ota.serve.model import ModelCandidate, load_model
from ota.serve.source import AgentStateSource, FileSource
from tests.unit.serve.models import commit, linear, versioned

X = np.ones((2, 8), np.float32)


def service(source):
    return ServeService(source, ServeConfig(model_name="m", batching=BatchingConfig(max_batch_size=4)))


def metric(svc, line_start: str) -> float:
    for line in svc.metrics.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_follows_commits_and_keeps_the_old_model_when_warm_up_fails(tmp_path):
    svc = service(AgentStateSource(tmp_path))
    manager = svc.manager

    async def main():
        assert await manager.check() is False and not manager.ready  # nothing committed yet
        commit(tmp_path, "a", versioned(1), "1.0.0", vectors=(X, np.full((2, 4), 1.0)))
        assert await manager.check() is True
        assert manager.current.version == "1.0.0"
        assert manager.current.metadata()["parameters"]["target_name"] == "m-1.0.0.onnx"
        assert await manager.check() is False  # unchanged: no reload
        # The agent commits a model whose outputs disagree with its self-test vectors.
        commit(tmp_path, "b", versioned(9), "2.0.0-broken", vectors=(X, np.full((2, 4), 2.0)))
        assert await manager.check() is False
        assert manager.current.version == "1.0.0"
        assert "selftest" in manager.last_error and "2.0.0-broken" in manager.last_error
        assert await manager.check() is False  # the same broken commit is not retried
        commit(tmp_path, "a", versioned(3), "3.0.0")
        assert await manager.check() is True
        return manager.current

    current = asyncio.run(main())
    assert current.version == "3.0.0" and manager.last_error is None
    assert float(current.run({"x": X})[0][0, 0]) == 3.0
    assert metric(svc, 'edgefleet_serve_swap_total{model="m",outcome="success"}') == 2
    assert metric(svc, 'edgefleet_serve_swap_total{model="m",outcome="failure"}') == 1
    assert metric(svc, 'edgefleet_serve_model_loaded{model="m",sha256=') == 1
    assert 'version="3.0.0"' in svc.metrics.render().decode()
    assert 'version="1.0.0"' not in svc.metrics.render().decode()


def test_a_corrupt_state_file_keeps_the_model_in_service(tmp_path):
    source = AgentStateSource(tmp_path)
    commit(tmp_path, "a", versioned(1), "1")
    first = source.poll()
    (tmp_path / STATE_FILE).write_text("{not json")
    assert source.poll() == first
    (tmp_path / STATE_FILE).write_text(json.dumps({"format": 1, "phase": "nonsense"}))
    assert source.poll() == first


def test_a_model_on_trial_is_not_served(tmp_path):
    source = AgentStateSource(tmp_path)
    commit(tmp_path, "a", versioned(1), "1")
    assert source.poll().version == "1"
    # The agent installs version 2 in slot b and runs it on trial: active moves, committed does not.
    trial = versioned(2)
    SlotStore(tmp_path).model_path("b").write_bytes(trial)
    store = StateStore(tmp_path)
    plan = UpdatePlan(
        target=ArtifactRef(
            name="m-2", url="http://x/m-2", length=len(trial), sha256=hashlib.sha256(trial).hexdigest()
        ),
        version="2",
        assignment_counter=1,
    )
    state = store.load().transition(Phase.DOWNLOADING, pending=plan, trial_slot="b")
    state = state.transition(Phase.DOWNLOADED).transition(Phase.INSTALLED_PENDING_HEALTH, active_slot="b")
    store.save(state)
    assert source.poll().version == "1"
    store.save(
        state.transition(
            Phase.COMMITTED,
            committed_slot="b",
            committed=InstalledModel.from_plan(plan),
            pending=None,
            trial_slot=None,
        )
    )
    assert source.poll().version == "2"


def test_bytes_that_are_not_the_committed_sha256_are_refused(tmp_path):
    commit(tmp_path, "a", versioned(1), "1")
    candidate = AgentStateSource(tmp_path).poll()
    candidate.path.write_bytes(versioned(2))  # the slot was rewritten after the commit
    svc = service(AgentStateSource(tmp_path))
    assert asyncio.run(svc.manager.check()) is False
    assert "sha256" in svc.manager.last_error


def test_unloadable_and_unwarmable_models_fail_with_their_stage(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    svc = service(FileSource(garbage))
    assert asyncio.run(svc.manager.check()) is False
    assert svc.manager.last_error.startswith("version 1: load:")
    good = tmp_path / "good.onnx"
    good.write_bytes(linear(1)[0])
    bad_vectors = tmp_path / "v.npz"
    bad_vectors.write_bytes(b"zip?")
    svc = service(FileSource(good, vectors=bad_vectors))
    assert asyncio.run(svc.manager.check()) is False
    assert ": vectors:" in svc.manager.last_error


def test_warm_up_runs_every_batch_size_the_batcher_may_form(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(linear(1)[0])
    config = BatchingConfig(max_batch_size=16, preferred_batch_sizes=(4, 8))
    assert config.warmup_batch_sizes == (1, 4, 8, 16)
    model = load_model(
        ModelCandidate(key="k", path=path, version="1"), name="m", batch_sizes=config.warmup_batch_sizes
    )
    assert model.batchable and model.load_s > 0
