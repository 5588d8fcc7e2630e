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

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import helper, numpy_helper
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from ota.client.api import OperatorClient
from ota.client.config import OPERATOR_TOKEN_ENV, SERVER_ENV
from ota.core.logs import LOG_LEVEL_ENV, quiet_library_loggers
from ota.edge.fleet import FleetOptions, FleetSummary, simulate_fleet
from ota.server.status_cli import RolloutReport, render_report, rollout_report
from pipelines.paths import configure_environment, default_tracking_uri, edgefleet_home
from registry.errors import PromotionRefusedError, RegistryError
from registry.fetch import VersionFacts, check_weights, fetch_model, version_facts
from registry.fields import PRODUCTION_ALIAS, version_metrics
from registry.lineage import Lineage
from registry.promotion import promote, rollback
from registry.store import client_for, register_variant, registered_name
from registry.trace import TraceChain, render_trace, trace_device

# Wide enough for the summary tables when output goes to a pipe or a CI log rather than a terminal.
console = Console(width=None if Console().is_terminal else 160)
REPO = Path(__file__).resolve().parents[1]
TERMINAL_STATES = frozenset({"completed", "aborted", "rolled-back"})
BROKEN_REASON = "demo: deliberately broken third version (slow graph) to show the fleet-side abort"


class DemoError(RuntimeError):
    """A demo phase did not reach its goal (server did not start, fleet did not converge, ...)."""


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


@dataclass
class RolloutRun:
    """One rollout the demo drove, with what the fleet and the server said about it."""

    label: str
    version: str
    rollout_id: str
    fleet: FleetSummary
    report: RolloutReport | None = None


@dataclass
class DemoSummary:
    """Everything the demo's closing summary prints, read back from the stores."""

    model_name: str
    profile: str
    versions: dict[str, str] = field(default_factory=dict)  # label → MLflow version
    rollouts: list[RolloutRun] = field(default_factory=list)
    device_versions: dict[str, str] = field(default_factory=dict)  # device → MLflow version (server view)
    trace: TraceChain | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, dict[str, str]] = field(default_factory=dict)  # label → facts read from MLflow
    server_home: Path = Path()

    def per_version(self) -> Counter[str]:
        """How many devices run each version, per the OTA server."""
        return Counter(self.device_versions.values())

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-able data (written to ``$EDGEFLEET_HOME/demo/summary.json``)."""
        return {
            "model_name": self.model_name,
            "profile": self.profile,
            "versions": self.versions,
            "aliases": self.aliases,
            "lineage": self.lineage,
            "devices_per_version": dict(self.per_version()),
            "device_versions": self.device_versions,
            "rollouts": [
                {
                    "label": run.label,
                    "version": run.version,
                    "rollout_id": run.rollout_id,
                    "fleet": run.fleet.totals(),
                    "report": None if run.report is None else run.report.to_json(),
                }
                for run in self.rollouts
            ],
            "trace": None if self.trace is None else self.trace.as_dict(),
            "server_home": str(self.server_home),
        }


# ---- configs -------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a pipeline YAML file.

    Raises:
        DemoError: Missing file or not a mapping.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DemoError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DemoError(f"{path} is not a YAML mapping")
    return data


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def write_yaml(data: dict[str, Any], folder: Path, name: str) -> Path:
    """Write a derived config beside the demo state (atomically) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
        handle.flush()
        os.fsync(handle.fileno())
    Path(handle.name).replace(path)
    return path


def _fine_tune_settings(section: Any, epoch_fraction: float, lr_factor: float) -> Any:
    """Every optimiser block (a mapping with ``epochs``) shortened and slowed down, recursively."""
    if not isinstance(section, dict):
        return section
    changed = {key: _fine_tune_settings(value, epoch_fraction, lr_factor) for key, value in section.items()}
    if isinstance(changed.get("epochs"), int):
        changed["epochs"] = max(1, round(changed["epochs"] * epoch_fraction))
        if isinstance(changed.get("patience"), int):
            changed["patience"] = min(changed["patience"], changed["epochs"])
        if isinstance(changed.get("lr"), int | float):
            changed["lr"] = float(f"{changed['lr'] * lr_factor:.3g}")
    return changed


