"""Run ``edgefleet serve`` as a child process, and a light load client (integration tests, the bench)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningService:
    """A started service: its base URL, process, and how long it took from spawn to ready."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    ready_s: float

    def rss_mib(self, field: str = "VmRSS") -> float:
        """The process's resident set (``VmRSS``) or its peak (``VmHWM``) in MiB, from ``/proc``."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} for pid {self.process.pid}")


@contextlib.contextmanager
def run_service(
    args: list[str], *, port: int | None = None, ready_timeout_s: float = 60.0, log: Path | None = None
) -> Iterator[RunningService]:
    """Start ``python -m ota.serve ARGS --port PORT``, wait until ``/v2/health/ready``, stop it on exit.

    Raises:
        RuntimeError: If the process exits or is not ready in time (its log is in the message).
    """
    port = port or free_port()
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
    }
    sink = log.open("wb") if log is not None else subprocess.DEVNULL
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "ota.serve", *args, "--port", str(port)], env=env, stdout=sink, stderr=sink
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = started + ready_timeout_s
        with httpx.Client(base_url=url, timeout=2.0) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"edgefleet serve exited with {process.returncode}; see {log}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"edgefleet serve was not ready in {ready_timeout_s} s; see {log}")
                time.sleep(0.01)
        yield RunningService(url=url, port=port, process=process, ready_s=time.perf_counter() - started)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log is not None and sink is not subprocess.DEVNULL:
            sink.close()  # type: ignore[union-attr]


@dataclass(frozen=True)
class Answer:
    """An HTTP response as the load generator reads it."""

    status: int
    headers: dict[str, str]
    body: bytes


class LoadClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for load generation that costs little CPU.

    httpx spends about a millisecond of CPU per request; on a small machine that would measure the client.
    Connections are pooled: a request takes an idle one or opens a new one, so an open-loop load is never
    held back by a slow answer.

    Args:
        host: Server address.
        port: Server port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    @staticmethod
    def encode(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        """A complete POST request, built once and sent many times."""
        lines = [f"POST {path} HTTP/1.1", "host: localhost", f"content-length: {len(body)}"]
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def connect(self) -> None:
        """Open one connection ahead of the first request (as a client that polled readiness has one)."""
        self._idle.append(await asyncio.open_connection(self.host, self.port))
        self._all.append(self._idle[-1][1])

    async def send(self, request: bytes) -> Answer:
        """Send a request built by :meth:`encode` and read its answer."""
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return Answer(int(status_line.split()[1]), headers, body)

    async def close(self) -> None:
        """Close every connection."""
        for writer in self._all:
            writer.close()
        self._idle.clear()
        self._all.clear()
