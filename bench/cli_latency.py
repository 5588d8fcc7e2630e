"""Wall time of the read-only registry commands (`edgefleet models list` / `show`), as a user runs them.

Builds a real MLflow SQLite store the way the training pipeline does (``registry.store.register_variant``,
three versions of one model with lineage, gates and aliases), then times each command as a fresh process,
through the MLflow-free reader (``registry/readmodel.py``) and through MLflow's client
(the venv's `edgefleet` console script), with two baselines measured in the
same run: a bare interpreter (`python -c pass`) and `python -c "import mlflow"`, the floor any command that
uses MLflow's client pays. Prints the median and min of ``--repeat`` runs and the ratio to the import floor.

    python bench/cli_latency.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import onnx
from onnx import TensorProto, helper

from registry.lineage import Lineage
from registry.store import ensure_experiment, register_variant, use_tracking_uri

MODEL = "edgefleet-bench-cpu-int8-small"


def _tiny_onnx(path: Path, scale: float) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [scale] * 4)
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def build_store(root: Path) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    use_tracking_uri(uri)
    experiment_id = ensure_experiment(uri, "edgefleet-training", artifact_location=(root / "art").as_uri())
    lineage = Lineage(
        git_commit="0" * 40,
        git_dirty=False,
        data_fingerprint="sha256:bench",
        config_hash="bench",
        pipeline_run_id="bench-run",
        teacher_model_id="m-bench",
    )
    for number in range(1, 4):
        onnx_path = _tiny_onnx(root / f"v{number}.onnx", float(number))
        with mlflow.start_run(experiment_id=experiment_id):
            register_variant(
                model_name=MODEL,
                profile="cpu-int8-small",
                variant="student-int8-static",
                onnx_path=onnx_path,
                parent_path=onnx_path,
                metrics={"accuracy": 0.97, "p50_ms": 0.3, "p99_ms": 0.5, "size_kb": 1.0},
                params={"variant": "student-int8-static"},
                lineage=lineage,
                gates={"min_accuracy": 0.95},
            )
    return uri


def _time(argv: list[str], env: dict[str, str], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        samples.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        uri = build_store(Path(tmp))
        py = sys.executable
        cli = str(Path(py).with_name("edgefleet"))
        rows = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import mlflow'": [py, "-c", "import mlflow"],
            "edgefleet --help": [cli, "--help"],
            "edgefleet models list": [cli, "models", "list", "--tracking-uri", uri],
            "edgefleet models show NAME 2": [cli, "models", "show", MODEL, "2", "--tracking-uri", uri],
            "edgefleet models show NAME candidate": [
                cli, "models", "show", MODEL, "candidate", "--tracking-uri", uri,
            ],
        }  # fmt: skip
        results = {label: _time(argv, env, args.repeat) for label, argv in rows.items()}
        # The same commands through MLflow's client (the path before registry/readmodel.py, and the one
        # taken for stores the fast reader does not handle).
        slow_env = {**env, "EDGEFLEET_REGISTRY_FAST_READ": "0"}
        for label in ("edgefleet models list", "edgefleet models show NAME 2"):
            results[f"{label} (MLflow client)"] = _time(rows[label], slow_env, args.repeat)
    floor = statistics.median(results["python -c 'import mlflow'"])
    load = os.getloadavg()[0]
    print(f"\nCLI wall time, {args.repeat} runs each, load average {load:.2f}, {os.cpu_count()} CPUs")
    print(f"{'command':46} {'median s':>9} {'min s':>7} {'÷ import mlflow':>16}")
    for label, samples in results.items():
        median = statistics.median(samples)
        print(f"{label:46} {median:9.2f} {min(samples):7.2f} {median / floor:16.2f}")


if __name__ == "__main__":
    main()
