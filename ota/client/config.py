"""Where the operator client finds its server and token: ``--server`` / ``$EDGEFLEET_SERVER`` and
``$EDGEFLEET_OPERATOR_TOKEN``.

``$EDGEFLEET_SERVER_URL`` (the release pipeline's older name) is still read when ``$EDGEFLEET_SERVER`` is
unset. The token is read from the environment only, never from a committed file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ota.client.errors import ClientConfigError

SERVER_ENV = "EDGEFLEET_SERVER"
LEGACY_SERVER_ENV = "EDGEFLEET_SERVER_URL"
OPERATOR_TOKEN_ENV = "EDGEFLEET_OPERATOR_TOKEN"  # noqa: S105  (the name of a variable, not a secret)
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ServerLocation:
    """A server URL and where it came from (for error messages that say where we looked)."""

    url: str
    source: str


def locate_server(explicit: str | None = None) -> ServerLocation:
    """``--server``, else ``$EDGEFLEET_SERVER``, else ``$EDGEFLEET_SERVER_URL``, else the default.

    Raises:
        ClientConfigError: The URL is not http:// or https://.
    """
    if explicit:
        location = ServerLocation(explicit, "--server")
    elif os.environ.get(SERVER_ENV):
        location = ServerLocation(os.environ[SERVER_ENV], f"${SERVER_ENV}")
    elif os.environ.get(LEGACY_SERVER_ENV):
        location = ServerLocation(os.environ[LEGACY_SERVER_ENV], f"${LEGACY_SERVER_ENV}")
    else:
        location = ServerLocation(DEFAULT_SERVER_URL, f"the default; ${SERVER_ENV} is unset")
    if not location.url.startswith(("http://", "https://")):
        raise ClientConfigError(
            f"server URL {location.url!r} (from {location.source}) is not http:// or https://"
        )
    return ServerLocation(location.url.rstrip("/"), location.source)


def server_url_from_env(explicit: str | None = None) -> str:
    """The server URL :func:`locate_server` picks.

    Raises:
        ClientConfigError: The URL is not http:// or https://.
    """
    return locate_server(explicit).url


def operator_token_from_env(explicit: str | None = None) -> str:
    """``explicit``, else ``$EDGEFLEET_OPERATOR_TOKEN``.

    Raises:
        ClientConfigError: Neither is set.
    """
    token = explicit or os.environ.get(OPERATOR_TOKEN_ENV)
    if not token:
        raise ClientConfigError(
            f"no operator token: set ${OPERATOR_TOKEN_ENV} (an admin makes one with "
            "`edgefleet tokens create`; the first one on the server host with "
            "`edgefleet server bootstrap-token`)"
        )
    return token
