"""The web console in a real browser (issue 12): Playwright drives Debian's Chromium against a real server
(uvicorn on a socket) with a simulated fleet enrolled and reporting through the device API.

An operator signs in with a token, finds a device by id and opens its trace, starts a rollout from the
releases page, watches its phase advance without a reload (the page polls a fragment) while the fleet's
first wave commits, aborts it with a reason and finds the reason in the audit log. A read-only operator
sees no action and its forged POST is refused; a POST without the CSRF token is refused too.

Chromium is Debian's (``make setup`` installs it with apt-get when missing; never ``playwright install``).
Screenshots of the main views go to the test's folder, and to ``$EDGEFLEET_CONSOLE_SCREENSHOTS`` when set
(``docs/console`` holds the README's).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ota.core.manifest import ReportStatus, verify_assignment
from ota.server.rollout_machine import in_cohort
from ota.server.testing import SimDevice

from .conftest import LiveServer, live_server, settings_for

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")

FLEET = 24
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """Debian's chromium (or ``$EDGEFLEET_CHROMIUM``); None when no browser is installed."""
    explicit = os.environ.get("EDGEFLEET_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium found: `apt-get install -y chromium` (make setup does it) or set EDGEFLEET_CHROMIUM"
        )
    # The sandbox needs user namespaces a root process (CI containers) does not get.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=args)
        yield chromium
        chromium.close()


class Fleet:
    """Simulated devices polling and reporting over HTTP in a thread, like agents on a short interval.

    A device assigned a rollout's release commits it when it belongs to the rollout's first phase (the
    healthy first wave); later waves stall in ``downloading``, so the rollout advances once and then holds
    its second phase until the operator acts.
    """

    def __init__(self, server: LiveServer, devices: list[SimDevice], first_percent: float) -> None:
        self.server = server
        self.devices = devices
        self.first_percent = first_percent
        self.stop = threading.Event()
        self.reported: dict[str, str] = {}
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.director_key = server.ctx.keyring.public_keys("director")[0]

    def __enter__(self) -> Fleet:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        with self.server.client() as http:
            while not self.stop.wait(0.3):
                for device in self.devices:
                    try:
                        self._step(http, device)
                    except Exception as exc:  # reported to the test, which fails on it
                        self.errors.append(f"{device.device_id}: {exc!r}")

    def _step(self, http: Any, device: SimDevice) -> None:
        answer = device.poll(http)
        assert answer.status_code == 200, answer.text
        assignment = verify_assignment(
            answer.content, self.director_key, device_id=device.device_id, hardware_profile=device.profile
        )
        if assignment.rollout_id is None or assignment.target is None or assignment.rollback:
            return
        key = f"{assignment.rollout_id}:{assignment.release_id}"
        first_wave = in_cohort(device.device_id, assignment.rollout_id, self.first_percent)
        status = ReportStatus.COMMITTED if first_wave else ReportStatus.DOWNLOADING
        if self.reported.get(device.device_id) == f"{key}:{status.value}":
            return
        sent = device.report(
            http,
            status,
            rollout_id=assignment.rollout_id,
            release_id=assignment.release_id,
            target_sha256=assignment.target.sha256,
        )
        assert sent.status_code == 200, sent.text
        self.reported[device.device_id] = f"{key}:{status.value}"


