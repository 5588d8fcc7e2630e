"""Unit tests of ota.edge.ActiveModel: stable path, ready session, swap after commit, no dropped calls."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ota.edge.active import ActiveModel
from ota.edge.errors import EdgeError
from ota.edge.slots import SlotStore
from ota.edge.state import AgentState, InstalledModel, Phase, StateStore


def commit(state_dir, slot, model_bytes, version):
    slots = SlotStore(state_dir)
    slots.ensure_layout()
    slots.model_path(slot).write_bytes(model_bytes)
    import hashlib

    sha = hashlib.sha256(model_bytes).hexdigest()
    StateStore(state_dir).save(
        AgentState(
            phase=Phase.COMMITTED,
            active_slot=slot,
            committed_slot=slot,
            committed=InstalledModel(sha256=sha, length=len(model_bytes), version=version, target_name="m"),
        )
    )
    slots.point_current(slot)


def test_no_committed_model_is_a_typed_error(tmp_path):
    with pytest.raises(EdgeError):
        ActiveModel(tmp_path).session()


def test_swaps_after_commit_and_keeps_in_flight_sessions(tmp_path, linear_model):
    path1, w1, b1 = linear_model(1)
    path2, w2, b2 = linear_model(2)
    commit(tmp_path, "a", path1.read_bytes(), "1")
    active = ActiveModel(tmp_path, check_interval_s=0.0)
    x = np.ones((1, 8), dtype=np.float32)
    assert active.path.read_bytes() == path1.read_bytes()
    old_session = active.session()
    np.testing.assert_allclose(active.run({"x": x})[0], x @ w1 + b1, rtol=1e-5)

    commit(tmp_path, "b", path2.read_bytes(), "2")
    np.testing.assert_allclose(active.run({"x": x})[0], x @ w2 + b2, rtol=1e-5)
    assert active.current().version == "2"
    assert active.path.read_bytes() == path2.read_bytes()
    # A caller that took the old session before the swap can still finish with it.
    np.testing.assert_allclose(old_session.run(None, {"x": x})[0], x @ w1 + b1, rtol=1e-5)


def test_concurrent_calls_during_swaps_never_fail(tmp_path, linear_model):
    models = [linear_model(seed) for seed in (1, 2)]
    commit(tmp_path, "a", models[0][0].read_bytes(), "1")
    active = ActiveModel(tmp_path, check_interval_s=0.0)
    x = np.ones((1, 8), dtype=np.float32)
    expected = [x @ w + b for _, w, b in models]
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller():
        while not stop.is_set():
            try:
                out = active.run({"x": x})[0]
                assert any(np.allclose(out, e, rtol=1e-5) for e in expected)
            except BaseException as exc:  # collect, the main thread asserts
                errors.append(exc)
                return

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    for round_ in range(6):
        index = (round_ + 1) % 2
        commit(tmp_path, "ab"[index], models[index][0].read_bytes(), str(index + 1))
        active.refresh()
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []


def test_unloadable_new_commit_keeps_serving_the_old_model(tmp_path, linear_model):
    path1, w1, b1 = linear_model(1)
    commit(tmp_path, "a", path1.read_bytes(), "1")
    active = ActiveModel(tmp_path, check_interval_s=0.0)
    active.session()
    commit(tmp_path, "b", b"garbage", "2")
    x = np.ones((1, 8), dtype=np.float32)
    np.testing.assert_allclose(active.run({"x": x})[0], x @ w1 + b1, rtol=1e-5)
    assert active.current().version == "1"