def retrain_config(
    training: dict[str, Any],
    *,
    init_from: str,
    field_data: Path,
    epoch_fraction: float,
    lr_factor: float,
) -> dict[str, Any]:
    """The second version's training YAML: a short, slow fine-tune of ``init_from`` with field data added.

    The parent's teacher is reused as it is. Every optimiser block gets ``epoch_fraction`` of its epochs and
    ``lr_factor`` times its learning rate (the student's is the one that trains);
    ``field_data`` joins the training split only (validation and test stay the first version's); the KD
    ablation is skipped. Pruning settings stay but are not applied: ``init_from`` keeps the parent's
    pruned architecture.
    """
    params = training["parameters"]["config"]
    data = dict(params.get("data") or {})
    data["extra_train"] = [*(data.get("extra_train") or []), str(field_data)]
    changed = _merge(
        _fine_tune_settings(params, epoch_fraction, lr_factor),
        {"init_from": init_from, "init_teacher": "reuse", "data": data, "student": {"ablation": False}},
    )
    return {**training, "parameters": {"config": changed}}


def make_field_data(training: dict[str, Any], destination: Path, *, count: int) -> Path:
    """Write the simulated field data set (``ml.field``) for the training config's data source.

    Only rows of the training split the config's seed and fractions make are used, so no validation or
    test image reaches the fine-tune.

    Raises:
        DataError: The source cannot be loaded or split.
    """
    from ml.config import DataConfig
    from ml.field import make_field_set, write_npz

    data = DataConfig.model_validate(training["parameters"]["config"].get("data") or {})
    arrays = make_field_set(
        data.source,
        count=count,
        seed=data.seed + 1,
        split_seed=data.seed,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
    )
    return write_npz(destination, arrays)


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


