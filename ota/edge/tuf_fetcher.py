"""python-tuf ``FetcherInterface`` on the agent's httpx client.

ngclient downloads metadata through a fetcher; by default it builds its own urllib3 pool. Routing it
through the agent's httpx client instead gives one connection pool, one set of timeouts and one place
where tests (and the fleet simulator) inject faults or a man in the middle. ngclient itself still
enforces every metadata length cap; this class maps every httpx error to the ones ngclient expects.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface


class HttpxFetcher(FetcherInterface):
    """Streams TUF metadata with an httpx client.

    Args:
        client: The agent's HTTP client (its timeouts apply).
    """

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Open ``url`` and return an iterator over its body.

        Raises:
            tuf.api.exceptions.SlowRetrievalError: The server did not answer within the read timeout.
            tuf.api.exceptions.DownloadHTTPError: The server answered with a 4xx or 5xx status.
            tuf.api.exceptions.DownloadError: Any other transport failure (connect, protocol, redirects).
        """
        try:
            response = self.client.send(
                # Identity: ngclient counts the bytes it receives, and must count them before inflation.
                self.client.build_request("GET", url, headers={"Accept-Encoding": "identity"}),
                stream=True,
            )
        except httpx.TimeoutException as exc:
            raise tuf_errors.SlowRetrievalError(f"{url}: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise tuf_errors.DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            response.close()
            # ngclient caps decoded bytes per chunk: one inflated chunk could already be huge.
            raise tuf_errors.DownloadError(f"{url}: {encoding}-encoded although identity was asked for")
        if response.status_code >= 400:
            response.close()
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        return self._chunks(url, response)

    @staticmethod
    def _chunks(url: str, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes()
        except httpx.TimeoutException as exc:
            raise tuf_errors.SlowRetrievalError(f"{url}: {exc}") from exc
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise tuf_errors.DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
        finally:
            response.close()
