"""API errors: every failure answers with a status code and a JSON ``{"error": ...}`` body."""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify


class ApiError(Exception):
    """Raised by a route to answer ``status`` with ``{"error": message, **extra}``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """The JSON error response for ``status``."""
    response = jsonify({"error": message, **extra})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
