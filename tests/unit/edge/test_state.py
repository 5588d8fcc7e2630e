"""Unit tests of ota.edge.state: the transition table, invariants and strict parsing of the state file."""

from __future__ import annotations

import json

import pytest

from ota.edge.errors import StateError
from ota.edge.slots import SlotName
from ota.edge.state import (
    RESTING_PHASES,
    TRANSITIONS,
    AgentState,
    ArtifactRef,
    InstalledModel,
    Phase,
    StateStore,
    UpdatePlan,
)

SHA_A = "a" * 64
SHA_B = "b" * 64
PLAN = UpdatePlan(target=ArtifactRef(name="m/2.onnx", url="http://x/m", length=10, sha256=SHA_B), version="2")
COMMITTED = InstalledModel(sha256=SHA_A, length=5, version="1", target_name="m/1.onnx")


def _state_in(phase: Phase) -> AgentState:
    """A valid state in ``phase`` for a device with model 1 committed in slot a."""
    if phase in RESTING_PHASES:
        return AgentState(phase=phase, active_slot="a", committed_slot="a", committed=COMMITTED)
    active: SlotName = "b" if phase is Phase.INSTALLED_PENDING_HEALTH else "a"
    return AgentState(
        phase=phase, active_slot=active, committed_slot="a", committed=COMMITTED, trial_slot="b", pending=PLAN
    )


def _changes_for(target: Phase, source: Phase) -> dict:
    if target is Phase.DOWNLOADING:
        return {"pending": PLAN, "trial_slot": "b"}
    if target is Phase.INSTALLED_PENDING_HEALTH:
        return {"active_slot": "b"}
    if target is Phase.COMMITTED:
        installed = InstalledModel.from_plan(PLAN)
        return {
            "committed_slot": "b",
            "committed": installed,
            "active_slot": "b",
            "trial_slot": None,
            "pending": None,
        }
    if target in (Phase.ROLLED_BACK, Phase.IDLE):
        return {"active_slot": "a", "trial_slot": None, "pending": None}
    return {}


@pytest.mark.parametrize("source", list(Phase))
@pytest.mark.parametrize("target", list(Phase))
def test_transition_table(source: Phase, target: Phase):
    state = _state_in(source)
    if target in TRANSITIONS.get(source, frozenset()):
        new = state.transition(target, **_changes_for(target, source))
        assert new.phase is target
        # Round-trips through the file format unchanged.
        assert AgentState.from_json(json.loads(json.dumps(new.to_json()))) == new
    else:
        with pytest.raises(StateError, match="illegal transition"):
            state.transition(target, **_changes_for(target, source))


def test_an_update_may_never_target_the_committed_slot():
    with pytest.raises(StateError, match="committed slot"):
        _state_in(Phase.IDLE).transition(Phase.DOWNLOADING, pending=PLAN, trial_slot="a")


def test_switch_without_moving_the_pointer_is_refused():
    with pytest.raises(StateError, match="active slot"):
        _state_in(Phase.DOWNLOADED).transition(Phase.INSTALLED_PENDING_HEALTH)


def test_store_round_trip_and_missing_file(tmp_path):
    store = StateStore(tmp_path)
    assert store.load() == AgentState()
    state = _state_in(Phase.INSTALLED_PENDING_HEALTH)
    store.save(state)
    assert store.load() == state
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(phase="exploded"),
        lambda d: d.update(format=99),
        lambda d: d.update(active_slot="c"),
        lambda d: d.update(trial_boots="3"),
        lambda d: d.update(trial_boots=True),
        lambda d: d["pending"]["target"].update(sha256="XYZ"),
        lambda d: d["pending"]["target"].update(length=-1),
        lambda d: d.update(pending=None),
        lambda d: d.update(committed=None),
        lambda d: d.update(extra=[]),
    ],
)
def test_corrupt_documents_raise_state_error(tmp_path, mutate):
    document = _state_in(Phase.DOWNLOADING).to_json()
    mutate(document)
    (tmp_path / "state.json").write_text(json.dumps(document))
    with pytest.raises(StateError):
        StateStore(tmp_path).load()


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[]", b"null"])
def test_garbage_state_file_raises_state_error(tmp_path, raw):
    (tmp_path / "state.json").write_bytes(raw)
    with pytest.raises(StateError):
        StateStore(tmp_path).load()


def test_oversized_state_file_is_refused(tmp_path):
    (tmp_path / "state.json").write_bytes(b" " * 2_000_000)
    with pytest.raises(StateError, match="more than"):
        StateStore(tmp_path).load()


def test_plan_with_delta_needs_its_base():
    document = PLAN.to_json()
    document["delta"] = {"name": "p", "url": "http://x/p", "length": 3, "sha256": SHA_A}
    with pytest.raises(StateError, match="base"):
        UpdatePlan.from_json(document)
