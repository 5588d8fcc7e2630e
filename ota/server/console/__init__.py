"""The operator web console, served by the OTA server under ``/console`` (issue 12).

Server-rendered pages (Jinja2, autoescaped) over the same database and service functions as the operator
API; every asset is vendored here (``static/``), nothing loads from elsewhere. Sign-in exchanges an
operator token for a server-side session (``sessions``); the read queries live in ``queries``; the
routes in ``views``. ``mount_console`` adds it to an app.
"""

from __future__ import annotations

from fastapi import FastAPI

from ota.server.console.views import router


def mount_console(app: FastAPI) -> None:
    """Add the console's routes (``/console/...``) to the OTA server app."""
    app.include_router(router)
