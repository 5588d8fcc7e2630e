"""Agent footprint: idle RSS and peak RSS of one real agent installing a ~40 MB model, full then as a delta.

Starts the real OTA server (``edgefleet server run`` in a child process), publishes a ~40 MB FP32 model and
rolls it out, and runs the agent in a fresh child process per phase, with the interpreter given by
``--python`` (default: this one; pass an edge venv's, ``pip install '.[edge]'``, to measure what a device
runs). Each child imports the repository's ``ota.edge`` and reports its own RSS from ``/proc/self/status``:

* ``baseline``: the interpreter with numpy and onnxruntime imported, nothing else (what any ORT app pays);
* ``full install``: enrol, download the model, install, warm up and health-check it (peak = VmHWM);
* ``delta install``: a fine-tune of every weight (about 0.1 %) offered as a delta: download, apply, install,
  health-check (peak);
* ``idle``: a fresh agent on the same state dir after one up-to-date poll (VmRSS).

Prints one table with MiB and the ratio to the baseline. Run: ``.venv/bin/python bench/agent_footprint.py
[--python /path/to/edge-venv/bin/python] [--model-mb 40]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ota.client.api import OperatorClient as OtaApi  # noqa: E402
from pipelines.demo import ota_server  # noqa: E402

PROFILE = "bench-cpu"

CHILD = r"""
import json, sys, time
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
mode, url, state_dir, token = sys.argv[1:5]
if mode == "baseline":
    import numpy, onnxruntime
    print(json.dumps({"rss": status("VmRSS"), "peak": status("VmHWM")}))
    sys.exit(0)
from ota.edge.agent import Agent
from ota.edge.config import AgentConfig
agent = Agent(server_url=url, state_dir=__import__("pathlib").Path(state_dir), provisioning_token=token,
              profile="bench-cpu", config=AgentConfig(poll_interval_min_s=0.1, poll_interval_default_s=1))
outcomes = []
for _ in range(30):
    result = agent.poll_once()
    outcomes.append(result.outcome)
    if mode == "idle" and result.outcome in {"up-to-date", "unchanged"}:
        break
    if mode != "idle" and result.outcome in {"installed", "rolled-back", "failed"}:
        break
    time.sleep(0.5)
time.sleep(1.0)
print(json.dumps({"rss": status("VmRSS"), "peak": status("VmHWM"), "outcomes": outcomes,
                  "detail": result.detail, "bytes": agent.fetcher.total_bytes_transferred}))
"""


def model_pair(megabytes: int, seed: int = 0) -> tuple[bytes, bytes]:
    """A one-layer FP32 model of about ``megabytes`` MB and the same after a light fine-tune."""
    side = int((megabytes * 1_000_000 / 4) ** 0.5)
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.05, size=(side, side)).astype(np.float32)
    tuned = (weights * (1 + rng.normal(0, 1e-3, size=weights.shape))).astype(np.float32)

    def build(w: np.ndarray) -> bytes:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], ["logits"])],
            "footprint",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, side])],
            initializer=[numpy_helper.from_array(w, "W")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return bytes(model.SerializeToString())

    return build(weights), build(tuned)


def child(python: str, mode: str, url: str, state_dir: Path, token: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [python, "-c", CHILD, mode, url, str(state_dir), token],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def wait_settled(api: OtaApi, timeout_s: float = 60.0) -> None:
    """Wait until no rollout is running (the server completes them on its background tick)."""
    deadline = time.monotonic() + timeout_s
    while any(r.state in {"running", "paused"} for r in api.rollouts()):
        if time.monotonic() > deadline:
            raise SystemExit("a rollout did not settle")
        time.sleep(0.2)


def measure(python: str, tmp: Path, v1: bytes, v2: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Run the baseline, full-install, delta-install and idle children against a fresh server."""
    state = tmp / "device"
    rows = [("baseline (python + numpy + onnxruntime)", child(python, "baseline", "", state, ""))]
    with (
        ota_server(tmp / "server") as server,
        OtaApi(base_url=server.url, token=server.operator_token) as api,
    ):
        for label, artifact, version in (("full install", v1, "1"), ("delta install", v2, "2")):
            release = api.publish_release(
                artifact, model="footprint", version=version, profile=PROFILE, source_uri=f"bench:{version}"
            ).release
            wait_settled(api)
            api.start_rollout({"release_id": release.id, "phases": [{"percent": 100}]})
            result = child(python, "install", server.url, state, server.provisioning_token)
            if result["outcomes"][-1] != "installed":
                raise SystemExit(f"{label}: the agent did not install: {result}")
            rows.append((f"{label} ({len(artifact) / 1e6:.1f} MB model, {result['detail']})", result))
        rows.append(("idle (fresh agent, one up-to-date poll)", child(python, "idle", server.url, state, "")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter the agent runs with")
    parser.add_argument("--model-mb", type=int, default=40)
    args = parser.parse_args()
    v1, v2 = model_pair(args.model_mb)
    with tempfile.TemporaryDirectory(prefix="agent-footprint-") as tmp:
        rows = measure(args.python, Path(tmp), v1, v2)
    baseline = rows[0][1]["peak"]
    table = Table(title=f"agent footprint ({args.python})")
    for column in ("phase", "bytes downloaded", "RSS MiB", "peak RSS MiB", "peak × baseline"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for label, result in rows:
        downloaded = result.get("bytes")
        table.add_row(
            label,
            "—" if downloaded is None else f"{downloaded:,}",
            f"{result['rss']:.1f}",
            f"{result['peak']:.1f}",
            f"{result['peak'] / baseline:.2f}",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
