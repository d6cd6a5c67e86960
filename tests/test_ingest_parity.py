"""Both ingest transports answer alike: the suite's in-process route and the real server an agent reaches.

The ingest paths (POST /metrics/ingest, POST /v1/metrics) are served by one
ASGI app (metrics/api/ingest_app.py), reached in two ways:

- in process, through `client` (tests/asgi_client.py), as the rest of the
  suite reaches it; a chunked body or a client that goes away mid-body is
  sent as ASGI messages straight to the app, since Django's test client can
  send neither;
- over a socket, through a live daphne serving telemetry_project.asgi (one per
  module, its own SQLite file), as agents and browsers do.

Each case of the contract table runs both ways under the same settings (the
module's SERVER_ENV and their in-process twins in the `same_settings`
fixture) and the two answers must be equal: status, headers and body (JSON
parsed, anything else byte for byte), and the rows each side stored. Left
out of the comparison (`NOT_COMPARED`): Server, which daphne adds, and
Content-Length, which the test client drops (the live answer's is checked
against its body instead); daphne adds no Date. A HEAD answer's body is
compared empty: a server sends none, the test client's route keeps it. Each
case also pins what the answer must be, so two transports that went wrong
the same way still fail.

Django serves no ingest path (metrics/api/urls.py has none): the last tests
show that the paths next to the ingest paths reach Django, which stores
nothing there, so there is no third transport to compare.
"""

from __future__ import annotations

import gzip
import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from asgiref.sync import async_to_sync
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from metrics.api.ingest_app import ingest_app
from metrics.models import ApiKey, Point, hash_key
from tests.asgi_client import RoutedClient
from tests.live import ROOT, LiveServer
from tests.otlp_builders import gauge, request

pytestmark = pytest.mark.django_db

JSON_PATH = "/metrics/ingest"
OTLP_PATH = "/v1/metrics"
ORIGIN = "https://status.example.com"
FOREIGN = "https://evil.example.net"
LIMIT = 2048
HSTS = "max-age=31536000; includeSubDomains; preload"

KEY = "tm_parity-ingest-key-0000000000000000000000"
REVOKED = "tm_parity-revoked-key-000000000000000000000"
READ_ONLY = "tm_parity-read-only-key-0000000000000000000"
SCOPED = "tm_parity-scoped-key-00000000000000000000000"
SCOPED_SERVICES = "p-scoped-a,p-scoped-b"

# The live server's environment; `same_settings` sets the same values in process.
SERVER_ENV = {
    "DATABASE_URL": "",  # its own SQLite file, in the PostgreSQL run too
    "REDIS_URL": "",
    "DEBUG": "0",  # the SECURE_* settings below are read only when DEBUG is off
    "SECRET_KEY": "parity-test-secret-key-0123456789-0123456789-0123456789",
    "REQUIRE_API_KEY": "1",
    "INGEST_MAX_BODY_BYTES": str(LIMIT),
    "MAX_SERIES_PER_SERVICE": "2",
    "CORS_ORIGINS": ORIGIN,
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
}
# Server: added by daphne. Content-Length: dropped by the test client (checked against the body on the live side).
# Daphne adds no Date header.
NOT_COMPARED = {"server", "content-length"}


def make_keys() -> None:
    """The same four keys on both sides (run in process, and in the live server's database by `server`)."""
    now = datetime.now(UTC)
    for raw, services, scopes, revoked_at in [
        (KEY, "", "ingest,read", None),
        (REVOKED, "", "ingest,read", now),
        (READ_ONLY, "", "read", None),
        (SCOPED, SCOPED_SERVICES, "ingest", None),
    ]:
        ApiKey.objects.create(
            name=raw[3:20],
            prefix=raw[:10],
            key_hash=hash_key(raw),
            services=services,
            scopes=scopes,
            revoked_at=revoked_at,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("parity"), env=SERVER_ENV).start()
    try:
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", "from tests.test_ingest_parity import make_keys; make_keys()"],
            cwd=ROOT,
            env=live.env,
            check=True,
        )
        yield live
    finally:
        live.stop()


@pytest.fixture(autouse=True)
def same_settings(settings, telemetry):
    telemetry(REQUIRE_API_KEY=True, INGEST_MAX_BODY_BYTES=LIMIT, MAX_SERIES_PER_SERVICE=2)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    make_keys()


