"""The full ``make run`` demo on embedded defaults: train → promote → OTA server → release → fleet → second
version with deltas → broken third version auto-aborted → summary read back from the stores.

Run it with ``python -m pipelines.demo`` (``make run``); ``tests/e2e`` runs a reduced one through
:func:`run_demo`. Orchestration only: training and release are the ZenML pipelines, promotion is
``registry.promotion``, the server is ``edgefleet server run`` in a child process (SQLite and a local
folder under ``$EDGEFLEET_HOME/ota``, stopped in a ``finally``), the fleet is ``ota.edge.fleet``.

The second version is a fine-tune of the first, the way a team updates a deployed model: the training
pipeline again with ``init_from: models:/NAME@production`` (the pruned student starts from the first
version's stored weights and distils from its teacher, reused unchanged; it is not pruned again and is
re-quantized the way the first version was), a fifth of the epochs at a small learning rate, on new
data: simulated field samples (``ml.field``: shifted, re-gained, noisy copies of training images only)
added to the training split, so its data fingerprint differs while validation and test stay those the
first version was scored on. Same graph, slightly moved weights: that is what makes deltas pay.

The third version is the second one with a slow side branch grafted onto its graph (a chain of large
MatMuls multiplied by zero): identical logits, so it sails through the registry's gates and the
release pipeline's self-test vectors, but its latency blows the device's health-check budget. Devices
roll it back and the server's abort rule stops the rollout.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from ml.errors import ExportError
from ml.slow_model import make_slow_model
from ota.client.config import OPERATOR_TOKEN_ENV, SERVER_ENV
from ota.client.errors import ClientError
from ota.core.logs import LOG_LEVEL_ENV, quiet_library_loggers
from ota.edge.errors import EdgeError
from ota.edge.fleet import FleetOptions, FleetSummary
from ota.edge.fleet_driver import drive_rollout, latest_rollout_id
from ota.server.testing import ServerProcess, ServerStartError, serve_process
from pipelines.demo_config import ConfigError, load_yaml, make_field_data, retrain_config, write_yaml
from pipelines.demo_report import DemoSummary, RolloutRun, collect, print_summary, write_json
from pipelines.paths import configure_environment, edgefleet_home
from registry.errors import PromotionRefusedError, RegistryError
from registry.fetch import VersionFacts, check_weights, fetch_model, version_facts
from registry.lineage import Lineage
from registry.policy import PRODUCTION_ALIAS
from registry.promotion import promote, rollback
from registry.store import client_for, register_variant, registered_name, version_metrics

# Wide enough for the summary tables when output goes to a pipe or a CI log rather than a terminal.
console = Console(width=None if Console().is_terminal else 160)
REPO = Path(__file__).resolve().parents[1]
BROKEN_REASON = "demo: deliberately broken third version (slow graph) to show the fleet-side abort"


class DemoError(RuntimeError):
    """A demo phase did not reach its goal (server did not start, fleet did not converge, ...)."""


# What a phase raises when it fails the way a user can fix: printed as one line, exit code 1.
DEMO_ERRORS = (DemoError, ConfigError, ExportError, RegistryError, ServerStartError, EdgeError, ClientError)


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs.

    Attributes:
        training_config: YAML of the training pipeline (first version; the second re-draws its split).
        release_config: YAML of the release pipeline (model name is taken from the training config).
        devices: Simulated agents.
        processes: Worker processes of the fleet simulator.
        poll_interval_s: Agent poll period. Not below ~3 s for 50 agents: ``simulate_fleet`` drains its
            event queue until 0.2 s pass without an event, so a busier fleet never lets it check its
            stop condition or deadline (reported upstream to the edge worker).
        phase_timeout_s: Longest wait for one rollout to settle.
        slow_matmuls: Size of the broken version's slow branch (MatMuls of 1024×1024).
        finetune_epoch_fraction: The second version fine-tunes for this share of the first one's epochs.
        finetune_lr_factor: ... at the first one's learning rates times this factor.
        field_samples: Simulated field samples added to the second version's training data.
    """

    training_config: Path = REPO / "configs" / "default.yaml"
    release_config: Path = REPO / "configs" / "release.yaml"
    devices: int = 50
    processes: int = 2
    poll_interval_s: float = 3.0
    phase_timeout_s: float = 240.0
    slow_matmuls: int = 48
    finetune_epoch_fraction: float = 0.2
    finetune_lr_factor: float = 0.03
    field_samples: int = 600


