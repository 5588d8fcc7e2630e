"""The web console behind a TLS-terminating proxy, on a real uvicorn socket: uvicorn applies
``X-Forwarded-Proto`` from a trusted proxy (127.0.0.1 by default), and the console's cookies become Secure."""

from __future__ import annotations

from pathlib import Path

import httpx

from .conftest import live_server, settings_for


def test_cookies_are_secure_behind_an_https_proxy_and_not_on_plain_http(tmp_path: Path) -> None:
    with live_server(settings_for(tmp_path)) as server:
        proxied = httpx.get(f"{server.url}/console/login", headers={"X-Forwarded-Proto": "https"})
        plain = httpx.get(f"{server.url}/console/login")
        assert proxied.status_code == plain.status_code == 200
        assert "secure" in proxied.headers["set-cookie"].lower()
        assert "secure" not in plain.headers["set-cookie"].lower()
        assert "httponly" in plain.headers["set-cookie"].lower()
        assert proxied.headers["content-security-policy"].startswith("default-src 'none'")
        assert proxied.headers["x-frame-options"] == "DENY"
        bare = httpx.get(f"{server.url}/console", follow_redirects=False)
        assert bare.status_code == 307 and bare.headers["location"].endswith("/console/")
