"""Django's test client, routed like telemetry_project/asgi.py.

Paths that the ASGI route map serves outside Django (the ingest app: POST
/metrics/ingest, /v1/metrics) go to that same app here, so tests written
against `client.post("/metrics/ingest", ...)` exercise the production route;
every other path goes through Django's test handler as usual.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse
from django.test import Client
from django.test.client import ClientHandler


def _scope(environ: dict[str, Any]) -> dict[str, Any]:
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].lower().replace("_", "-")
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.lower().replace("_", "-")
        else:
            continue
        if value != "":
            headers.append((name.encode("latin-1"), str(value).encode("latin-1")))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": environ["REQUEST_METHOD"],
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": environ["PATH_INFO"],
        "raw_path": environ["PATH_INFO"].encode(),
        "query_string": environ.get("QUERY_STRING", "").encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": (environ.get("SERVER_NAME", "testserver"), int(environ.get("SERVER_PORT", 80))),
    }


async def _call(app: Any, scope: dict[str, Any], body: bytes) -> HttpResponse:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response = HttpResponse(content, status=start["status"])
    for name, value in start["headers"]:
        if name.lower() != b"content-length":
            response[name.decode("latin-1")] = value.decode("latin-1")
    return response


class RouteMapHandler(ClientHandler):
    def __call__(self, environ: dict[str, Any]) -> Any:
        from telemetry_project.asgi import HTTP_ROUTES

        app = HTTP_ROUTES.get(environ["PATH_INFO"])
        if app is None:
            return super().__call__(environ)
        # The raw body: WSGIRequest.body would refuse one over DATA_UPLOAD_MAX_MEMORY_SIZE before the app could.
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        response = async_to_sync(_call)(app, _scope(environ), body)
        response.wsgi_request = WSGIRequest({**environ, "CONTENT_LENGTH": "0"})  # type: ignore[attr-defined]
        return response


class RoutedClient(Client):
    def __init__(self, **defaults: Any) -> None:
        super().__init__(**defaults)
        self.handler = RouteMapHandler(enforce_csrf_checks=False)
