"""The README's over-the-air commands, run as written in a fresh shell (issue 15, item 1 and its acceptance).

What runs: every fenced ``bash`` block of README.md preceded by ``<!-- readme-test: NAME -->`` (an HTML
comment GitHub does not show), in README order, one command at a time, in ONE ``bash --noprofile --norc``
process, so what a command exports (``EDGEFLEET_SERVER``, ``EDGEFLEET_OPERATOR_TOKEN``) carries to the next,
exactly as for a reader typing them. A command that exits non-zero fails the test with the transcript so far;
so does a marked block that goes missing, or a placeholder used before any command printed its value.

The shell starts with nothing but ``PATH`` (without the venv) and ``HOME`` (an empty temporary folder); what
the README tells the reader to do does the rest, ``source .venv/bin/activate`` included. One addition:
``PYTHONPATH`` is passed on when the test runner has it, so a worktree tested with a shared venv runs its own
code (``make test`` on a clone does not set it).

The shell's working folder stands in for the root of a clone after ``make run``, holding only what the
commands need:

- ``.venv/bin/activate``: the activate script of the venv running this test (``./.venv`` of the clone under
  ``make test``), without the block ``make setup`` appended, then the block appended again by the Makefile's
  own ``make activate-hook`` with ``STATE`` set to this folder's ``.edgefleet``: what ``make setup`` writes
  for a clone living here. So the state ``EDGEFLEET_HOME`` names lands in the temporary folder, never in the
  repository's ``.edgefleet``.
- ``.edgefleet/mlflow.db``: an MLflow store with ``edgefleet-digits-cpu-int8-small`` version 1 under alias
  ``production`` (``tests/integration/registered_model.py``), which ``release publish --model-uri`` and
  ``trace`` read, standing in for the store ``make run`` trains.

Changes to the commands, all listed here:

- the README's port ``18080`` becomes a free port in 18000-18999 (every occurrence, one substitution);
- placeholders are filled from what earlier commands printed: ``REL_ID`` (the first ``rel-…`` printed),
  ``ROLLOUT_ID`` (``ro-…``), ``DEVICE_ID`` (``dev-…``), ``efp_…`` (the provisioning token, ``efp_…``);
- a background command (``… &``) has its output sent to a log file in the temporary folder, and the next
  command waits until the port it was given accepts connections (a reader waits for the server's start
  line); every background process is stopped at the end, pass or fail.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.registered_model import LINEAGE, MODEL, register_production_version

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
#: The venv running this test: ``./.venv`` of the clone under ``make test``.
VENV = Path(sys.executable).parent.parent
#: The marked blocks, in README order: operator quickstart, device admission, a simulated fleet, tracing.
BLOCKS = ("ota-operator", "ota-admission", "ota-fleet", "ota-trace")
README_PORT = "18080"
MARKED_BLOCK = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```bash\n(.*?)\n```", re.DOTALL)
PLACEHOLDERS = {
    "REL_ID": re.compile(r"\brel-[0-9a-f]+-[0-9a-f]+\b"),
    "ROLLOUT_ID": re.compile(r"\bro-[0-9a-f]+\b"),
    "DEVICE_ID": re.compile(r"\bdev-[0-9a-f]+\b"),
    "efp_…": re.compile(r"\befp_[A-Za-z0-9_-]+"),
}
BACKGROUND = re.compile(r"^(?P<command>.*?)\s*&\s*(?:#.*)?$")
ACTIVATE_MARK = "# edgefleet: project-local state"
COMMAND_TIMEOUT_S = 180.0

# About 20 s (three CLI starts a second, MLflow's store, one server start) plus the 20-device fleet simulate;
# 94 s in all on a loaded 2-core box.
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def readme_blocks(text: str) -> dict[str, str]:
    """Return the README's marked ``bash`` blocks by name, in README order."""
    return {match.group(1): match.group(2) for match in MARKED_BLOCK.finditer(text)}


def block_commands(block: str) -> list[str]:
    """Split a block into commands: a line ending in ``\\`` continues on the next; comment lines drop."""
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        line = f"{pending}\n{line}" if pending else line
        if line.rstrip().endswith("\\"):
            pending = line
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
    assert not pending, f"a README command ends in a continuation: {pending!r}"
    return commands


def free_port() -> int:
    """A port in 18000-18999 nothing listens on (the README's 18080 when it is free)."""
    candidates = [int(README_PORT), *secrets.SystemRandom().sample(range(18000, 19000), 200)]
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18000-18999")


