"""POST /metrics/ingest served straight from ASGI for agents, the bulk of all traffic.

Django's ASGI handler costs about 2 ms of CPU per request before a view runs
(request signals, a ThreadSensitiveContext and its thread, URL resolution,
response conversion), more than validating and storing a point, and that cap
kept one process near 260 single-point requests/s (docs/performance.md). An
agent posting points sends no Origin header and uses no session, CSRF or
template, so telemetry_project.fastlane hands exactly those requests here.
They get the same checks and answers as the Django view: the same
`ingest_body`, the same 413/415 refusals in the one error shape, the same
security headers and the same request timing. Browser requests (they carry
Origin, so CORS applies), other methods and every other path go through Django.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from django.utils.http import parse_header_parameters

from metrics import stats
from metrics.api.errors import refuse_content_type, refuse_size
from metrics.api.views import ingest_body

PATH = "/metrics/ingest"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def serves(scope: Scope) -> bool:
    """True for a POST to /metrics/ingest without an Origin header (not a browser's request)."""
    if scope.get("method") != "POST" or scope.get("path") != PATH:
        return False
    return all(name != b"origin" for name, _ in scope.get("headers", ()))


def _headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        # Repeated headers are joined, as Django's request.headers does.
        found[key] = f"{found[key]},{text}" if key in found else text
    return found


async def _read_body(receive: Receive) -> tuple[bytes | None, HttpResponse | None]:
    """The whole body, a 413 as soon as it grows past the limit, or (None, None) on disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, None
        chunk = message.get("body", b"")
        size += len(chunk)
        too_big = refuse_size(size)
        if too_big:
            return None, too_big
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None


async def _answer(headers: dict[str, str], receive: Receive) -> HttpResponse | None:
    content_type, _ = parse_header_parameters(headers.get("content-type", ""))
    problem = refuse_content_type(content_type)
    if problem:
        return problem
    try:
        declared = int(headers.get("content-length") or "0")
    except ValueError:
        declared = 0
    problem = refuse_size(declared)
    if problem:
        return problem
    body, problem = await _read_body(receive)
    if problem or body is None:
        return problem
    auth = {"Authorization": headers["authorization"]} if "authorization" in headers else {}
    if "x-api-key" in headers:
        auth["X-API-Key"] = headers["x-api-key"]
    return await ingest_body(auth, body)


def _is_secure(scope: Scope, headers: dict[str, str]) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        meta_name, expected = proxy
        header = meta_name.removeprefix("HTTP_").lower().replace("_", "-")
        return headers.get(header, "").split(",")[0].strip() == expected
    return False


def _encode(response: HttpResponse, secure: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    # What fastlane.ApiSecurityHeadersMiddleware adds on the Django path.
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if settings.SECURE_HSTS_SECONDS and secure:
        response.headers.setdefault("Strict-Transport-Security", f"max-age={settings.SECURE_HSTS_SECONDS}")
    body = response.content
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.items()]
    headers.append((b"content-length", str(len(body)).encode()))
    return headers, body


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    headers = _headers(scope)
    response = await _answer(headers, receive)
    if response is None:  # the client went away before its body arrived
        return
    out_headers, body = _encode(response, _is_secure(scope, headers))
    await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
    await send({"type": "http.response.body", "body": body})
    stats.observe(PATH, time.perf_counter() - started)
