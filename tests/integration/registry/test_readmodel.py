"""The fast reader (registry/readmodel.py) sees exactly what MLflow's client sees, and the commands print the
same thing through both paths."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import Result

from registry.errors import ModelNotFoundError
from registry.readmodel import SqlRegistryReader, open_reader
from registry.store import model_aliases, model_versions, resolve_version, version_artifacts

from .conftest import MODEL, OTHER_MODEL, Store

FIELDS = ("name", "version", "creation_timestamp", "last_updated_timestamp", "description", "user_id",
          "current_stage", "source", "run_id", "status", "status_message", "run_link")  # fmt: skip


def _reader(store: Store) -> SqlRegistryReader:
    reader = open_reader(store.uri)
    assert reader is not None
    return reader


def _same(record: object, version: object, *, aliases: bool = True) -> None:
    for name in FIELDS:
        assert getattr(record, name) == getattr(version, name), name
    assert dict(record.tags) == dict(version.tags)  # type: ignore[attr-defined]
    if aliases:  # MLflow's searches leave a version's aliases empty; its get calls fill them
        assert sorted(record.aliases) == sorted(version.aliases)  # type: ignore[attr-defined]


def test_versions_aliases_and_resolution_match_mlflow(store: Store, cli: Callable[..., Result]) -> None:
    cli("promote", MODEL, "2", "--to", "production", "--actor", "alice")
    client: MlflowClient = store.client
    reader = _reader(store)
    for model in (MODEL, OTHER_MODEL):
        fast = reader.versions(model)
        slow = model_versions(client, model)
        assert [r.version for r in fast] == [v.version for v in slow]
        for record, version in zip(fast, slow, strict=True):
            _same(record, version, aliases=False)
        assert reader.aliases(model) == model_aliases(client, model)
    for ref in ("1", "5", "candidate", "production"):
        _same(reader.resolve(MODEL, ref), resolve_version(client, MODEL, ref))
        fast_files = reader.artifacts(reader.resolve(MODEL, ref))
        assert fast_files == version_artifacts(client, resolve_version(client, MODEL, ref))


def test_errors_match_mlflow_path(store: Store) -> None:
    reader = _reader(store)
    for call, slow in (
        (lambda: reader.versions("nope"), lambda: model_versions(store.client, "nope")),
        (lambda: reader.aliases("nope"), lambda: model_aliases(store.client, "nope")),
        (lambda: reader.resolve(MODEL, "99"), lambda: resolve_version(store.client, MODEL, "99")),
        (lambda: reader.resolve(MODEL, "staging"), lambda: resolve_version(store.client, MODEL, "staging")),
    ):
        with pytest.raises(ModelNotFoundError) as fast_error:
            call()
        with pytest.raises(ModelNotFoundError) as slow_error:
            slow()
        assert str(fast_error.value) == str(slow_error.value)


def test_a_deleted_version_is_invisible(store: Store) -> None:
    store.client.delete_model_version(MODEL, "3")
    reader = _reader(store)
    assert "3" not in [r.version for r in reader.versions(MODEL)]
    with pytest.raises(ModelNotFoundError):
        reader.resolve(MODEL, "3")


@pytest.mark.parametrize(
    "args",
    [("list",), ("list", MODEL), ("show", MODEL, "3"), ("show", MODEL, "candidate"), ("show", MODEL, "nope"),
     ("list", "no-such-model")],
)  # fmt: skip
def test_commands_print_the_same_through_both_paths(
    args: tuple[str, ...], cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = cli(*args)
    monkeypatch.setenv("EDGEFLEET_REGISTRY_FAST_READ", "0")
    slow = cli(*args)
    assert fast.exit_code == slow.exit_code
    assert fast.stderr == slow.stderr
    # The age column ("3s") moves with the clock between the two calls; everything else is identical.
    assert _ageless(fast.stdout) == _ageless(slow.stdout)
    assert (fast.stdout if fast.exit_code == 0 else fast.stderr).strip()


def _ageless(text: str) -> str:
    return re.sub(r"(?<=\s)\d+[smhd](?=\s+│)", "AGE", text)


def test_a_database_error_is_a_registry_error(store: Store) -> None:
    import sqlite3

    from registry.errors import RegistryError

    reader = _reader(store)
    with sqlite3.connect(store.uri.removeprefix("sqlite:///")) as db:
        db.execute("DROP TABLE model_version_tags")
    with pytest.raises(RegistryError, match="cannot read the MLflow registry"):
        reader.versions(MODEL)
