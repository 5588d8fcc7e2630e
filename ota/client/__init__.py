"""The operator's client of the OTA server's HTTP API (releases, rollouts, devices, tokens, audit).

Used by the ``edgefleet release|rollout|devices|tokens|trace`` commands and by the release pipeline's steps.
It speaks HTTP only: it imports no SQLAlchemy, FastAPI or server code (an import-linter contract in
``pyproject.toml`` holds it to that), so an operator's laptop needs no database access. Import the client
from :mod:`ota.client.api`, its answers from :mod:`ota.client.models` and its errors from
:mod:`ota.client.errors`.
"""
