"""The agent runs on a vehicle: importing and running it must load no heavy or server-side module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
FORBIDDEN = [
    "torch",
    "zenml",
    "mlflow",
    "sqlalchemy",
    "fastapi",
    "onnx",
    "boto3",
    "ota.server",
    "ml",
    "registry",
]

# The dev venv has every extra installed; an edge venv (`pip install .[edge]`) has none of the heavy
# packages. The script makes them unimportable, as they are on a device, and records who tried: only
# optional backends of third-party libraries (securesystemslib's AWS/GCP signers try boto3 and fall back)
# may try, and nothing may end up loaded.
SCRIPT = """
import json, sys, tempfile, pathlib, traceback
FORBIDDEN = %r
attempts = []
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
            callers = [f.filename for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename]
            attempts.append([name, callers[-1] if callers else "?"])
            raise ModuleNotFoundError(f"blocked on a device: {name}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from ota.edge.cli import agent_app  # the CLI module pulls in everything the agent runs
from ota.edge.agent import Agent
from ota.edge.active import ActiveModel
from ota.edge.config import AgentConfig
state = pathlib.Path(tempfile.mkdtemp())
agent = Agent(server_url="http://127.0.0.1:9", state_dir=state, provisioning_token="t",
              config=AgentConfig(connect_timeout_s=0.5, read_timeout_s=0.5))
result = agent.poll_once()   # enrol against a closed port: a clean error, and every code path imported
assert result.outcome == "error", result
print(json.dumps({"modules": sorted(sys.modules), "attempts": attempts}))
"""


def test_agent_imports_and_runs_without_heavy_modules():
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT % (FORBIDDEN,)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    loaded = set(report["modules"])
    offenders = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert offenders == [], offenders
    from_ota = [(name, caller) for name, caller in report["attempts"] if "/ota/" in caller]
    assert from_ota == [], from_ota
    assert "onnxruntime" in loaded and "ota.edge.agent" in loaded
