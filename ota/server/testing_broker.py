"""A Mosquitto broker in a child process, for the MQTT nudge tests and ``bench/nudge_bench.py``.

Not used by the server. Each user gets its own broker on a free port (so a test can stop and restart it
without touching a system broker, and parallel runs never share topics). Needs the ``mosquitto`` binary
(Debian's ``mosquitto`` package; ``make setup`` installs it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path


def mosquitto_binary() -> str | None:
    """The path of ``mosquitto`` (on PATH or in /usr/sbin), or None when it is not installed."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoProcess:
    """``mosquitto -c <config>`` on 127.0.0.1:``port``; :meth:`start`, :meth:`stop` and start again.

    Args:
        folder: Where the config and log go.
        port: The port (a free one when None); it stays the same across restarts.
        extra_config: More config lines (an ACL, a password file); anonymous access is allowed unless
            they say ``allow_anonymous false``.
    """

    def __init__(self, folder: Path, *, port: int | None = None, extra_config: str = "") -> None:
        self.binary = mosquitto_binary()
        if self.binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.folder = folder
        self.port = port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        anonymous = "" if "allow_anonymous" in extra_config else "allow_anonymous true\n"
        self.config = folder / "mosquitto.conf"
        # Run as the caller: started by root, mosquitto would otherwise switch to the "mosquitto" user and
        # fail to read a password or ACL file in the caller's private temp folder.
        user = pwd.getpwuid(os.getuid()).pw_name
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nuser {user}\n{anonymous}persistence false\n"
            f"max_queued_messages 100000\n{extra_config}"
        )
        self.log = folder / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections.

        Raises:
            RuntimeError: It exited or did not listen in time (the log says why).
        """
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        """Kill the broker (SIGKILL: an abrupt outage, as in a crash) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> MosquittoProcess:
        """Start it."""
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        """Stop it."""
        self.stop()
