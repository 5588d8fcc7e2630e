"""A ResNet-18-size model (≥ 40 MB FP32) through the whole release path (issue 10); a benchmark, not a test.

The training pipeline (ZenML + MLflow, SQLite, in a fresh ``$EDGEFLEET_HOME``) trains a torchvision ResNet-18
student on the digits at 3×32×32 for a few steps (the point is the size path, not accuracy) and registers
it; the profile ships FP32 (``quantize.static: false``), so the registered artifact is the 44.7 MB FP32
ResNet-18. The teacher is a ResNet-18 left untrained (``train: false``): its chance accuracy fails the
profile's ``min_accuracy`` gate, so a student variant ships. Then the demo's machinery (``pipelines.demo``)
runs: promotion, the OTA server, the release pipeline (publish, self-test vectors, staged rollout) and
``--devices`` real agents (``ota.edge.fleet``) until every device runs it. A second version is the training
pipeline with ``init_from: models:/NAME@production`` (the stored torchvision weights, fine-tuned on added
field samples at a small learning rate), released and rolled out the same way: devices take the delta.

Prints one table: per stage the wall time, and per rollout the bytes the devices downloaded, what full
downloads would have cost, and the delta's size as a fraction of the full model. Timings on a loaded
2-core machine are upper bounds.

Run: ``.venv/bin/python bench/big_release_bench.py [--devices 20] [--home DIR]`` (about 10-20 minutes here).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROFILE = "cpu-fp32-big"
MODEL = "edgefleet-big-bench"
MIN_FP32_BYTES = 40 * 1000 * 1000


def training_config(base: dict[str, Any], *, epochs: int) -> dict[str, Any]:
    """The first version's training YAML: the example's ZenML settings, tiny ResNet-18 training."""
    config = {
        "model_name": MODEL,
        "device": "cpu",
        "precision": "fp32",
        "data": {"source": "digits", "seed": 0, "input_size": [3, 32, 32]},
        "teacher": {"arch": "torchvision:resnet18", "train": False, "epochs": 0, "seed": 0},
        "student": {
            "arch": "torchvision:resnet18",
            "alpha": 0.0,  # the teacher is untrained: labels only (it is there for the pipeline's shape)
            "beta": 0.0,
            "ablation": False,
            "train": {"epochs": epochs, "lr": 0.05, "optimizer": "sgd", "batch_size": 64, "patience": 2},
        },
        # Neither pruning changes the size: both FP32 students stay ResNet-18-size.
        "prune": {
            "unstructured_sparsity": 0.0,
            "structured_ratio": 0.0,
            "fine_tune": {"epochs": 1, "lr": 0.001, "patience": 1},
        },
        "quantize": {"static": False, "dynamic": False, "qat": False},
        "benchmark": {"threads": 1, "runs": 20, "warmup": 3, "throughput_batch": 8, "throughput_runs": 2},
        "profiles": {PROFILE: {"min_accuracy": 0.3}},
    }
    return {**base, "enable_cache": False, "model": {"name": MODEL}, "parameters": {"config": config}}


def release_config(base: dict[str, Any]) -> dict[str, Any]:
    """The release YAML: staged 10 → 50 → 100 % with short soaks, vectors at the model's input size."""
    config = dict(base["parameters"]["config"])
    config |= {
        "model_name": MODEL,
        "profiles": [PROFILE],
        "data": {"source": "digits", "seed": 0, "input_size": [3, 32, 32]},
        "rollout": {
            "phases": [
                {"percent": 10, "min_reports": 1, "min_soak_seconds": 2},
                {"percent": 50, "min_reports": 3, "min_soak_seconds": 2},
                {"percent": 100, "min_reports": 5, "min_soak_seconds": 2},
            ],
            "failure_threshold": 0.2,
            "min_reports_for_abort": 2,
            "abort_action": "abort",
        },
    }
    return {**base, "enable_cache": False, "parameters": {"config": config}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="student epochs of the first version")
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="longest wait for one rollout, s")
    parser.add_argument("--home", type=Path, default=None, help="EDGEFLEET_HOME (default: a fresh temp dir)")
    args = parser.parse_args()

    scratch = None
    if args.home is None:
        scratch = tempfile.TemporaryDirectory(prefix="edgefleet-big-")
        args.home = Path(scratch.name)
    home = args.home.resolve()
    # Before the first zenml import: this process gets its own ZenML and MLflow stores.
    os.environ["EDGEFLEET_HOME"] = str(home)
    os.environ["ZENML_CONFIG_PATH"] = str(home / "zenml")
    for leaked in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "EDGEFLEET_SERVER", "EDGEFLEET_SERVER_URL"):
        os.environ.pop(leaked, None)
    try:
        run(args, home)
    finally:
        if scratch is not None:
            scratch.cleanup()