# ---- configs -------------------------------------------------------------------------------------------


# ---- pipelines -----------------------------------------------------------------------------------------


def run_training(config_path: Path) -> None:
    """Run the training pipeline with ``config_path`` in this process (ZenML shows step progress)."""
    from pipelines.training import training_pipeline

    training_pipeline.with_options(config_path=str(config_path))()


def run_release(config_path: Path) -> None:
    """Run the release pipeline with ``config_path`` in this process."""
    from pipelines.release import release_pipeline

    release_pipeline.with_options(config_path=str(config_path))()


def promote_candidate(name: str, *, tracking_uri: str, reason: str | None = None) -> str:
    """Promote ``candidate`` to production; if a check refuses, show the table and force with the reason.

    Returns:
        The promoted version number.

    Raises:
        RegistryError: MLflow refused to move the alias.
    """
    client = client_for(tracking_uri)
    try:
        result = promote(client, name, "candidate", to=PRODUCTION_ALIAS, reason=reason, actor="make-run-demo")
    except PromotionRefusedError as exc:
        console.print(f"[yellow]promotion refused[/yellow]\n{exc}")
        why = reason or "make run demo: shown refused above; promoted anyway so the demo can go on"
        result = promote(
            client, name, "candidate", to=PRODUCTION_ALIAS, force=True, reason=why, actor="make-run-demo"
        )
    console.print(
        f"promoted {name} version {result.version} to production"
        + (f" (was {result.replaced_version})" if result.replaced_version else "")
        + (" [yellow]forced[/yellow]" if result.forced else "")
    )
    return result.version


# ---- the broken version --------------------------------------------------------------------------------


def register_broken(name: str, base: VersionFacts, *, tracking_uri: str, work: Path, matmuls: int) -> str:
    """Register a slow copy of ``base`` as a new version (alias candidate), with ``base``'s metrics.

    Returns:
        The new version number.

    Raises:
        RegistryError: MLflow refused, or the base artifact cannot be fetched.
    """
    fetched = fetch_model(name, base.version, work, tracking_uri=tracking_uri)
    broken = work / f"{name}-broken.onnx"
    make_slow_model(fetched.onnx_path, broken, matmuls=matmuls)
    lineage = Lineage(
        git_commit=base.lineage.get("git_commit", "unknown"),
        git_dirty=base.lineage.get("git_dirty", "true") == "true",
        data_fingerprint=base.data_fingerprint,
        config_hash=base.lineage.get("config_hash", "unknown"),
        pipeline_run_id="make-run-demo-broken",
        teacher_model_id=base.lineage.get("teacher_model_id", ""),
        init_from=base.model_uri,  # same weights as the base, with a slow branch grafted on
    )
    client = client_for(tracking_uri)
    metrics = version_metrics(client.get_model_version(name, base.version))
    gates = {
        k.removeprefix("edgefleet.gate."): float(v)
        for k, v in base.tags.items()
        if k.startswith("edgefleet.gate.")
    }
    registered = register_variant(
        model_name=name,
        profile=base.profile,
        variant=f"{base.tags.get('edgefleet.variant', 'variant')}-broken",
        onnx_path=broken,
        parent_path=fetched.onnx_path,
        metrics=metrics,
        params={"variant": "broken", "broken_reason": BROKEN_REASON},
        lineage=lineage,
        gates=gates,
        experiment_name="edgefleet-training",
    )
    return registered.version


# ---- the OTA server and the fleet ----------------------------------------------------------------------


