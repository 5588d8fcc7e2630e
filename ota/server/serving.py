"""How the OTA server runs on uvicorn: timeouts and limits against slow clients (slowloris), in one place.

uvicorn closes an idle kept-alive connection after ``timeout_keep_alive`` and caps an incomplete h11 event
(``h11_max_incomplete_event_size``), but it has no deadline for a request's headers: a client that sends
one header byte every few seconds holds a connection (and a file descriptor) forever. The protocol
classes here add one: a connection must complete a request's headers within ``header_timeout`` seconds of
opening, or of the previous response, or it is closed. ``edgefleet server run`` and the test servers
(:func:`ota.server.testing.serve_in_thread`) both build their uvicorn config with :func:`uvicorn_config`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ota.server.settings import ServerSettings

# Config attribute the protocols read: a plain attribute survives the pickling of the config that
# uvicorn's worker processes receive.
HEADER_TIMEOUT_ATTR = "edgefleet_header_timeout"
DEFAULT_HEADER_TIMEOUT = 10.0


class HeaderDeadline:
    """Mixin for a uvicorn HTTP protocol: close a connection whose request headers do not complete in time.

    The deadline is armed when the connection opens and after each response; it is met when the protocol
    starts a new request cycle (which it does once a request's headers are complete).
    """

    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        """Read the header timeout from the config (see :func:`uvicorn_config`)."""
        super().__init__(config, *args, **kwargs)  # type: ignore[call-arg]
        self.header_timeout = float(getattr(config, HEADER_TIMEOUT_ATTR, DEFAULT_HEADER_TIMEOUT))
        self._header_deadline: asyncio.TimerHandle | None = None
        self._cycle_at_arm: Any = None

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._cycle_at_arm = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        # A new cycle means a request's headers arrived in time (its body and handling have no deadline).
        if self.cycle is self._cycle_at_arm and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Arm the deadline for the first request's headers."""
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        """Arm the deadline for the next request on a kept-alive connection."""
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_header_deadline()


class H11WithHeaderDeadline(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with a header deadline."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional: h11 serves then
    PROTOCOL = f"{__name__}:H11WithHeaderDeadline"
else:

    class HttpToolsWithHeaderDeadline(HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol (the faster one, uvicorn's default) with a header deadline."""

    PROTOCOL = f"{__name__}:HttpToolsWithHeaderDeadline"


def uvicorn_config(settings: ServerSettings, app: Any, **options: Any) -> uvicorn.Config:
    """Return the uvicorn config of the OTA server, with the slow-client limits of ``settings``.

    Args:
        settings: Server settings (``header_timeout``, ``keep_alive_timeout``, ``max_header_bytes``).
        app: The app or its import string.
        **options: Other ``uvicorn.Config`` options (host, port, workers, factory, logging...).

    Returns:
        The config.
    """
    options.setdefault("http", PROTOCOL)
    config = uvicorn.Config(
        app,
        timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]  # a float works
        h11_max_incomplete_event_size=settings.max_header_bytes,
        **options,
    )
    setattr(config, HEADER_TIMEOUT_ATTR, settings.header_timeout)
    return config


def run_server(config: uvicorn.Config) -> None:
    """Run uvicorn with ``config``: one process, or ``config.workers`` processes sharing one socket."""
    from uvicorn.supervisors import Multiprocess

    server = uvicorn.Server(config)
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