def publish(server: LiveServer, http: httpx.Client, version: str, **params: str) -> dict[str, Any]:
    answer = http.put(
        "/v1/releases",
        params={"model": "digits", "version": version, "profile": "cpu-generic", "artifact_format": "raw"}
        | params,
        content=b"".join(f"weights {version} {i} ".encode() for i in range(4000)),
        headers=server.admin | {"Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json()["release"])


def operator_token(server: LiveServer, http: httpx.Client, name: str, scopes: list[str]) -> str:
    answer = http.post("/v1/tokens", json={"name": name, "scopes": scopes}, headers=server.admin)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


class Shots:
    """Screenshots: the test's folder always, ``$EDGEFLEET_CONSOLE_SCREENSHOTS`` too when set."""

    def __init__(self, folder: Path) -> None:
        self.folders = [folder]
        extra = os.environ.get("EDGEFLEET_CONSOLE_SCREENSHOTS")
        if extra:
            self.folders.append(Path(extra))
        for f in self.folders:
            f.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str, *, full_page: bool = False) -> None:
        data = page.screenshot(type="png", full_page=full_page)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        (self.folders[0] / f"{name}.png").write_bytes(data)
        for folder in self.folders[1:]:
            # For the docs: a 256-colour palette keeps each picture a few tens of KiB.
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                image.convert("RGB").quantize(256).save(folder / f"{name}.png", optimize=True)


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(f"{url}/console/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url == f"{url}/console/", page.content()


@pytest.fixture
def fleet_server(tmp_path: Path) -> Iterator[tuple[LiveServer, list[SimDevice]]]:
    settings = settings_for(tmp_path, rollout_tick_interval=0.3)
    with live_server(settings) as server, server.client() as http:
        devices = [SimDevice(f"fleet-{i:03d}", group="site-a" if i % 2 else "site-b") for i in range(FLEET)]
        for device in devices:
            assert device.enrol(http, server.provisioning_token).status_code == 201
            device.login(http)
        yield server, devices


def test_operator_finds_a_device_starts_watches_and_aborts_a_rollout(
    browser: Any, fleet_server: tuple[LiveServer, list[SimDevice]], tmp_path: Path
) -> None:
    server, devices = fleet_server
    shots = Shots(tmp_path / "shots")
    with server.client() as http:
        v1 = publish(
            server,
            http,
            "1",
            source_uri="models:/digits/7?run_id=run-7f3a&data_fingerprint=sha256:5eed",
            mlflow_run_id="run-7f3a",
            data_fingerprint="sha256:5eed",
        )
        publish(server, http, "2", mlflow_run_id="run-8b21", data_fingerprint="sha256:5eed")
        # The fleet runs version 1 (committed before the console's rollout): the trace has a release.
        for device in devices:
            answer = device.report(
                http, ReportStatus.COMMITTED, release_id=v1["id"], target_sha256=v1["sha256"]
            )
            assert answer.status_code == 200, answer.text
    context = browser.new_context(viewport={"width": 1180, "height": 820})
    page = context.new_page()
    page.set_default_timeout(15_000)
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    sign_in(page, server.url, server.admin_token)
    assert page.inner_text("#total-devices") == str(FLEET)

    # Find a device by id and open its trace.
    page.click("nav >> text=Devices")
    page.fill("input[name=q]", "fleet-007")
    page.click(".filters button[type=submit]")
    page.wait_for_selector("#device-count >> text=1 match")
    page.click("#devices >> text=fleet-007")
    page.wait_for_url(re.compile(r".*/console/devices/fleet-007$"))
    assert page.inner_text("#trace-run") == "run-7f3a"
    assert page.inner_text("#trace-data") == "sha256:5eed"
    assert page.inner_text("#trace-version") == "7"
    shots.take(page, "device", full_page=True)

    # Start a rollout of version 2 from the releases page: a fifth of the fleet, then all of it (which
    # needs half the fleet to commit: the stalled later wave holds it there).
    page.click("nav >> text=Releases")
    release = page.locator(".release", has_text="digits 2")
    release.locator("summary").click()
    release.locator("input[name=phases]").fill("20, 100")
    shots.take(page, "releases")
    release.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r".*/console/rollouts/ro-[0-9a-f]+$"))
    rollout_id = page.url.rsplit("/", 1)[1]
    assert dialogs and "digits 2" in dialogs[-1]
    assert page.get_attribute("#rollout-phase", "data-phase") == "0"

    # The fleet's first wave commits; the page shows the next phase without a reload.
    page.evaluate("window.__stillHere = 'yes'")
    with Fleet(server, devices, first_percent=20) as fleet:
        page.wait_for_selector("#rollout-phase[data-phase='1']", timeout=30_000)
        assert page.evaluate("window.__stillHere") == "yes", "the page reloaded"
        assert "advance by auto" in page.inner_text("#timeline")
        shots.take(page, "rollout", full_page=True)
        # Abort it with a reason (the confirm dialog is accepted).
        abort = page.locator("form[action$='/abort']")
        abort.locator("input[name=reason]").fill("accuracy drop on site B cameras")
        abort.locator("button").click()
        page.wait_for_load_state()
        assert page.locator("#rollout-state").inner_text() == "aborted", page.content()
        assert any("Abort" in d for d in dialogs)
    assert fleet.errors == []
    assert "accuracy drop on site B cameras" in page.inner_text("#timeline")

    # The audit log has the entry, with the reason and the operator.
    page.click("nav >> text=Audit log")
    page.fill("input[name=action]", "rollout.abort")
    page.click(".filters button[type=submit]")
    row = page.locator("#audit tbody tr", has_text=rollout_id)
    assert row.count() == 1
    assert "accuracy drop on site B cameras" in row.inner_text()
    assert "token:" in row.inner_text()
    shots.take(page, "audit")
    page.click("nav >> text=Rollouts")
    shots.take(page, "rollouts")
    page.click("nav >> text=Overview")
    shots.take(page, "overview")  # after the rollout: the fleet runs two versions
    page.click("nav >> text=Keys")
    assert page.locator("#expiry tbody tr").count() == 4
    shots.take(page, "keys")

    # A POST without the CSRF token, from the signed-in browser itself, is refused.
    refused = context.request.post(
        f"{server.url}/console/rollouts/{rollout_id}/rollback", form={"reason": "no csrf"}
    )
    assert refused.status == 403 and "CSRF" in refused.text()

    # Phone width: the devices page still reads.
    phone = browser.new_context(viewport={"width": 390, "height": 780}, device_scale_factor=1)
    mobile = phone.new_page()
    sign_in(mobile, server.url, server.admin_token)
    mobile.goto(f"{server.url}/console/devices")
    assert mobile.locator("#devices tbody tr").count() == FLEET
    shots.take(mobile, "devices-phone")
    phone.close()
    context.close()
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors


