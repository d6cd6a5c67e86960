"""The ingest ASGI app: POST /metrics/ingest (JSON points) and POST /v1/metrics (OTLP/HTTP), for every client.

telemetry_project/asgi.py routes both paths here and everything else to
Django. Ingestion is most of the traffic and needs none of Django's request
machinery (sessions, CSRF, templates, URL resolution): Django's ASGI handler
cost about 2 ms of CPU per request before a view ran, more than validating and
storing a point (docs/performance.md). So this app reads the request with
Django's own ASGIRequest (headers, content type, is_secure), reads the body
within the size limit, hands it to metrics.ingest.submit, and answers in the
path's shape: our JSON (and its error shape) or OTLP's protobuf/JSON.

Every answer, an agent's or a browser's, gets its CORS headers from
django-cors-headers' own middleware logic (preflights included) and its
security headers from Django's SecurityMiddleware, here in `_finish`: the one
place the ingest paths write them.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import setting_changed
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.middleware.security import SecurityMiddleware

from metrics import stats
from metrics.api import auth, otlp
from metrics.api.errors import (
    FastJsonResponse,
    database_unavailable,
    declared_size,
    render_json,
    render_otlp,
    require_json,
    require_size,
)
from metrics.errors import ApiError
from metrics.ingest.submit import Protocol, Receipt, admit, submit

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_PATH = "/metrics/ingest"
OTLP_PATH = "/v1/metrics"


@dataclass(frozen=True)
class Wire:
    """How one path reads its bodies and answers: the JSON API's shapes or OTLP/HTTP's."""

    protocol: Callable[[str], Protocol]  # from the Content-Type; ApiError 415
    accepted: Callable[[Receipt, Protocol], HttpResponse]
    refused: Callable[[ApiError, Protocol], HttpResponse]
    inflate: bool  # Content-Encoding: gzip is accepted (OTLP), or ignored as it always was (JSON)


def _json_protocol(content_type: str) -> Protocol:
    require_json(content_type)
    return Protocol.JSON


def _json_accepted(receipt: Receipt, protocol: Protocol) -> HttpResponse:
    body = {
        "status": "success",
        "accepted": receipt.accepted,
        "alert": receipt.breached[0] if receipt.breached else None,
        "alerts": receipt.breached,
    }
    return FastJsonResponse(body)


def _json_refused(exc: ApiError, protocol: Protocol) -> HttpResponse:
    if exc.status < 500:
        stats.requests_rejected.inc()
    return render_json(exc)


def _otlp_refused(exc: ApiError, protocol: Protocol) -> HttpResponse:
    return render_otlp(exc, as_json=protocol is not Protocol.OTLP_PROTOBUF)


WIRES = {
    JSON_PATH: Wire(_json_protocol, _json_accepted, _json_refused, inflate=False),
    OTLP_PATH: Wire(
        otlp.protocol_of,
        lambda receipt, protocol: otlp.accepted(receipt, as_json=protocol is Protocol.OTLP_JSON),
        _otlp_refused,
        inflate=True,
    ),
}
_NO_BODY = io.BytesIO(b"")
# corsheaders' own decisions (CORS_* settings, read per request), without running it as middleware.
_cors = CorsMiddleware(lambda request: HttpResponse())


@functools.cache
def _security() -> SecurityMiddleware:
    """Django's SecurityMiddleware, built once: it reads its SECURE_* settings when built."""
    return SecurityMiddleware(lambda request: HttpResponse())


setting_changed.connect(lambda **kwargs: _security.cache_clear(), weak=False)


async def ingest_app(scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    request = ASGIRequest(scope, _NO_BODY)
    browser = "HTTP_ORIGIN" in request.META  # agents send no Origin: there is nothing for CORS to decide
    preflight = _cors.check_preflight(request) if browser else None
    if preflight is not None:
        response: HttpResponse | None = HttpResponse(headers=preflight.headers)
    else:
        response = await _answer(request, receive, WIRES[request.path])
    if response is None:  # the client went away before its body arrived
        return
    _finish(request, response, browser)
    body = response.content
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.items() if k.lower() != "content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    stats.observe(request.path, time.perf_counter() - started)


async def _answer(request: HttpRequest, receive: Receive, wire: Wire) -> HttpResponse | None:
    content_type = (request.content_type or "").lower()
    # Refusals before the protocol is known answer in the encoding the client asked for.
    protocol = Protocol.OTLP_PROTOBUF if content_type == otlp.PROTOBUF else Protocol.OTLP_JSON
    if wire is WIRES[JSON_PATH]:
        protocol = Protocol.JSON
    try:
        if request.method != "POST":
            raise ApiError(
                405, f"Method {request.method} not allowed; use POST", field="method", headers={"Allow": "POST"}
            )
        protocol = wire.protocol(content_type)
        credentials = auth.key_credentials(request)
        admit(credentials)
        require_size(declared_size(request))
        body = await _read_body(receive)
        if body is None:
            return None
        if wire.inflate:
            body = otlp.inflate(body, request.headers.get("Content-Encoding", ""), _limit())
        return wire.accepted(await submit(credentials, body, protocol), protocol)
    except ApiError as exc:
        return wire.refused(exc, protocol)
    except (DatabaseError, TimeoutError) as exc:
        # A failing, frozen or partitioned database: answer now; the writer guarantees the request never commits.
        return wire.refused(database_unavailable(exc), protocol)


def _limit() -> int:
    return settings.TELEMETRY["INGEST_MAX_BODY_BYTES"]


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body; ApiError 413 as soon as it grows past the limit; None when the client disconnects."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _limit():
            # Reading stops here, so the size so far depends only on how the server cut the body into messages.
            raise ApiError(413, f"Body exceeds the limit of {_limit()} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _finish(request: HttpRequest, response: HttpResponse, browser: bool) -> None:
    """CORS (corsheaders, for requests with an Origin) and security headers (SecurityMiddleware), for every answer."""
    if browser:
        _cors.add_response_headers(request, response)
    _security().process_response(request, response)