# --- Requests and answers ---------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    method: str = "POST"
    path: str = JSON_PATH
    headers: dict[str, str] = field(default_factory=dict)  # Content-Type included
    body: bytes = b""
    chunked: bool = False  # sent in pieces with Transfer-Encoding: chunked and no Content-Length

    def pieces(self) -> list[bytes]:
        return [self.body[i : i + 512] for i in range(0, len(self.body), 512)]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw bytes

    @classmethod
    def of(cls, status: int, headers: dict[str, str], content: bytes) -> Answer:
        headers = {k.lower(): v for k, v in headers.items() if k.lower() not in NOT_COMPARED}
        is_json = headers.get("content-type", "").startswith("application/json") and content
        return cls(status, headers, orjson.loads(content) if is_json else content)

    def error_field(self) -> str:
        return self.body["details"][0]["field"]


def in_process(client: RoutedClient, req: Req) -> Answer:
    if req.chunked:
        return async_to_sync(_asgi_chunked)(req)
    headers = dict(req.headers)
    content_type = headers.pop("Content-Type", None)
    kwargs: dict[str, Any] = {"content_type": content_type} if content_type else {}
    response = client.generic(req.method, req.path, req.body, headers=headers, **kwargs)
    # A server sends no body with a HEAD answer; the test client's route to the ingest app keeps it.
    content = b"" if req.method == "HEAD" else response.content
    return Answer.of(response.status_code, dict(response.items()), content)


async def _asgi_chunked(req: Req) -> Answer:
    """What daphne hands the app for a chunked upload: no Content-Length, the body in several messages."""
    headers = [(k.lower().encode(), v.encode()) for k, v in req.headers.items()]
    headers.append((b"transfer-encoding", b"chunked"))
    pieces = req.pieces()
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await ingest_app(scope(req.method, req.path, headers), receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return Answer.of(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body)


def scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def over_the_wire(server: LiveServer, req: Req) -> Answer:
    content: bytes | Iterator[bytes] = iter(req.pieces()) if req.chunked else req.body
    response = httpx.request(req.method, server.url + req.path, content=content, headers=req.headers, timeout=30)
    if req.method != "HEAD":
        assert int(response.headers["content-length"]) == len(response.content)
    return Answer.of(response.status_code, dict(response.headers.items()), response.content)


def rows_in_process(service: str) -> list[tuple]:
    points = Point.objects.filter(service=service).values_list("service", "metric_type", "value", "tags")
    return sorted((s, m, v, json.dumps(t, sort_keys=True)) for s, m, v, t in points)


def rows_live(server: LiveServer, service: str) -> list[tuple]:
    with sqlite3.connect(server.tmp_path / "telemetry.sqlite3") as db:
        points = db.execute(
            "SELECT service, metric_type, value, tags FROM metrics_point WHERE service = ?", [service]
        ).fetchall()
    return sorted((s, m, v, json.dumps(json.loads(t), sort_keys=True)) for s, m, v, t in points)


# --- The contract table ---------------------------------------------------------------------


def point(service: str, metric_type: str = "cpu", value: float = 10, **tags: str) -> dict[str, Any]:
    return {"service": service, "metric_type": metric_type, "value": value, "tags": tags}


def json_post(
    body: Any, key: str | None = KEY, raw: bytes | None = None, path: str = JSON_PATH, headers: dict | None = None
) -> Req:
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    return Req(path=path, headers=all_headers, body=orjson.dumps(body) if raw is None else raw)


def otlp_post(
    body: bytes, content_type: str = "application/x-protobuf", key: str | None = KEY, headers: dict | None = None
) -> Req:
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if key is not None:
        all_headers["X-API-Key"] = key
    return Req(path=OTLP_PATH, headers=all_headers, body=body)


def cpu_otlp(service: str, *values: float, as_json: bool = False) -> bytes:
    """An OTLP export of CPU gauges (1.0 = 100 %), stamped now: the live server runs on the real clock."""
    now = datetime.now(UTC).isoformat()
    metrics = [gauge("system.cpu.utilization", "1", v, now, {"cpu": i}) for i, v in enumerate(values)]
    message = request(service, *metrics)
    return json_format.MessageToJson(message).encode() if as_json else message.SerializeToString()


def preflight(origin: str) -> Req:
    return Req(
        "OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key",
        },
    )


BIG = orjson.dumps([point("p-big")] * 100)  # about 5 kB: over LIMIT
assert len(BIG) > LIMIT


def refused(status: int, field_name: str) -> Callable[[Answer], None]:
    def check(answer: Answer) -> None:
        assert answer.status == status, answer.body
        assert answer.error_field() == field_name, answer.body

    return check


def security_headers_only(answer: Answer) -> None:
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "same-origin"
    assert answer.headers["cross-origin-opener-policy"] == "same-origin"
    assert "strict-transport-security" not in answer.headers  # plain http: no HSTS
    assert not any(h.startswith("access-control-") for h in answer.headers)  # no Origin: no CORS
    assert "vary" not in answer.headers


