"""Hot swap under load: 16 closed-loop clients while the agent commits 5 versions and one broken one."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import numpy as np

from ota.serve.testing import run_service
from tests.unit.serve.models import commit, versioned

X = np.ones((1, 8), np.float32)
REQUEST = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": X.ravel().tolist()}]}
CLIENTS = 16


def wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_commits_swap_under_load_with_no_failed_request_and_the_broken_version_never_serves(tmp_path):
    vectors = (np.ones((2, 8), np.float32), np.full((2, 4), 1.0))
    commit(tmp_path, "a", versioned(1), "1", vectors=vectors)
    responses: list[tuple[str, float]] = []
    failures: list[str] = []
    stop = threading.Event()
    with run_service(
        [
            "--state-dir",
            str(tmp_path),
            "--watch-interval",
            "0.05",
            "--max-batch-size",
            "8",
            "--max-queue-delay-us",
            "1000",
            "--intra-op-threads",
            "1",
        ],
        log=tmp_path / "serve.log",
    ) as service:

        def client() -> None:
            with httpx.Client(base_url=service.url, timeout=10) as http:
                while not stop.is_set():
                    try:
                        answer = http.post("/v2/models/model/infer", json=REQUEST)
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code} {answer.text}")
                        continue
                    body = answer.json()
                    responses.append((body["model_version"], body["outputs"][0]["data"][0]))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        http = httpx.Client(base_url=service.url, timeout=10)

        def serving(version: str) -> bool:
            return http.get("/v2/models/model").json()["versions"] == [version]

        try:
            slot = "a"
            for version in (2, 3, 99, 4, 5, 6):
                slot = "b" if slot == "a" else "a"
                before = len(responses)
                if version == 99:
                    # Committed by the agent, but its outputs (99) disagree with its vectors (expect 1).
                    commit(tmp_path, slot, versioned(99), "99-broken", vectors=vectors)
                    wait_for(
                        lambda: (
                            "99-broken"
                            in http.get("/v2/models/model").json()["parameters"].get("last_load_error", "")
                        )
                    )
                    assert serving("3")
                else:
                    expected = np.ones((2, 4)) * version
                    commit(tmp_path, slot, versioned(version), str(version), vectors=(vectors[0], expected))
                    wait_for(lambda v=version: serving(str(v)))
                wait_for(lambda b=before: len(responses) > b + 50)  # load keeps flowing between commits
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        metrics = http.get("/metrics").text
        http.close()
    assert failures == []
    assert len(responses) > 300
    # Every response names the version that computed it (each version outputs its own number).
    assert all(float(version) == value for version, value in responses)
    seen = {version for version, _ in responses}
    assert seen == {"1", "2", "3", "4", "5", "6"}
    assert 'edgefleet_serve_swap_total{model="model",outcome="success"} 6.0' in metrics
    assert 'edgefleet_serve_swap_total{model="model",outcome="failure"} 1.0' in metrics
    # Batches formed under load: more inferences than executions.
    inferences = float(metrics.split('edgefleet_serve_inference_count_total{model="model"} ')[1].split()[0])
    executions = float(metrics.split('edgefleet_serve_execution_count_total{model="model"} ')[1].split()[0])
    assert inferences > executions


def test_sighup_makes_the_service_look_for_a_commit_at_once(tmp_path):
    commit(tmp_path, "a", versioned(1), "1")
    with run_service(
        ["--state-dir", str(tmp_path), "--watch-interval", "600"], log=tmp_path / "serve.log"
    ) as service:
        commit(tmp_path, "b", versioned(2), "2")
        time.sleep(0.3)
        with httpx.Client(base_url=service.url, timeout=10) as http:
            assert http.get("/v2/models/model").json()["versions"] == ["1"]  # the next look is 10 min away
            service.process.send_signal(signal.SIGHUP)
            wait_for(lambda: http.get("/v2/models/model").json()["versions"] == ["2"], timeout_s=10)