def run(args: argparse.Namespace, home: Path) -> None:
    from rich.table import Table

    from ota.client.config import OPERATOR_TOKEN_ENV, SERVER_ENV
    from ota.core.logs import quiet_library_loggers
    from pipelines.demo import (
        DemoOptions,
        console,
        drive_fleet,
        latest_rollout_id,
        load_yaml,
        make_field_data,
        ota_server,
        promote_candidate,
        retrain_config,
        run_release,
        run_training,
        write_yaml,
    )
    from pipelines.paths import configure_environment
    from registry.fetch import check_weights, fetch_model
    from registry.promotion import PRODUCTION_ALIAS
    from registry.store import registered_name

    configure_environment()
    quiet_library_loggers()
    from pipelines.stack import ensure_stack

    started = time.monotonic()
    tracking_uri = ensure_stack().tracking_uri
    work = home / "bench"
    work.mkdir(parents=True, exist_ok=True)
    example = load_yaml(REPO / "configs" / "byom-example.yaml")
    training = training_config({k: v for k, v in example.items() if k != "parameters"}, epochs=args.epochs)
    release_path = write_yaml(
        release_config(load_yaml(REPO / "configs" / "release.yaml")), work, "release.yaml"
    )
    name = registered_name(MODEL, PROFILE)
    options = DemoOptions(
        devices=args.devices,
        processes=args.processes,
        poll_interval_s=args.poll_interval,
        phase_timeout_s=args.timeout,
    )
    times: dict[str, float] = {}
    sizes: dict[str, int] = {}
    fleets: dict[str, Any] = {}

    def timed(label: str, action: Any) -> Any:
        began = time.monotonic()
        console.rule(label)
        result = action()
        times[label] = time.monotonic() - began
        return result

    def artifact_size(version: str) -> int:
        return (
            fetch_model(name, version, work / f"v{version}", tracking_uri=tracking_uri)
            .onnx_path.stat()
            .st_size
        )

    timed("train v1 (pipeline)", lambda: run_training(write_yaml(training, work, "training.yaml")))
    v1 = timed("promote v1", lambda: promote_candidate(name, tracking_uri=tracking_uri))
    sizes["v1"] = artifact_size(v1)
    console.print(f"registered {name} version {v1}: model.onnx {sizes['v1']:,} B")
    if sizes["v1"] < MIN_FP32_BYTES:
        raise SystemExit(
            f"the registered model is {sizes['v1']:,} B, below {MIN_FP32_BYTES:,}: not the size path"
        )

    with ota_server(home / "ota") as server:
        os.environ[SERVER_ENV] = server.url
        os.environ[OPERATOR_TOKEN_ENV] = server.operator_token
        fleet_dir = work / "fleet"

        def release_and_roll_out(label: str, version: str) -> None:
            timed(f"release {label} (publish + vectors + rollout start)", lambda: run_release(release_path))
            rollout = latest_rollout_id(server.url, server.operator_token, version)
            if rollout is None:
                raise SystemExit(f"no rollout of version {version} on the server")
            fleets[label] = timed(
                f"rollout {label} to {args.devices} agents (10 → 50 → 100 %)",
                lambda: drive_fleet(
                    server,
                    options,
                    profile=PROFILE,
                    fleet_dir=fleet_dir,
                    rollout_id=rollout,
                    expect_version=version,
                ),
            )

        release_and_roll_out("v1", v1)
        parent = f"models:/{name}@{PRODUCTION_ALIAS}"
        check_weights(parent, tracking_uri=tracking_uri)
        field = make_field_data(training, work / "field.npz", count=300)
        retrained = retrain_config(
            training, init_from=parent, field_data=field, epoch_fraction=0.5, lr_factor=0.1
        )
        timed(
            "fine-tune v2 (pipeline, init_from)",
            lambda: run_training(write_yaml(retrained, work, "retrain.yaml")),
        )
        v2 = timed("promote v2", lambda: promote_candidate(name, tracking_uri=tracking_uri))
        if v2 == v1:
            raise SystemExit("the fine-tune registered no new version")
        sizes["v2"] = artifact_size(v2)
        release_and_roll_out("v2", v2)
        os.environ.pop(SERVER_ENV, None)
        os.environ.pop(OPERATOR_TOKEN_ENV, None)

    table = Table(title=f"ResNet-18 FP32 ({sizes['v1'] / 1e6:.1f} MB) through release, delta and rollout")
    for column in ("stage", "wall s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for label, seconds in times.items():
        table.add_row(label, f"{seconds:.1f}")
    console.print(table)
    rollouts = Table(title=f"rollouts to {args.devices} agents")
    for column in (
        "version",
        "model B",
        "delta installs",
        "downloaded B",
        "full-only B",
        "per install",
        "of full",
    ):
        rollouts.add_column(column, justify="left" if column == "version" else "right")
    for label, fleet in fleets.items():
        totals = fleet.totals()
        downloaded, full = int(totals["bytes_downloaded"]), int(totals["full_bytes"])
        installs = int(totals["installs"]) or 1
        rollouts.add_row(
            label,
            f"{sizes[label]:,}",
            str(int(totals["delta_installs"])),
            f"{downloaded:,}",
            f"{full:,}",
            f"{downloaded / installs:,.0f}",
            f"{downloaded / full:.1%}" if full else "-",
        )
    console.print(rollouts)
    console.print(
        f"total wall time {time.monotonic() - started:.0f} s (a loaded 2-core machine: an upper bound)"
    )


if __name__ == "__main__":
    main()