def accepted(count: int) -> Callable[[Answer], None]:
    def check(answer: Answer) -> None:
        assert answer.status == 200, answer.body
        assert answer.body == {"status": "success", "accepted": count, "alert": None, "alerts": []}
        security_headers_only(answer)

    return check


def invalid_point(answer: Answer) -> None:
    assert answer.status == 400
    assert answer.body["details"][0]["index"] == 1
    assert answer.body["details"][0]["field"] == "value"


def method_not_allowed(answer: Answer) -> None:
    refused(405, "method")(answer)
    assert answer.headers["allow"] == "POST"


def head_not_allowed(answer: Answer) -> None:
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"
    assert answer.body == b""


def too_large(message: str) -> Callable[[Answer], None]:
    def check(answer: Answer) -> None:
        refused(413, "body")(answer)
        assert answer.body["error"] == message
        assert answer.headers["retry-after"] == "0"

    return check


def unauthorized(message: str) -> Callable[[Answer], None]:
    def check(answer: Answer) -> None:
        refused(401, "Authorization")(answer)
        assert answer.body["error"].startswith(message)
        assert answer.headers["www-authenticate"] == 'Bearer realm="telemetry"'

    return check


def outside_the_keys_services(answer: Answer) -> None:
    refused(403, "service")(answer)
    assert "p-not-scoped" in answer.body["error"]


def over_the_series_cap(answer: Answer) -> None:
    refused(429, "tags")(answer)
    assert answer.body["error"].startswith("Series limit reached for service 'p-capped'")
    assert answer.headers["retry-after"] == "1"


def preflight_granted(answer: Answer) -> None:
    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert {"content-type", "x-api-key", "authorization"} <= {
        h.strip() for h in answer.headers["access-control-allow-headers"].split(",")
    }
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in answer.headers
    assert answer.headers["x-content-type-options"] == "nosniff"


def preflight_not_granted(answer: Answer) -> None:
    assert answer.status == 200
    assert not any(h.startswith("access-control-") for h in answer.headers)
    assert answer.headers["vary"] == "origin"


def browser_granted(status: int) -> Callable[[Answer], None]:
    def check(answer: Answer) -> None:
        assert answer.status == status, answer.body
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert answer.headers["vary"] == "origin"
        assert "access-control-allow-credentials" not in answer.headers

    return check


def browser_from_elsewhere(answer: Answer) -> None:
    assert answer.status == 200
    assert "access-control-allow-origin" not in answer.headers
    assert answer.headers["vary"] == "origin"


def hsts(answer: Answer) -> None:
    assert answer.status == 200
    assert answer.headers["strict-transport-security"] == HSTS
    assert answer.headers["x-content-type-options"] == "nosniff"


def hsts_on_a_refusal(answer: Answer) -> None:
    unauthorized("Invalid or revoked API key")(answer)
    assert answer.headers["strict-transport-security"] == HSTS


def otlp_accepted(answer: Answer) -> None:
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/x-protobuf"
    assert ExportMetricsServiceResponse.FromString(answer.body) == ExportMetricsServiceResponse()
    security_headers_only(answer)


def otlp_partially_accepted(answer: Answer) -> None:
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.body["partialSuccess"]["rejectedDataPoints"] == "1"
    assert "value" in answer.body["partialSuccess"]["errorMessage"]


def otlp_status(status: int, code: int, content_type: str) -> Callable[[Answer], None]:
    """A google.rpc.Status refusal, in the request's encoding."""

    def check(answer: Answer) -> None:
        assert answer.status == status
        assert answer.headers["content-type"] == content_type
        if content_type == "application/json":
            assert answer.body["code"] == code
        else:
            assert status_pb2.Status.FromString(answer.body).code == code

    return check


@dataclass(frozen=True)
class Case:
    id: str
    req: Req
    check: Callable[[Answer], None]
    service: str | None = None  # whose stored rows must be equal on both sides
    stored: int = 0  # and how many there must be


