"""The operator client's error tree: every HTTP, transport and JSON failure is mapped to one of these.

::

    ClientError                   anything the operator client raises
    ├── ClientConfigError         no token, or a server URL that is not http(s)
    ├── ServerUnreachableError    no answer (refused, DNS, timeout, TLS)
    ├── ResponseError             an answer we cannot use: over the size cap, not JSON, wrong shape
    └── ApiError                  the server answered an error (status, code, message)
        ├── AuthenticationError   401: missing, unknown or revoked token
        ├── PermissionDeniedError 403: the token lacks the scope
        ├── NotFoundError         404
        ├── ConflictError         409
        └── InvalidRequestError   400, 413, 422: the request was refused as malformed

Messages are one line and name the server URL, so the CLI prints them as they are.
"""

from __future__ import annotations


class ClientError(Exception):
    """Root of every error the operator client raises."""


class ClientConfigError(ClientError):
    """The client cannot be set up: no operator token, or an unusable server URL."""


class ServerUnreachableError(ClientError):
    """The server did not answer (connection refused, DNS failure, timeout, TLS failure)."""


class ResponseError(ClientError):
    """The server answered something unusable: over the size cap, not JSON, or not the documented shape."""


class ApiError(ClientError):
    """The server answered an HTTP error.

    Attributes:
        status: The HTTP status code.
        code: The server's stable error code (``ErrorBody.error``), or ``http_<status>``.
        message: The server's message.
    """

    def __init__(self, text: str, *, status: int, code: str, message: str) -> None:
        """Keep the status, the code and the message beside the one-line text."""
        super().__init__(text)
        self.status = status
        self.code = code
        self.message = message

    @property
    def said(self) -> str:
        """The server's own words: its error code when it sent one, else its message."""
        return self.message if self.code.startswith("http_") else self.code


class AuthenticationError(ApiError):
    """401: the operator token is missing, unknown or revoked."""


class PermissionDeniedError(ApiError):
    """403: the operator token lacks the scope the endpoint needs."""


class NotFoundError(ApiError):
    """404: no such release, rollout, device or token."""


class ConflictError(ApiError):
    """409: the request conflicts with the server's state."""


class InvalidRequestError(ApiError):
    """400, 413 or 422: the server refused the request as malformed or too large."""


def error_for_status(status: int) -> type[ApiError]:
    """The :class:`ApiError` subclass of an HTTP status."""
    return {
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        409: ConflictError,
        400: InvalidRequestError,
        413: InvalidRequestError,
        422: InvalidRequestError,
    }.get(status, ApiError)