def wait_for_port(port: int, *, alive: subprocess.Popen[str], timeout_s: float = 90.0) -> None:
    """Wait until something accepts connections on ``port``, failing early when the shell died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert alive.poll() is None, "the shell exited while a background command started"
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listened on port {port} after {timeout_s:.0f} s")


@dataclass
class Shell:
    """One ``bash --noprofile --norc`` fed a command at a time; its output read up to a per-command marker."""

    process: subprocess.Popen[str]
    folder: Path
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    transcript: list[str] = field(default_factory=list)
    background: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, folder: Path, env: dict[str, str]) -> Shell:
        process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=folder,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        shell = cls(process=process, folder=folder)
        threading.Thread(target=shell._read, daemon=True).start()
        return shell

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def run(self, command: str) -> tuple[int, str]:
        """Run one command; return its exit status and what it printed (stdout and stderr)."""
        marker = f"__readme_done_{secrets.token_hex(8)}__"
        assert self.process.stdin is not None
        self.transcript.append(f"$ {command}")
        self.process.stdin.write(f"{command}\nprintf '\\n{marker} %s\\n' \"$?\"\n")
        self.process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(self.failure(f"no end after {COMMAND_TIMEOUT_S:.0f} s")) from None
            if line is None:
                raise AssertionError(self.failure("the shell exited"))
            if line.startswith(marker):
                status = int(line.split()[-1])
                break
            output.append(line)
            self.transcript.append(line)
        if output and output[-1] == "":  # the newline printed before the marker
            output.pop()
        return status, "\n".join(output)

    def run_in_background(self, command: str) -> None:
        """Start ``command &`` with its output in a log file; remember its process id to stop it."""
        log = self.folder / f"background-{len(self.background)}.log"
        status, output = self.run(f'{command} > "{log}" 2>&1 &\necho "background pid $!"')
        assert status == 0, self.failure(output)
        self.background.append(int(output.split()[-1]))

    def failure(self, why: str) -> str:
        logs = "".join(
            f"\n--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.folder.glob("background-*.log"))
        )
        return f"{why}\n--- transcript\n" + "\n".join(self.transcript[-200:]) + logs

    def close(self) -> None:
        """Stop the background processes, then the shell."""
        for pid in self.background:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 20
        for pid in self.background:
            while time.monotonic() < deadline and _running(pid):
                time.sleep(0.1)
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _running(pid: int) -> bool:
    """True while ``pid`` (a child of the shell) exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def fresh_shell_env(home: Path) -> dict[str, str]:
    """``PATH`` without the venv, ``HOME``, and ``PYTHONPATH`` when the runner has one (module doc)."""
    venv_bin = str(VENV / "bin")
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p and p != venv_bin
    )
    env = {"PATH": path, "HOME": str(home)}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def make_clone_stand_in(folder: Path) -> None:
    """Write ``.venv/bin/activate`` as ``make setup`` would for a clone at ``folder`` (see the module doc)."""
    activate = (VENV / "bin" / "activate").read_text()
    venv = folder / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(activate.split(ACTIVATE_MARK, 1)[0])
    subprocess.run(
        ["make", "-s", "activate-hook", f"VENV={venv}", f"STATE={folder / '.edgefleet'}"],
        cwd=ROOT,
        check=True,
        timeout=60,
    )


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "clone"
    folder.mkdir()
    make_clone_stand_in(folder)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    register_production_version(folder / ".edgefleet")
    (folder / ".edgefleet" / "model.onnx").unlink()  # the registered copy lives in the store's artifacts
    yield folder


def test_the_readme_ota_commands_run_as_written(clone: Path, tmp_path: Path) -> None:
    blocks = readme_blocks(README.read_text())
    assert tuple(blocks) == BLOCKS, f"README.md's marked blocks changed: {tuple(blocks)}"
    port = str(free_port())
    home = tmp_path / "home"
    home.mkdir()
    shell = Shell.start(clone, fresh_shell_env(home))
    values: dict[str, str] = {}
    printed: dict[str, str] = {}
    try:
        for name in BLOCKS:
            for written in block_commands(blocks[name]):
                command = written.replace(README_PORT, port)
                for placeholder in PLACEHOLDERS:
                    if placeholder in command:
                        assert placeholder in values, shell.failure(
                            f"{name}: {written!r} uses {placeholder} before any command printed one"
                        )
                        command = command.replace(placeholder, values[placeholder])
                background = BACKGROUND.match(command)
                if background:
                    shell.run_in_background(background.group("command"))
                    wait_for_port(int(port), alive=shell.process)
                    continue
                status, output = shell.run(command)
                assert status == 0, shell.failure(f"{name}: {written!r} exited {status}")
                printed[written] = output
                for placeholder, pattern in PLACEHOLDERS.items():
                    found = pattern.search(output)
                    if found and placeholder not in values:
                        values[placeholder] = found.group(0)
    finally:
        shell.close()

    assert set(values) == set(PLACEHOLDERS), values
    outputs = "\n".join(printed.values())
    # The acceptance of issue 15: enrolled pending, accepted, installed the release published from MLflow …
    assert '"outcome": "pending"' in outputs and '"outcome": "installed"' in outputs, outputs
    assert f"{values['DEVICE_ID']}: accepted" in outputs
    # The simulated fleet converged on the release the quickstart published.
    (fleet,) = (out for cmd, out in printed.items() if cmd.startswith("edgefleet fleet simulate"))
    assert "converged" in fleet and "not converged" not in fleet, fleet
    # … and traced to its MLflow version and training run.
    (trace,) = (out for cmd, out in printed.items() if cmd.startswith("edgefleet trace"))
    assert values["DEVICE_ID"] in trace and values["REL_ID"] in trace, trace
    assert f"models:/{MODEL}/1" in trace and LINEAGE.data_fingerprint in trace, trace
    # The state stayed in the stand-in clone (EDGEFLEET_HOME from the activate hook), none in HOME.
    state = clone / ".edgefleet"
    assert (state / "server.db").is_file() and (state / "keys").is_dir()
    assert (clone / "device-1").is_dir()
    assert not (home / ".edgefleet").exists() and not (home / ".config" / "zenml").exists()