CASES = [
    Case(
        "a-json-batch-is-stored",
        json_post([point("p-ok", region="eu"), point("p-ok", "latency", 12.5, region="eu")]),
        accepted(2),
        "p-ok",
        2,
    ),
    Case(
        "one-invalid-point-refuses-the-batch",
        json_post([point("p-bad"), point("p-bad", value=140)]),
        invalid_point,
        "p-bad",
    ),
    Case("invalid-json-names-the-body", json_post(None, raw=b'{"service": '), refused(400, "body")),
    Case(
        "a-non-json-body-is-415",
        json_post(None, raw=b"x=1", headers={"Content-Type": "text/plain"}),
        refused(415, "Content-Type"),
    ),
    Case(
        "a-query-string-does-not-change-the-route",
        json_post(point("p-query"), path=JSON_PATH + "?debug=1"),
        accepted(1),
        "p-query",
        1,
    ),
    Case(
        "a-percent-encoded-path-reaches-the-same-app",
        json_post(point("p-encoded"), path="/metrics/%69ngest"),
        accepted(1),
        "p-encoded",
        1,
    ),
    Case(
        "a-cross-site-form-post-is-415",
        json_post(
            None,
            raw=b"service=p-form",
            headers={"Origin": FOREIGN, "Content-Type": "application/x-www-form-urlencoded"},
        ),
        refused(415, "Content-Type"),
    ),
    Case("head-is-405-with-allow", Req("HEAD", headers={"Authorization": f"Bearer {KEY}"}), head_not_allowed),
    Case("get-is-405-with-allow", Req("GET", headers={"Authorization": f"Bearer {KEY}"}), method_not_allowed),
    Case("put-is-405-with-allow", Req("PUT", headers={"Authorization": f"Bearer {KEY}"}), method_not_allowed),
    Case(
        "a-content-length-over-the-limit-is-413",
        json_post(None, raw=BIG),
        too_large(f"Body of {len(BIG)} bytes exceeds the limit of {LIMIT} bytes"),
        "p-big",
    ),
    Case(
        "a-chunked-body-over-the-limit-is-413",
        Req(headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}, body=BIG, chunked=True),
        too_large(f"Body exceeds the limit of {LIMIT} bytes"),  # not read to its end: its size is unknown
        "p-big",
    ),
    Case(
        "a-chunked-body-under-the-limit-is-stored",
        Req(
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
            body=orjson.dumps([point("p-chunked", n=str(n % 2)) for n in range(20)]),
            chunked=True,
        ),
        accepted(20),
        "p-chunked",
        20,
    ),
    Case(
        "no-key-is-401", json_post(point("p-nokey"), key=None), unauthorized("A valid API key is required"), "p-nokey"
    ),
    Case("a-wrong-key-is-401", json_post(point("p-wrong"), key="nope"), unauthorized("Invalid or revoked"), "p-wrong"),
    Case(
        "a-wrong-key-is-401-before-a-bad-body",
        json_post(None, key="nope", raw=b"{"),
        unauthorized("Invalid or revoked"),
    ),
    Case(
        "a-revoked-key-is-401",
        json_post(point("p-revoked"), key=REVOKED),
        unauthorized("Invalid or revoked"),
        "p-revoked",
    ),
    Case(
        "a-read-only-key-is-403",
        json_post(point("p-readonly"), key=READ_ONLY),
        refused(403, "Authorization"),
        "p-readonly",
    ),
    Case(
        "a-service-scoped-key-writing-another-service-is-403",
        json_post([point("p-scoped-a"), point("p-not-scoped")], key=SCOPED),
        outside_the_keys_services,
        "p-scoped-a",
    ),
    Case(
        "a-service-scoped-key-writes-its-own-service",
        json_post(point("p-scoped-b"), key=SCOPED),
        accepted(1),
        "p-scoped-b",
        1,
    ),
    Case(
        "a-third-series-over-the-cap-is-429",
        json_post([point("p-capped", n="1"), point("p-capped", n="2"), point("p-capped", n="3")]),
        over_the_series_cap,
        "p-capped",
    ),
    Case("a-preflight-from-an-allowed-origin-is-granted", preflight(ORIGIN), preflight_granted),
    Case("a-preflight-from-a-foreign-origin-is-not", preflight(FOREIGN), preflight_not_granted),
    Case(
        "a-browser-post-from-an-allowed-origin-is-granted",
        json_post(point("p-browser"), headers={"Origin": ORIGIN}),
        browser_granted(200),
        "p-browser",
        1,
    ),
    Case(
        "a-browser-refusal-is-granted-so-the-page-can-read-it",
        json_post(None, raw=b"[", headers={"Origin": ORIGIN}),
        browser_granted(400),
    ),
    Case(
        "a-browser-401-is-granted-so-the-page-can-read-it",
        json_post(point("p-browser-nokey"), key=None, headers={"Origin": ORIGIN}),
        browser_granted(401),
        "p-browser-nokey",
    ),
    Case(
        "a-browser-post-from-a-foreign-origin-is-stored-without-a-grant",
        json_post(point("p-foreign"), headers={"Origin": FOREIGN}),
        browser_from_elsewhere,
        "p-foreign",
        1,
    ),
    Case(
        "https-behind-the-proxy-gets-hsts",
        json_post(point("p-https"), headers={"X-Forwarded-Proto": "https"}),
        hsts,
        "p-https",
        1,
    ),
    Case(
        "a-refusal-over-https-gets-hsts-too",
        json_post(point("p-https-bad"), key="nope", headers={"X-Forwarded-Proto": "https"}),
        hsts_on_a_refusal,
        "p-https-bad",
    ),
    Case("otlp-protobuf-is-stored", otlp_post(cpu_otlp("p-otlp", 0.25, 0.5)), otlp_accepted, "p-otlp", 2),
    Case(
        "otlp-json-partial-success",
        otlp_post(cpu_otlp("p-otlp-json", 0.25, 1.5, as_json=True), "application/json"),
        otlp_partially_accepted,
        "p-otlp-json",
        1,
    ),
    Case(
        "otlp-gzip-is-stored",
        otlp_post(gzip.compress(cpu_otlp("p-otlp-gzip", 0.25)), headers={"Content-Encoding": "gzip"}),
        otlp_accepted,
        "p-otlp-gzip",
        1,
    ),
    Case(
        "otlp-bad-gzip-is-400",
        otlp_post(b"not gzip", headers={"Content-Encoding": "gzip"}),
        otlp_status(400, 3, "application/x-protobuf"),
    ),
    Case("otlp-a-wrong-content-type-is-415", otlp_post(b"x", "text/plain"), otlp_status(415, 3, "application/json")),
    Case(
        "otlp-no-key-is-401",
        otlp_post(cpu_otlp("p-otlp-nokey", 0.25), key=None),
        otlp_status(401, 16, "application/x-protobuf"),
        "p-otlp-nokey",
    ),
    Case(
        "otlp-another-service-is-403",
        otlp_post(cpu_otlp("p-otlp-other", 0.25), key=SCOPED),
        otlp_status(403, 7, "application/x-protobuf"),
        "p-otlp-other",
    ),
    Case("otlp-over-the-limit-is-413", otlp_post(b"\0" * (LIMIT + 1)), otlp_status(413, 8, "application/x-protobuf")),
    Case("otlp-get-is-405", Req("GET", OTLP_PATH, {"X-API-Key": KEY}), otlp_status(405, 12, "application/json")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_both_transports_give_the_same_answer(case: Case, client: RoutedClient, server: LiveServer) -> None:
    here = in_process(client, case.req)
    there = over_the_wire(server, case.req)
    case.check(here)
    assert here == there
    if case.service is not None:
        assert rows_in_process(case.service) == rows_live(server, case.service)
        assert len(rows_in_process(case.service)) == case.stored


# --- A client that goes away mid-body --------------------------------------------------------

# A complete JSON document, then as much whitespace again: a server that took the first half
# for the whole body would store the point.
HALF = orjson.dumps(point("p-gone"))
WHOLE = HALF + b" " * len(HALF)


def test_a_client_gone_mid_body_is_not_answered_and_nothing_is_stored_in_process() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": HALF, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(WHOLE)).encode()),
        (b"authorization", f"Bearer {KEY}".encode()),
    ]
    async_to_sync(ingest_app)(scope("POST", JSON_PATH, headers), receive, send)
    assert sent == []
    assert rows_in_process("p-gone") == []


def test_a_client_gone_mid_body_stores_nothing_and_the_server_keeps_serving(server: LiveServer) -> None:
    head = (
        f"POST {JSON_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(WHOLE)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + HALF)
    # The next client is served, and was served after the first one went away.
    response = httpx.post(
        server.url + JSON_PATH, json=point("p-after-gone"), headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )
    assert response.status_code == 200
    assert rows_live(server, "p-gone") == []
    assert len(rows_live(server, "p-after-gone")) == 1
    assert "Traceback" not in server.log()


# --- Django serves no ingest path ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics/ingest/", "/v1/metrics/", "/metrics/ingest/points", "/metrics/Ingest"])
def test_the_paths_next_to_the_ingest_paths_reach_django_which_stores_nothing(
    path: str, client: RoutedClient, server: LiveServer
) -> None:
    req = json_post(point("p-near-miss"), path=path, headers={"Origin": ORIGIN})
    here, there = in_process(client, req), over_the_wire(server, req)
    assert here.status == there.status == 404
    assert here.headers["content-type"] == there.headers["content-type"] == "text/html; charset=utf-8"
    assert rows_in_process("p-near-miss") == rows_live(server, "p-near-miss") == []
