"""Fleet benchmark: N real agents through a staged rollout, full install first, then deltas.

For each database (SQLite by default; ``--postgres`` adds PostgreSQL in a fresh schema) it starts the real
OTA server (``edgefleet server run`` in a child process, local blob folder), publishes a ~2 MB FP32 model
and rolls it out at 100 % to ``--devices`` simulated agents (``ota.edge.fleet``: real agents, each with
its own key and state dir, in a few processes). Every device installs it in full: that is the baseline.
Then it publishes a fine-tuned version (every weight moved a little, as a short fine-tune does; the server
builds the delta) and rolls it out through the phases 1 → 10 → 50 → 100 %. It waits until the rollout has
completed and every device reports the new model to the server, then prints one table: wall time, delta
installs, bytes downloaded, what full downloads would have cost, the share saved, and the time ratio to
SQLite.

Run by ``make bench``: ``.venv/bin/python bench/fleet_bench.py [--devices 200] [--postgres URL]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ota.client.api import OperatorClient as OtaApi
from ota.edge.fleet import FleetOptions
from ota.edge.fleet_driver import drive_rollout
from ota.server.testing import ServerProcess, serve_process

PROFILE = "bench-cpu"
PHASES = [1, 10, 50, 100]
console = Console(width=150)
# One log line per poll otherwise; set at import, so the fleet's worker processes (which import it) agree.
logging.getLogger("httpx").setLevel(logging.WARNING)


def model_pair(size: int = 720, seed: int = 0) -> tuple[bytes, bytes]:
    """A two-layer FP32 MLP (~2 MB) and the same one after a short fine-tune (every weight moved a little)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.05, size=(size, size)).astype(np.float32)
    w2 = rng.normal(0, 0.05, size=(size, 10)).astype(np.float32)

    def build(a: np.ndarray, b: np.ndarray) -> bytes:
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "W1"], ["h"]),
                helper.make_node("Relu", ["h"], ["r"]),
                helper.make_node("MatMul", ["r", "W2"], ["logits"]),
            ],
            "bench",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
            initializer=[numpy_helper.from_array(a, "W1"), numpy_helper.from_array(b, "W2")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return bytes(model.SerializeToString())

    tuned1 = (w1 * (1 + rng.normal(0, 1e-3, size=w1.shape))).astype(np.float32)
    tuned2 = (w2 * (1 + rng.normal(0, 1e-3, size=w2.shape))).astype(np.float32)
    return build(w1, w2), build(tuned1, tuned2)


@dataclass
class Row:
    database: str
    rollout: str
    seconds: float
    devices: int
    delta_installs: int
    bytes_downloaded: int
    full_bytes: int


def roll_out(
    server: ServerProcess,
    api: OtaApi,
    artifact: bytes,
    *,
    version: str,
    phases: list[int],
    fleet_dir: Path,
    args: Any,
) -> tuple[float, Any]:
    """Publish ``artifact``, start a rollout, run the fleet until it settles; return (seconds, summary).

    The fleet loop is the demo's (``ota.edge.fleet_driver.drive_rollout``): it stops once the rollout is
    final and every device reports the new model to the server, and fails if that takes longer than
    ``--timeout``.
    """
    release = api.publish_release(
        artifact, model="bench", version=version, profile=PROFILE, source_uri=f"bench:{version}"
    ).release
    body = {
        "release_id": release.id,
        "phases": [{"percent": p, "min_soak_seconds": 0, "min_reports": 1} for p in phases],
        "failure_threshold": 0.2,
    }
    rollout = api.start_rollout(body)
    options = FleetOptions(
        server=server.url,
        devices=args.devices,
        provisioning_token=server.provisioning_token,
        processes=args.processes,
        duration_s=args.timeout,
        poll_interval_s=args.poll_interval,
        work_dir=fleet_dir,
        profile=PROFILE,
        show_progress=True,
    )
    started = time.monotonic()
    summary = drive_rollout(
        options, operator_token=server.operator_token, rollout_id=rollout.id, expect_version=version
    )
    return time.monotonic() - started, summary


@contextlib.contextmanager
def postgres_schema(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards; yields a SQLAlchemy URL selecting it."""
    schema = f"ef_fleet_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            admin_url.replace("postgresql://", "postgresql+psycopg://") + f"?options=-csearch_path%3D{schema}"
        )
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run_database(name: str, database_url: str | None, args: Any) -> list[Row]:
    v1, v2 = model_pair()
    home = args.work / f"server-{name}"
    previous = os.environ.get("EDGEFLEET_DATABASE_URL")
    if database_url:
        os.environ["EDGEFLEET_DATABASE_URL"] = database_url
    rows: list[Row] = []
    try:
        with (
            serve_process(home, label="fleet-bench") as server,
            OtaApi(base_url=server.url, token=server.operator_token) as api,
        ):
            for label, artifact, version, phases in (
                ("v1 full 100%", v1, "1", [100]),
                ("v2 delta 1-10-50-100%", v2, "2", PHASES),
            ):
                seconds, summary = roll_out(
                    server,
                    api,
                    artifact,
                    version=version,
                    phases=phases,
                    fleet_dir=args.work / f"fleet-{name}",  # the same devices for both rollouts
                    args=args,
                )
                totals = summary.totals()
                rows.append(
                    Row(
                        database=name,
                        rollout=label,
                        seconds=seconds,
                        devices=summary.versions().get(version, 0),
                        delta_installs=int(totals["delta_installs"]),
                        bytes_downloaded=int(totals["bytes_downloaded"]),
                        full_bytes=int(totals["full_bytes"]),
                    )
                )
                console.print(f"{name}: {label}: {seconds:.1f} s, {totals}")
    finally:
        if previous is None:
            os.environ.pop("EDGEFLEET_DATABASE_URL", None)
        else:
            os.environ["EDGEFLEET_DATABASE_URL"] = previous
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--poll-interval", type=float, default=5.0, help="agent poll period, seconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for one rollout")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const="postgresql://postgres@127.0.0.1:5432/test",
        default=None,
        help="also run on PostgreSQL (admin URL; a fresh schema is created and dropped)",
    )
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        args.work = Path(tmp)
        rows += run_database("sqlite", None, args)
        if args.postgres:
            with postgres_schema(args.postgres) as url:
                rows += run_database("postgresql", url, args)
    baseline = {row.rollout: row.seconds for row in rows if row.database == "sqlite"}
    table = Table(title=f"fleet benchmark: {args.devices} agents, {args.processes} processes")
    for column in (
        "database",
        "rollout",
        "devices on it",
        "delta installs",
        "wall s",
        "× sqlite",
        "downloaded B",
        "full-only B",
        "saved",
    ):
        table.add_column(column, justify="left" if column in {"database", "rollout"} else "right")
    for row in rows:
        saved = 1 - row.bytes_downloaded / row.full_bytes if row.full_bytes else 0.0
        table.add_row(
            row.database,
            row.rollout,
            str(row.devices),
            str(row.delta_installs),
            f"{row.seconds:.1f}",
            f"{row.seconds / baseline[row.rollout]:.2f}",
            f"{row.bytes_downloaded:,}",
            f"{row.full_bytes:,}",
            f"{saved:.1%}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
