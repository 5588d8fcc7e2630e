"""Subprocess driver for the kill -9 tests: runs the installer once, optionally killing itself mid-way.

Usage: ``python agent_driver.py STATE_DIR PLAN_JSON CRASH`` where CRASH is ``none``, ``point:<name>``
(SIGKILL at an installer fault point), ``bytes:<n>`` (SIGKILL after n bytes of a download) or
``apply-mid`` (SIGKILL halfway through writing a delta's output). It prints the outcome as JSON.

Not a test module: the tests in test_kill9.py start it with the venv's interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import zstandard

from ota.edge.config import AgentConfig
from ota.edge.fetch import Fetcher
from ota.edge.health import HealthResult
from ota.edge.install import Installer
from ota.edge.state import UpdatePlan

RECEIVED: list[int] = [0]  # bytes this process's fetcher received, logged before any kill


def die() -> None:
    log = os.environ.get("EDGE_DRIVER_BYTES_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(f"{RECEIVED[0]}\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def fake_apply_factory(crash: str):
    def fake_apply(base: Path | None, patch: Path, out: Path, *, max_output_bytes: int | None = None) -> None:
        raw = patch.read_bytes()
        assert base is not None and raw[4:36] == hashlib.sha256(base.read_bytes()).digest()
        data = zstandard.ZstdDecompressor().decompress(raw[36:], max_output_size=max_output_bytes or 0)
        tmp = out.with_name(out.name + ".apply-tmp")
        with tmp.open("wb") as handle:
            handle.write(data[: len(data) // 2])
            if crash == "apply-mid":
                handle.flush()
                die()
            handle.write(data[len(data) // 2 :])
        tmp.replace(out)

    return fake_apply


def main() -> None:
    state_dir, plan_path, crash = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    if crash.startswith("fsize:"):
        # A full disk, as far as this process can tell: writes past N bytes per file fail with EFBIG.
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(crash.split(":")[1])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    plan = UpdatePlan.from_json(json.loads(plan_path.read_text()))
    config = AgentConfig(retry_base_s=0.01, retry_cap_s=0.05)

    def progress(received: int) -> None:
        RECEIVED[0] = fetcher.total_bytes_transferred + received
        if crash.startswith("bytes:") and received >= int(crash.split(":")[1]):
            die()

    def fault(point: str) -> None:
        if crash == f"point:{point}":
            die()

    def health(model: Path, vectors: Path | None, budget: float | None) -> HealthResult:
        ok = hashlib.sha256(model.read_bytes()).hexdigest() == plan.target.sha256
        return HealthResult(ok=ok, stage="ok" if ok else "selftest", reason=None if ok else "wrong bytes")

    fetcher = Fetcher(config=config, on_progress=progress)
    installer = Installer(
        state_dir=state_dir,
        config=config,
        fetcher=fetcher,
        health_check=health,
        apply_delta=fake_apply_factory(crash),
        fault=fault,
    )
    state = installer.startup()
    outcome = installer.resume()
    if outcome is None and (state.committed is None or state.committed.sha256 != plan.target.sha256):
        outcome = installer.install(plan)
    print(
        json.dumps(
            {
                "status": None if outcome is None else outcome.status.value,
                "used_delta": bool(outcome and outcome.used_delta),
                "bytes": fetcher.total_bytes_transferred,
                "reason": None if outcome is None else outcome.reason,
            }
        )
    )


if __name__ == "__main__":
    main()