@contextmanager
def ota_server(home: Path, *, fresh: bool = True) -> Iterator[ServerProcess]:
    """``edgefleet server run`` in a child process with its state under ``home`` (ota.server.testing).

    Raises:
        ServerStartError: The server did not answer within 60 s.
    """
    with serve_process(home, label="make-run-demo", fresh=fresh) as server:
        console.print(f"OTA server up at {server.url} (state in {home}, log {home / 'server.log'})")
        yield server
    console.print("OTA server stopped")


def drive_fleet(
    server: ServerProcess,
    options: DemoOptions,
    *,
    profile: str,
    fleet_dir: Path,
    rollout_id: str,
    expect_version: str,
) -> FleetSummary:
    """Run the demo's fleet until the rollout is final and every device runs ``expect_version``.

    Raises:
        RolloutNotSettledError: The rollout did not settle within ``phase_timeout_s``.
    """
    fleet = FleetOptions(
        server=server.url,
        devices=options.devices,
        provisioning_token=server.provisioning_token,
        processes=options.processes,
        duration_s=options.phase_timeout_s,
        poll_interval_s=options.poll_interval_s,
        work_dir=fleet_dir,
        profile=profile,
        show_progress=True,
    )
    return drive_rollout(
        fleet, operator_token=server.operator_token, rollout_id=rollout_id, expect_version=expect_version
    )


# ---- fleet phases --------------------------------------------------------------------------------------


# ---- the demo ------------------------------------------------------------------------------------------


