"""What `make run` prints after the training pipeline: variants, registered versions, and where to look.

Every figure is read back from the stores (ZenML's last successful run, MLflow's registry), not from the
process that ran the pipeline, so the summary is also what a colleague sees later. Importing this module
imports zenml: an entry point calls ``pipelines.paths.configure_environment`` first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from zenml.client import Client
from zenml.enums import ExecutionStatus

from pipelines.paths import edgefleet_home
from registry.store import client_for

BASELINE = "teacher-torch-eager"


def _last_successful_run(pipeline_name: str) -> Any:
    runs = Client().list_pipeline_runs(
        pipeline_name=pipeline_name, status=ExecutionStatus.COMPLETED, sort_by="desc:created", size=1
    )
    if not runs.items:
        raise LookupError(f"no completed run of {pipeline_name} in this ZenML store")
    return runs.items[0]


def variants_table(benchmark: list[dict[str, Any]], skipped: Mapping[str, str] | None = None) -> Table:
    """Accuracy, size, P50, P99, throughput, and ratios to the PyTorch-eager teacher, per variant.

    ``skipped`` (variant → ``"skipped: reason"``, e.g. QAT of a torchvision net) adds a row per variant the
    config asked for but the network cannot have, with its reason in a last column.
    """
    skipped = dict(skipped or {})
    baseline = next(row for row in benchmark if row["name"] == BASELINE)
    table = Table(title="Variants (batch-1 latency on ONNX Runtime; baseline: teacher in PyTorch eager)")
    for column in (
        "variant",
        "accuracy",
        "size KiB",
        "P50 ms",
        "P99 ms",
        "samples/s",
        "P50 speed-up",
        "size ratio",
        *(("note",) if skipped else ()),
    ):
        table.add_column(column, justify="left" if column in ("variant", "note") else "right")
    for row in benchmark:
        accuracy = row.get("accuracy")
        table.add_row(
            row["name"],
            f"{accuracy * 100:.2f} %" if accuracy is not None else "-",
            f"{row['size_bytes'] / 1024:,.1f}",
            f"{row['p50_ms']:.4f}",
            f"{row['p99_ms']:.4f}",
            f"{row['throughput_sps']:,.0f}",
            f"{baseline['p50_ms'] / row['p50_ms']:.1f}×",
            f"1/{baseline['size_bytes'] / row['size_bytes']:.1f}",
            *(("",) if skipped else ()),
        )
    for name, reason in skipped.items():
        table.add_row(name, *(["-"] * 7), reason)
    return table


def skipped_variants(run: Any) -> dict[str, str]:
    """Variant → reason for what ``build_variants`` skipped, from its step's run metadata (``skipped.*``)."""
    step = run.steps.get("build_variants")
    metadata = getattr(step, "run_metadata", None) or {}
    return {
        key.removeprefix("skipped."): str(value)
        for key, value in metadata.items()
        if isinstance(key, str) and key.startswith("skipped.")
    }


def print_summary(console: Console, *, pipeline_name: str = "training_pipeline") -> None:
    """Print the last run's variants, the registered versions with aliases, and the UI commands.

    Raises:
        LookupError: No completed run of the pipeline exists.
    """
    run = _last_successful_run(pipeline_name)
    benchmark = run.steps["benchmark_variants"].outputs["benchmark"][0].load()
    registered = run.steps["register_models"].outputs["registered_versions"][0].load()
    console.print(f"ZenML run [bold]{run.name}[/] ({run.id})")
    console.print(variants_table(benchmark, skipped_variants(run)))
    versions = Table(title="Registered in MLflow")
    for column in ("profile", "registered model", "version", "variant", "aliases", "new"):
        versions.add_column(column)
    client = client_for()
    for profile, entry in registered.items():
        model = client.get_registered_model(entry["name"])
        aliases = sorted(a for a, v in model.aliases.items() if str(v) == entry["version"])
        versions.add_row(
            profile, entry["name"], entry["version"], entry["variant"], ", ".join(aliases), entry["created"]
        )
    console.print(versions)
    console.print("Look at the results:")
    for line in ui_commands(client.tracking_uri):
        console.print(f"  {line}")


def ui_commands(tracking_uri: str) -> list[str]:
    """The exact commands that open the MLflow UI and the ZenML dashboard on this project's stores."""
    zenml_config = edgefleet_home() / "zenml"
    return [
        f"MLflow UI:        .venv/bin/mlflow ui --backend-store-uri {tracking_uri} --port 5000",
        f"ZenML dashboard:  ZENML_CONFIG_PATH={zenml_config} .venv/bin/zenml login --local --port 8237",
    ]