def make_slow_model(source: Path, destination: Path, *, matmuls: int, size: int = 1024) -> None:
    """Graft a slow branch onto ``source``: logits + 0·Σ(chain of ``matmuls`` size×size MatMuls of the input).

    The outputs are unchanged (the branch is multiplied by zero at run time, which ONNX Runtime does not
    fold away because it depends on the input), so only the latency tells the models apart.

    Raises:
        DemoError: The source has not exactly one input and one output.
    """
    model = onnx.load(str(source))
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise DemoError(f"{source} must have one input and one output to be made slow")
    x, y = graph.input[0].name, graph.output[0].name
    renamed = f"{y}__fast"
    for node in graph.node:
        node.output[:] = [renamed if out == y else out for out in node.output]
    weights = np.full((size, size), 1.0 / size, dtype=np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(weights, "slow_w"),
            numpy_helper.from_array(np.array([size, size], dtype=np.int64), "slow_shape"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "slow_zero"),
        ]
    )
    nodes = [
        helper.make_node("ReduceSum", [x], ["slow_s"], keepdims=0),
        helper.make_node("Expand", ["slow_s", "slow_shape"], ["slow_m0"]),
    ]
    for index in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_m{index}", "slow_w"], [f"slow_m{index + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_m{matmuls}"], ["slow_total"], keepdims=0),
        helper.make_node("Mul", ["slow_total", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", [renamed, "slow_nothing"], [y]),
    ]
    graph.node.extend(nodes)
    del graph.value_info[:]  # shapes of renamed tensors are re-inferred by ORT
    onnx.checker.check_model(model)
    staged = destination.with_suffix(".part")
    onnx.save(model, str(staged))
    staged.replace(destination)


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


# ---- the OTA server ------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningServer:
    """The demo's OTA server: URL, state folder and tokens."""

    url: str
    home: Path
    operator_token: str
    provisioning_token: str


def server_environment(home: Path, port: int) -> dict[str, str]:
    """Settings for a demo server: state under ``home``, fast rollout ticks, no poll jitter."""
    return {
        "EDGEFLEET_HOME": str(home),
        "EDGEFLEET_PORT": str(port),
        "EDGEFLEET_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "EDGEFLEET_POLL_INTERVAL": "1",
        "EDGEFLEET_POLL_JITTER": "0",
        "EDGEFLEET_ROLLOUT_TICK_INTERVAL": "0.5",
        "EDGEFLEET_CACHE_REFRESH_INTERVAL": "0.2",
    }


def create_tokens(home: Path) -> tuple[str, str]:
    """Migrate the server's database and create an operator (admin) and an auto-accept provisioning token.

    Raises:
        ServerError: The database or key folder cannot be prepared.
    """
    from ota.server.auth import create_operator_token, create_provisioning_token
    from ota.server.context import build_context
    from ota.server.db import transaction
    from ota.server.settings import load_settings

    ctx = build_context(load_settings(home=home), migrate=True)
    try:
        with transaction(ctx.sessions) as session:
            _row, operator = create_operator_token(session, name="make-run-demo", scopes=["admin"])
            _prow, provisioning = create_provisioning_token(session, name="make-run-demo", auto_accept=True)
    finally:
        ctx.close()
    return operator, provisioning


@contextmanager
def ota_server(home: Path, *, fresh: bool = True) -> Iterator[RunningServer]:
    """Start ``edgefleet server run`` in a child process; stop it (its whole process group) on exit.

    Args:
        home: The server's state folder.
        fresh: Delete the folder first (the demo's server starts from nothing; the folder holds only
            demo state). False reopens an earlier demo's server, e.g. to trace its devices.

    Raises:
        DemoError: The server did not answer within 60 s.
    """
    if fresh and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, **server_environment(home, port)}
    operator, provisioning = create_tokens(home)
    log = (home / "server.log").open("ab")
    executable = Path(sys.executable).with_name("edgefleet")
    command = (
        [str(executable)]
        if executable.exists()
        else [sys.executable, "-c", "from ota.cli import main; main()"]
    )
    process = subprocess.Popen(
        [*command, "server", "run", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stopping it stops uvicorn's children too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, process, home / "server.log")
        console.print(f"OTA server up at {url} (state in {home}, log {home / 'server.log'})")
        yield RunningServer(url=url, home=home, operator_token=operator, provisioning_token=provisioning)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()
        console.print("OTA server stopped")


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the OTA server exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/v1/tuf/1.root.json", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise DemoError(f"the OTA server did not answer within 60 s; see {log}")


# ---- fleet phases --------------------------------------------------------------------------------------


def _throttled(
    check: Callable[[], bool], every_s: float = 0.5, hold_s: float = 0.0
) -> Callable[[FleetSummary], bool]:
    """Ask ``check`` at most every ``every_s``; say yes once it has held for ``hold_s`` without a no.

    The hold matters at the end of an aborted rollout: a device that fetched the release just before the
    abort may still be installing it while every device the server knows of looks settled.
    """
    last = [0.0]
    since: list[float | None] = [None]

    def until(_summary: FleetSummary) -> bool:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            if not check():
                since[0] = None
            elif since[0] is None:
                since[0] = now
        return since[0] is not None and now - since[0] >= hold_s

    return until


def drive_fleet(
    server: RunningServer,
    options: DemoOptions,
    *,
    profile: str,
    fleet_dir: Path,
    rollout_id: str,
    expect_version: str,
) -> FleetSummary:
    """Run the fleet until the rollout is final and every device reports ``expect_version`` to the server.

    Raises:
        DemoError: The rollout did not settle within ``phase_timeout_s``.
    """
    api = OperatorClient(base_url=server.url, token=server.operator_token)
    sha_of_version: dict[str, str] = {}

    def settled() -> bool:
        rollout = api.rollout(rollout_id)
        if rollout.state not in TERMINAL_STATES:
            return False
        if not sha_of_version:
            for release in api.releases():
                sha_of_version.setdefault(release.version, release.sha256)
        wanted = sha_of_version.get(expect_version)
        devices = api.devices()
        return len(devices) == options.devices and all(d.current_sha256 == wanted for d in devices)

    try:
        summary = simulate_fleet(
            FleetOptions(
                server=server.url,
                devices=options.devices,
                provisioning_token=server.provisioning_token,
                processes=options.processes,
                duration_s=options.phase_timeout_s,
                poll_interval_s=options.poll_interval_s,
                work_dir=fleet_dir,
                profile=profile,
                show_progress=True,
            ),
            # Settled for three poll intervals: no device is still installing what it fetched before.
            until=_throttled(settled, hold_s=3 * options.poll_interval_s),
        )
        done = settled()
    finally:
        api.close()
    if not done:
        raise DemoError(
            f"rollout {rollout_id} did not settle on version {expect_version} in {options.phase_timeout_s} s"
        )
    return summary


def latest_rollout_id(server: RunningServer, release_version: str) -> str:
    """The newest rollout whose release has MLflow version ``release_version``.

    Raises:
        DemoError: None found (the release pipeline did not start one).
    """
    with OperatorClient(base_url=server.url, token=server.operator_token) as api:
        versions = {r.id: r.version for r in api.releases()}
        for rollout in api.rollouts():
            if versions.get(rollout.release_id) == release_version:
                return rollout.id
    raise DemoError(f"no rollout of version {release_version} on the server")


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
            rollout = latest_rollout_id(server, version)
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
    print_summary(summary, elapsed_s=time.monotonic() - started)
    return summary


def collect(summary: DemoSummary, server: RunningServer, *, tracking_uri: str) -> None:
    """Fill the summary from the stores: devices' versions, rollout reports, a trace, the aliases.

    Raises:
        ClientError: The server refused (ota.client.errors).
        TraceError: The traced device's chain is broken.
    """
    from ota.server.context import build_context
    from ota.server.settings import load_settings

    with OperatorClient(base_url=server.url, token=server.operator_token) as api:
        version_of_sha = {r.sha256: r.version for r in api.releases()}
        devices = api.devices()
        summary.device_versions = {d.id: version_of_sha.get(d.current_sha256 or "", "-") for d in devices}
        if devices:
            summary.trace = trace_device(devices[0].id, api=api, tracking_uri=tracking_uri)
    ctx = build_context(load_settings(home=server.home))
    try:
        with ctx.sessions() as session:
            for run in summary.rollouts:
                run.report = rollout_report(session, run.rollout_id)
    finally:
        ctx.close()
    from registry.store import model_aliases

    client = client_for(tracking_uri)
    summary.aliases = model_aliases(client, summary.model_name)
    for label, version in summary.versions.items():
        facts = version_facts(summary.model_name, version, tracking_uri=tracking_uri)
        metrics = version_metrics(client.get_model_version(summary.model_name, version))
        summary.lineage[label] = {
            "version": version,
            "variant": facts.tags.get("edgefleet.variant", "-"),
            "init_from": facts.lineage.get("init_from", ""),
            "data_fingerprint": facts.data_fingerprint,
            "accuracy": f"{metrics.get('accuracy', float('nan')):.4f}",
            "size_bytes": f"{metrics.get('size_bytes', float('nan')):.0f}",
        }


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` as JSON atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(data, handle, indent=1, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    Path(handle.name).replace(path)


def print_summary(summary: DemoSummary, *, elapsed_s: float) -> None:
    """Print the closing summary: versions per device, timelines, bytes, the abort, one trace."""
    console.print(Rule(f"EdgeFleet demo summary ({elapsed_s / 60:.1f} min)"))
    console.print(f"model {summary.model_name}: versions {summary.versions}; aliases now {summary.aliases}")
    versions = Table(
        "label",
        "version",
        "variant",
        "test accuracy",
        "bytes",
        "fine-tuned from",
        "data fingerprint",
        title="Versions (MLflow registry)",
    )
    for label, facts in summary.lineage.items():
        versions.add_row(
            label,
            facts["version"],
            facts["variant"],
            facts["accuracy"],
            facts["size_bytes"],
            facts["init_from"] or "— (from scratch)",
            facts["data_fingerprint"][:12] + "…",
        )
    console.print(versions)
    per_version = Table("MLflow version", "devices", title="Versions per device (OTA server)")
    for version, count in sorted(summary.per_version().items()):
        per_version.add_row(version, str(count))
    console.print(per_version)
    bytes_table = Table(
        "rollout",
        "version",
        "state",
        "delta installs",
        "full installs",
        "bytes downloaded",
        "full-only bytes",
        "saved",
        title="Bytes as delta vs full (server status reports)",
    )
    for run in summary.rollouts:
        report = run.report
        if report is None:
            continue
        downloaded = report.delta_bytes + report.full_bytes
        bytes_table.add_row(
            run.label,
            run.version,
            report.state,
            str(report.delta_installs),
            str(report.full_installs),
            f"{downloaded:,}",
            f"{report.full_equivalent_bytes:,}",
            f"{report.saved_fraction:.1%}",  # the server's figure: ota.core.savings.bytes_saved
        )
    console.print(bytes_table)
    for run in summary.rollouts:
        if run.report is not None:
            console.print(Rule(f"rollout timeline: {run.label} (version {run.version})", style="dim"))
            console.print(render_report(run.report))
    aborted = [
        r for r in summary.rollouts if r.report is not None and r.report.state in {"aborted", "rolled-back"}
    ]
    for run in aborted:
        assert run.report is not None
        console.print(
            f"[red]abort event[/red]: rollout {run.rollout_id} of version {run.version}: {run.report.reason}"
        )
    if summary.trace is not None:
        console.print(Rule("trace of one device", style="dim"))
        for line in render_trace(summary.trace):
            console.print(line, highlight=False, markup=False)
    console.print(
        f"inspect: EDGEFLEET_HOME={summary.server_home} edgefleet rollout status; "
        f"edgefleet models list {summary.model_name}"
    )
    from pipelines.summary import ui_commands

    for line in ui_commands(default_tracking_uri()):
        console.print(line, highlight=False)


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
    except (DemoError, RegistryError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
