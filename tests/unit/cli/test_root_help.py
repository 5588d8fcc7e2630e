"""The root ``edgefleet --help`` lists every group without importing any group's code (issue 14, 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ota.cli import GROUPS

REPO = Path(__file__).resolve().parents[3]

# What a group's module drags in: none of it may load for the root's help.
HEAVY = ("mlflow", "onnx", "onnxruntime", "zenml", "torch", "fastapi", "sqlalchemy", "boto3", "httpx")
GROUP_PACKAGES = ("pipelines", "registry", "steps", "ml", "ota.server", "ota.edge", "ota.core")

PROBE = """
import json, sys
from ota.cli import app
try:
    app(["--help"], prog_name="edgefleet")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_root_help() -> tuple[set[str], str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    *help_lines, modules = result.stdout.strip().splitlines()
    return set(json.loads(modules)), "\n".join(help_lines)


def test_root_help_lists_every_group_and_imports_no_group() -> None:
    modules, help_text = _modules_after_root_help()
    for name, (_, one_line) in GROUPS.items():
        assert name in help_text
        assert one_line.split()[0] in help_text
    loaded_heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert loaded_heavy == []
    loaded_groups = sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in GROUP_PACKAGES))
    assert loaded_groups == []


def test_a_group_still_loads_on_use() -> None:
    from typer.testing import CliRunner

    from ota.cli import app

    result = CliRunner().invoke(app, ["delta", "--help"])
    assert result.exit_code == 0, result.output
    assert "make" in result.output
