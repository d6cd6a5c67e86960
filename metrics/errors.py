"""The one exception for a refused request, raised by every layer and rendered by metrics/api/errors.py.

Validation, queries, storage (the series caps) and authentication raise
ApiError with the HTTP status, a message for a person and the fields at fault;
they never build a response. The API turns it into our JSON error shape
`{"error", "details": [{"index", "field", "message"}]}` or, for OTLP, a
google.rpc.Status.
"""

from __future__ import annotations

from typing import Any


def error_item(index: int | None, field_name: str, message: str) -> dict[str, Any]:
    return {"index": index, "field": field_name, "message": message}


class ApiError(Exception):
    """status, message, details (every field at fault) and headers the answer needs (Allow, WWW-Authenticate)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str = "body",
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details if details is not None else [error_item(None, field, message)]
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class ValidationErrors(ApiError):
    """Every failure of a body or a query, each named by index and field (400 unless a limit says 413/429)."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None, status: int = 400) -> None:
        super().__init__(status, message, details=details or [])