def run_demo(options: DemoOptions) -> DemoSummary:
    """Run every phase of the demo and return the summary read back from the stores.

    Raises:
        DemoError: A phase did not reach its goal.
        RegistryError: MLflow refused a promotion or registration.
    """
    # Before the first zenml import of this process (pipelines.stack, pipelines.summary): ZenML reads its
    # config path once. The demo's fleet workers are spawned and re-import this module, so nothing of this
    # runs at import time.
    configure_environment()
    # ZenML turns the root logger to INFO; every poll of the fleet would print an `HTTP Request:` line.
    quiet_library_loggers()
    from pipelines.stack import ensure_stack, ensure_tracking_uri
    from pipelines.summary import print_summary as print_training_summary

    started = time.monotonic()
    home = edgefleet_home()
    work = home / "demo"
    work.mkdir(parents=True, exist_ok=True)
    training = load_yaml(options.training_config)
    release = load_yaml(options.release_config)
    model_name_base = training["parameters"]["config"]["model_name"]
    release["parameters"]["config"]["model_name"] = model_name_base
    profile = release["parameters"]["config"].get("profiles", ["cpu-int8-small"])[0]
    release["parameters"]["config"]["profiles"] = [profile]
    name = registered_name(model_name_base, profile)
    release_path = write_yaml(release, work, "release.yaml")
    tracking_uri = ensure_stack().tracking_uri
    summary = DemoSummary(model_name=name, profile=profile, server_home=home / "ota")
    fleet_dir = home / "fleet"
    if fleet_dir.exists():
        shutil.rmtree(fleet_dir)  # devices start empty, like the fresh server they enrol with

    _stage("1/8 training pipeline (first version)")
    # Both trainings run uncached: a cached run does not run register_models, so the registry would keep
    # what an earlier `make run` left (its candidate withdrawn by the rollback) and promotion would fail.
    run_training(write_yaml({**training, "enable_cache": False}, work, "training.yaml"))
    ensure_tracking_uri()
    print_training_summary(console)
    _stage("2/8 promote the candidate")
    summary.versions["v1"] = promote_candidate(name, tracking_uri=tracking_uri)

    _stage("3/8 start the OTA server")
    with ota_server(home / "ota") as server:
        os.environ[SERVER_ENV] = server.url
        os.environ[OPERATOR_TOKEN_ENV] = server.operator_token

        def release_and_roll_out(label: str, version: str, *, settle_on: str) -> str:
            """Release ``version``, then drive the fleet until every device runs ``settle_on``."""
            run_release(release_path)
            rollout = latest_rollout_id(server.url, server.operator_token, version)
            if rollout is None:
                raise DemoError(f"no rollout of version {version} on the server")
            fleet = drive_fleet(
                server,
                options,
                profile=profile,
                fleet_dir=fleet_dir,
                rollout_id=rollout,
                expect_version=settle_on,
            )
            summary.rollouts.append(RolloutRun(label, version, rollout, fleet))
            return rollout

        try:
            _stage("4/8 release pipeline + staged rollout of the first version")
            release_and_roll_out("first", summary.versions["v1"], settle_on=summary.versions["v1"])

            _stage("5/8 fine-tune a second version from production on new field data")
            field_data = make_field_data(training, work / "field-data.npz", count=options.field_samples)
            parent = f"models:/{name}@{PRODUCTION_ALIAS}"
            check_weights(parent, tracking_uri=tracking_uri)  # a clear error now, not inside a step
            console.print(
                f"fine-tune of {parent} (version {summary.versions['v1']}) with its teacher: "
                f"{options.finetune_epoch_fraction:.0%} of the epochs at "
                f"{options.finetune_lr_factor:g}× the learning rate, {options.field_samples} field samples "
                f"({field_data}) added to the training split"
            )
            retrained = retrain_config(
                training,
                init_from=parent,
                field_data=field_data,
                epoch_fraction=options.finetune_epoch_fraction,
                lr_factor=options.finetune_lr_factor,
            )
            retrain = write_yaml({**retrained, "enable_cache": False}, work, "retrain.yaml")
            run_training(retrain)
            _stage("6/8 promote and roll out the second version (devices take deltas)")
            summary.versions["v2"] = promote_candidate(name, tracking_uri=tracking_uri)
            if summary.versions["v2"] == summary.versions["v1"]:
                raise DemoError("the retrained model is byte-identical to the first one; nothing to roll out")
            release_and_roll_out("second", summary.versions["v2"], settle_on=summary.versions["v2"])

            _stage("7/8 roll out a deliberately broken third version")
            base = version_facts(name, summary.versions["v2"], tracking_uri=tracking_uri)
            summary.versions["v3"] = register_broken(
                name, base, tracking_uri=tracking_uri, work=work / "broken", matmuls=options.slow_matmuls
            )
            promote_candidate(name, tracking_uri=tracking_uri, reason=BROKEN_REASON)
            rollout = release_and_roll_out("broken", summary.versions["v3"], settle_on=summary.versions["v2"])
            restored = rollback(
                client_for(tracking_uri),
                name,
                reason=f"OTA rollout {rollout} auto-aborted",
                actor="make-run-demo",
            )
            console.print(
                f"registry: production moved back from {restored.demoted_version} "
                f"to {restored.restored_version}"
            )

            _stage("8/8 summary (read back from the OTA server and MLflow)")
            collect(summary, server, tracking_uri=tracking_uri)
            write_json(summary.to_json(), work / "summary.json")
        finally:
            os.environ.pop(OPERATOR_TOKEN_ENV, None)
            os.environ.pop(SERVER_ENV, None)
    print_summary(summary, elapsed_s=time.monotonic() - started, console=console)
    return summary


def _stage(title: str) -> None:
    console.print(Rule(f"[bold]{title}[/bold]"))


def main() -> None:
    """``python -m pipelines.demo [-v] [TRAINING_YAML [RELEASE_YAML [DEVICES]]]``: the ``make run`` demo.

    ``-v`` lets library loggers (httpx, alembic, ...) through at DEBUG, in the fleet's workers too.
    """
    args = [arg for arg in sys.argv[1:] if arg not in ("-v", "--verbose")]
    if len(args) < len(sys.argv) - 1:
        os.environ[LOG_LEVEL_ENV] = "DEBUG"  # the environment is what reaches the spawned fleet workers
    options = DemoOptions()
    if args:
        options = DemoOptions(
            training_config=Path(args[0]),
            release_config=Path(args[1]) if len(args) > 1 else options.release_config,
            devices=int(args[2]) if len(args) > 2 else options.devices,
        )

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # so the finally blocks stop the OTA server on `kill` too

    signal.signal(signal.SIGTERM, stop)
    try:
        run_demo(options)
    except (
        DemoError,
        ConfigError,
        ExportError,
        RegistryError,
        ServerStartError,
        EdgeError,
        ClientError,
    ) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
