"""Console devices-page benchmark: server time at 100,000 devices on PostgreSQL, against the bare SQL.

Creates its own PostgreSQL database (dropped afterwards), migrates it, publishes three releases through the
API, bulk-loads 100,000 devices with COPY (three profiles, ten groups, mixed admission states, installed
releases and last-report times over 30 days), runs ANALYZE, signs in to the console, then times each case:

* the console page ``GET /console/devices?...`` through the whole app in process (session check,
  queries, template, middleware): the server's time, without a network or a browser;
* the baseline: the same rows fetched with plain SQL on the same engine (``SELECT COUNT(*)`` of the
  filtered set plus ``SELECT`` of the page's 51 rows, keyset), the least work any devices page must do.

Prints median and p95 per case and the page / baseline ratio. The goal (issue 12) is ≤ 300 ms per page.
Run: ``.venv/bin/python bench/console_bench.py [--devices 100000] [--repeat 30] [--postgres URL]``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from ota.server.app import create_app
from ota.server.auth import create_operator_token
from ota.server.context import ServerContext, build_context
from ota.server.db import transaction
from ota.server.settings import load_settings

console = Console(width=150)
PROFILES = ("cpu-generic", "arm64", "jetson")
GROUPS = [f"site-{i}" for i in range(10)]


@contextmanager
def own_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; yields its SQLAlchemy URL."""
    name = f"ef_console_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _db = admin_url.rpartition("/")
    try:
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def publish(client: TestClient, admin: dict[str, str], version: str, profile: str) -> dict[str, Any]:
    answer = client.put(
        "/v1/releases",
        params={"model": "digits", "version": version, "profile": profile, "artifact_format": "raw"},
        content=f"weights {version} {profile} ".encode() * 500,
        headers=admin | {"Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json()["release"])


def load_devices(pg_url: str, count: int, shas: list[str | None]) -> float:
    """COPY ``count`` devices into the database; returns the seconds it took."""
    now = datetime.now(UTC)
    buffer = io.StringIO()
    for i in range(count):
        state = "accepted" if i % 50 else ("pending" if i % 100 else "rejected")
        sha = shas[i % len(shas)]
        seen = now - timedelta(seconds=(i * 7919) % (30 * 86400))
        fields = [
            f"dev-{i:06d}",
            "{}",
            "0" * 64,
            PROFILES[i % len(PROFILES)],
            "{}",
            "[]",
            GROUPS[(i // 7) % len(GROUPS)],
            state,
            "",
            "0",
            sha or "\\N",
            now.isoformat(),
            seen.isoformat(),
        ]
        buffer.write("\t".join(fields) + "\n")
    started = time.perf_counter()
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        with conn.cursor() as cur:
            columns = (
                'id, public_key, keyid, hardware_profile, hardware, tags, "group", state, '
                "provisioning_token_id, last_report_counter, current_sha256, created_at, updated_at"
            )
            with cur.copy(f"COPY devices ({columns}) FROM STDIN") as copy:
                copy.write(buffer.getvalue())
        conn.execute("ANALYZE devices")
    return time.perf_counter() - started


def timed(work: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median and p95 in milliseconds over ``repeat`` runs (after two warm-up runs)."""
    for _ in range(2):
        work()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]


def baseline_sql(where: str, params: dict[str, Any], after: str | None) -> tuple[str, str, dict[str, Any]]:
    keyset = " AND id > :after" if after else ""
    page = (
        'SELECT id, state, hardware_profile, "group", current_sha256, updated_at FROM devices '
        f"WHERE {where}{keyset} ORDER BY id LIMIT 51"
    )
    return f"SELECT COUNT(*) FROM devices WHERE {where}", page, params | ({"after": after} if after else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test", help="admin URL")
    args = parser.parse_args()
    with own_database(args.postgres) as url, tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        ctx = build_context(
            load_settings(
                home=Path(tmp) / "home",
                database_url=url,
                token_secret=secrets.token_urlsafe(48),
                cache_refresh_interval=3600,
                resign_check_interval=3600,
                rollout_tick_interval=3600,
            )
        )
        try:
            run(ctx, url, args)
        finally:
            ctx.close()


def run(ctx: ServerContext, url: str, args: argparse.Namespace) -> None:
    with transaction(ctx.sessions) as session:
        _row, admin_token = create_operator_token(session, name="bench", scopes=["admin"])
    admin = {"Authorization": f"Bearer {admin_token}"}
    with TestClient(create_app(ctx=ctx)) as client:
        releases = [publish(client, admin, v, "cpu-generic") for v in ("1", "2", "3")]
        shas: list[str | None] = [r["sha256"] for r in releases] + [None]
        seconds = load_devices(url, args.devices, shas)
        console.print(f"loaded {args.devices:,} devices with COPY in {seconds:.1f} s")
        form = client.get("/console/login")
        nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert nonce is not None
        signed = client.post("/console/login", data={"csrf": nonce.group(1), "token": admin_token})
        assert signed.status_code == 200, signed.text
        deep_after = f"dev-{args.devices - 40:06d}"
        now = datetime.now(UTC)
        cases: list[tuple[str, dict[str, str], str, dict[str, Any], str | None, int]] = [
            ("first page", {}, "TRUE", {}, None, args.devices),
            (
                "filtered: accepted, arm64, site-3",
                {"state": "accepted", "profile": "arm64", "group": "site-3"},
                "state = 'accepted' AND hardware_profile = 'arm64' AND \"group\" = 'site-3'",
                {},
                None,
                -1,
            ),
            (
                "installed release v2",
                {"release": releases[1]["id"]},
                "current_sha256 = :sha",
                {"sha": releases[1]["sha256"]},
                None,
                -1,
            ),
            (
                "not seen for 7 days",
                {"seen": "stale"},
                "updated_at <= :cut",
                {"cut": now - timedelta(days=7)},
                None,
                -1,
            ),
            ("deep page (after last-40)", {"after": deep_after}, "TRUE", {}, deep_after, args.devices),
            # The page's own prefix form: the scan starts at the prefix in the primary key's order.
            (
                "search id prefix dev-0987",
                {"q": "dev-0987"},
                "id >= 'dev-0987' AND id LIKE 'dev-0987%'",
                {},
                None,
                100 if args.devices >= 98_800 else -1,
            ),
            ("search, no match", {"q": "zzz"}, "id >= 'zzz' AND id LIKE 'zzz%'", {}, None, 0),
        ]
        table = Table(
            title=f"console devices page: {args.devices:,} devices, PostgreSQL, {args.repeat} runs each"
        )
        for column in (
            "case",
            "rows",
            "page median ms",
            "page p95 ms",
            "SQL median ms",
            "page / SQL",
            "≤ 300 ms",
        ):
            table.add_column(column, justify="left" if column == "case" else "right")
        results = []
        for label, params, where, sql_params, after, expected in cases:
            answer = client.get("/console/devices", params=params)
            assert answer.status_code == 200, answer.text[:300]
            match = re.search(r'id="device-count">(\d+) match', answer.text)
            assert match is not None
            total = int(match.group(1))
            if expected >= 0:
                assert total == expected, (label, total, expected)

            def page(p: dict[str, str] = params) -> None:
                client.get("/console/devices", params=p)

            page_median, page_p95 = timed(page, args.repeat)
            count_sql, page_sql, bound = baseline_sql(where, sql_params, after)

            def bare(
                count_sql: str = count_sql, page_sql: str = page_sql, bound: dict[str, Any] = bound
            ) -> None:
                with ctx.engine.connect() as conn:
                    conn.execute(text(count_sql), bound).scalar()
                    conn.execute(text(page_sql), bound).all()

            sql_median, _sql_p95 = timed(bare, args.repeat)
            results.append({"case": label, "total": total, "page_ms": page_median, "page_p95_ms": page_p95})
            table.add_row(
                label,
                f"{total:,}",
                f"{page_median:.1f}",
                f"{page_p95:.1f}",
                f"{sql_median:.1f}",
                f"{page_median / sql_median:.1f}×",
                "yes" if page_p95 <= 300 else "NO",
            )
        overview_median, overview_p95 = timed(lambda: client.get("/console/"), max(5, args.repeat // 3))
        console.print(table)
        console.print(
            f"fleet overview page (group-bys over the whole fleet): median {overview_median:.1f} ms, "
            f"p95 {overview_p95:.1f} ms"
        )
        print(json.dumps({"results": results, "overview_ms": round(overview_median, 1)}))


if __name__ == "__main__":
    main()
