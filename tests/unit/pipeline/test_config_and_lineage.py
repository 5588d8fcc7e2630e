"""Unit tests of the pipeline config model and the lineage helpers (no ZenML, no MLflow server)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ml.config import TrainingPipelineConfig
from registry.lineage import Lineage, config_hash, git_state

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize("name", ["default.yaml", "ci.yaml", "production.example.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    document = yaml.safe_load((CONFIGS / name).read_text())
    config = TrainingPipelineConfig.model_validate(document["parameters"]["config"])
    assert config.profiles, "every config declares at least one target profile"
    assert config.model_name == document["model"]["name"]


def test_unknown_key_is_refused_with_its_name() -> None:
    with pytest.raises(ValidationError, match="tempreature"):
        TrainingPipelineConfig.model_validate({"student": {"tempreature": 3}})


def test_out_of_range_value_is_refused() -> None:
    with pytest.raises(ValidationError, match="alpha"):
        TrainingPipelineConfig.model_validate({"student": {"alpha": 1.5}})


def test_config_hash_ignores_key_order_but_not_values() -> None:
    a = {"x": 1, "y": {"b": 2, "a": 3}}
    b = {"y": {"a": 3, "b": 2}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "x": 2})


def test_lineage_tags_are_prefixed_strings() -> None:
    lineage = Lineage("abc", True, "f" * 64, "c" * 64, "run-1", "m-1")
    tags = lineage.as_tags()
    assert tags["edgefleet.lineage.git_dirty"] == "true"
    assert tags["edgefleet.lineage.data_fingerprint"] == "f" * 64
    assert all(isinstance(v, str) for v in tags.values())


def test_git_state_reads_commit_and_dirty_flag(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x")
    (tmp_path / "f.txt").write_text("1")
    git("add", "f.txt")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "y")
    commit, dirty = git_state(tmp_path)
    assert commit == git("rev-parse", "HEAD").strip()
    assert dirty is False
    (tmp_path / "f.txt").write_text("2")
    assert git_state(tmp_path) == (commit, True)


def test_git_state_outside_a_checkout_is_unknown_and_dirty(tmp_path: Path) -> None:
    assert git_state(tmp_path) == ("unknown", True)


@pytest.mark.parametrize(
    "uri", ["models:/edgefleet-digits-cpu-int8-small/3", "models:/edgefleet-digits-cpu-int8-small@production"]
)
def test_init_from_accepts_registry_versions_and_aliases(uri: str) -> None:
    assert TrainingPipelineConfig.model_validate({"init_from": uri}).init_from == uri
    assert TrainingPipelineConfig().init_from is None
    assert TrainingPipelineConfig().init_teacher == "reuse"
    with pytest.raises(ValidationError, match="init_teacher"):
        TrainingPipelineConfig.model_validate({"init_from": uri, "init_teacher": "retrain"})


@pytest.mark.parametrize(
    "uri", ["edgefleet-digits/3", "models:/name", "models:/name/latest", "runs:/abc/model", "models:/m-1234"]
)
def test_init_from_refuses_what_is_not_a_registry_version(uri: str) -> None:
    with pytest.raises(ValidationError, match="init_from"):
        TrainingPipelineConfig.model_validate({"init_from": uri})


def test_lineage_names_the_parent_of_a_fine_tune_only() -> None:
    scratch = Lineage("abc", False, "f" * 64, "c" * 64, "run-1", "m-1").as_tags()
    assert "edgefleet.lineage.init_from" not in scratch
    tuned = Lineage("abc", False, "f" * 64, "c" * 64, "run-2", "m-2", init_from="models:/m/1").as_tags()
    assert tuned["edgefleet.lineage.init_from"] == "models:/m/1"
