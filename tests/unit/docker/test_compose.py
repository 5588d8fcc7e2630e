"""docker/compose.yaml parses, its MLflow server is the pinned client's minor, the server's bucket is made."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]


def _services() -> dict[str, dict[str, object]]:
    return yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]


def test_mlflow_server_is_the_pinned_client_minor() -> None:
    pipeline = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pin = next(d for d in pipeline["pipeline"] if d.startswith("mlflow"))
    lower = re.search(r">=(\d+)\.(\d+)", pin)
    assert lower is not None, pin
    image = str(_services()["mlflow"]["image"])
    tag = re.search(r":v(\d+)\.(\d+)\.\d+$", image)
    assert tag is not None, image
    assert tag.groups() == lower.groups()


def test_the_blob_bucket_exists_before_the_server_starts() -> None:
    services = _services()
    blob_url = services["server"]["environment"]["EDGEFLEET_BLOB_URL"]  # type: ignore[index]
    bucket = str(blob_url).removeprefix("s3://").split("/")[0]
    init = services["minio-init"]
    assert f"mc mb --ignore-existing local/{bucket}" in " ".join(init["command"])  # type: ignore[arg-type]
    depends = services["server"]["depends_on"]
    assert depends["minio-init"] == {"condition": "service_completed_successfully"}  # type: ignore[index]