def test_read_only_operator_sees_no_action_and_a_forged_post_is_refused(
    browser: Any, fleet_server: tuple[LiveServer, list[SimDevice]]
) -> None:
    server, _devices = fleet_server
    with server.client() as http:
        release = publish(server, http, "1")
        started = http.post("/v1/rollouts", json={"release_id": release["id"]}, headers=server.admin)
        assert started.status_code == 201, started.text
        rollout_id = started.json()["id"]
        reader = operator_token(server, http, "viewer", ["read"])
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, server.url, reader)
    page.goto(f"{server.url}/console/rollouts/{rollout_id}")
    assert page.locator("#rollout-state").inner_text() == "running"
    assert page.locator("#actions").count() == 0
    assert page.locator("input[name=reason]").count() == 0
    page.goto(f"{server.url}/console/releases")
    assert page.locator("text=Start a rollout").count() == 0
    assert page.locator("nav >> text=Audit log").count() == 0
    # Forge the abort form the page does not offer, with this session's own valid CSRF token.
    csrf = page.get_attribute("form[action='/console/logout'] input[name=csrf]", "value")
    assert csrf
    forged = context.request.post(
        f"{server.url}/console/rollouts/{rollout_id}/abort", form={"csrf": csrf, "reason": "forged"}
    )
    assert forged.status == 403 and "lacks the &#39;rollout&#39; scope" in forged.text()
    page.goto(f"{server.url}/console/rollouts/{rollout_id}")
    assert page.locator("#rollout-state").inner_text() == "running"
    context.close()
