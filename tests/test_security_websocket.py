"""The /ws/metrics handshake: a browser's Origin must be the server's own, login (or a read key) when required.

Two layers: the ASGI application in process (WebsocketCommunicator, each rule
on its own) and a real daphne server with a real websockets client.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.utils import timezone
from websockets.typing import Origin

from metrics.api.access import websocket_allowed
from metrics.models import ApiKey
from telemetry_project.asgi import application
from tests.live import ROOT, LiveServer

LOCAL = "http://localhost"


def communicator(
    origin: str | None = LOCAL,
    cookie: str | None = None,
    host: str = "localhost",
    path: str = "/ws/metrics",
    headers: dict[str, str] | None = None,
) -> WebsocketCommunicator:
    sent = [(b"host", host.encode())]
    if origin is not None:
        sent.append((b"origin", origin.encode()))
    if cookie:
        sent.append((b"cookie", cookie.encode()))
    sent.extend((name.lower().encode(), value.encode()) for name, value in (headers or {}).items())
    return WebsocketCommunicator(application, path, headers=sent)


async def handshake(comm: WebsocketCommunicator) -> bool:
    connected, _ = await comm.connect(timeout=10)
    await comm.disconnect()
    return connected


@pytest.fixture
def open_instance(telemetry):
    return telemetry(DASHBOARD_REQUIRE_LOGIN=False)


@pytest.fixture
def login_required(telemetry):
    return telemetry(DASHBOARD_REQUIRE_LOGIN=True)


def session_cookie(client) -> str:
    """The Cookie header of a browser logged in as the test client is."""
    return f"sessionid={client.cookies['sessionid'].value}"


# --- Origin ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_from_a_foreign_origin_is_refused(open_instance):
    assert await handshake(communicator(origin="https://evil.example.net")) is False


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_from_the_servers_own_origin_is_accepted(open_instance):
    assert await handshake(communicator()) is True
    assert await handshake(communicator(origin="http://127.0.0.1:8000", host="127.0.0.1:8000")) is True
    assert await handshake(communicator(origin="http://LOCALHOST:80", host="localhost")) is True


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:9999",  # another app on the same host
        "http://127.0.0.1",  # port 80, not 8000
        "https://127.0.0.1:8000",  # another scheme
        "null",  # sandboxed frame or file:// page
        "http://127.0.0.1:notaport",
    ],
)
async def test_an_origin_that_differs_in_scheme_host_or_port_is_refused(open_instance, origin):
    assert await handshake(communicator(origin=origin, host="127.0.0.1:8000")) is False


@pytest.mark.django_db(transaction=True)
async def test_another_port_of_the_same_host_cannot_ride_a_staff_cookie(login_required, staff_client):
    cookie = session_cookie(staff_client)
    own = communicator(origin="http://127.0.0.1:8000", host="127.0.0.1:8000", cookie=cookie)
    assert await handshake(own) is True
    other_port = communicator(origin="http://127.0.0.1:9999", host="127.0.0.1:8000", cookie=cookie)
    assert await handshake(other_port) is False


@pytest.mark.django_db(transaction=True)
async def test_a_host_outside_allowed_hosts_has_no_own_origin(open_instance):
    assert await handshake(communicator(origin="http://rebound.example.net", host="rebound.example.net")) is False


@pytest.mark.django_db(transaction=True)
async def test_cors_origins_may_open_the_stream(open_instance, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://status.example.com"]
    assert await handshake(communicator(origin="https://status.example.com")) is True
    assert await handshake(communicator(origin="https://status.example.com:444")) is False


@pytest.mark.django_db(transaction=True)
async def test_the_scheme_comes_from_the_trusted_proxy_header(open_instance, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    behind_tls = {"X-Forwarded-Proto": "https"}
    assert await handshake(communicator(origin="https://localhost", headers=behind_tls)) is True
    assert await handshake(communicator(origin="http://localhost", headers=behind_tls)) is False


# --- Clients without an Origin (scripts, CLIs) ------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_without_an_origin_is_accepted(open_instance):
    assert await handshake(communicator(origin=None)) is True


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_without_an_origin_needs_credentials_when_login_is_required(login_required):
    assert await handshake(communicator(origin=None)) is False


def key_carrier(how: str, raw: str) -> dict:
    if how == "bearer":
        return {"headers": {"Authorization": f"Bearer {raw}"}}
    if how == "x-api-key":
        return {"headers": {"X-API-Key": raw}}
    return {"path": f"/ws/metrics?api_key={raw}"}


generate = sync_to_async(ApiKey.generate)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["bearer", "x-api-key", "query"])
async def test_a_read_key_opens_the_stream_when_login_is_required(login_required, how):
    _, raw = await generate("dashboard-cli", scopes="read")
    assert await handshake(communicator(origin=None, **key_carrier(how, raw))) is True


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["bearer", "query"])
async def test_an_ingest_only_key_cannot_read_the_stream(login_required, how):
    _, raw = await generate("agent", scopes="ingest")
    assert await handshake(communicator(origin=None, **key_carrier(how, raw))) is False


@pytest.mark.django_db(transaction=True)
async def test_a_revoked_or_unknown_key_is_refused_even_when_login_is_off(open_instance):
    key, raw = await generate("old", scopes="ingest,read")
    await ApiKey.objects.filter(pk=key.pk).aupdate(revoked_at=timezone.now())
    assert await handshake(communicator(origin=None, **key_carrier("query", raw))) is False
    assert await handshake(communicator(origin=None, **key_carrier("bearer", "tm_unknown"))) is False


@pytest.mark.django_db(transaction=True)
async def test_a_key_does_not_excuse_a_foreign_origin(login_required):
    _, raw = await generate("dashboard-cli", scopes="read")
    assert await handshake(communicator(origin="https://evil.example.net", **key_carrier("query", raw))) is False


# --- Sessions ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_an_anonymous_websocket_is_refused_when_login_is_required(login_required):
    assert await handshake(communicator()) is False


@pytest.mark.django_db(transaction=True)
async def test_a_logged_in_websocket_is_accepted_when_login_is_required(login_required, async_client):
    user = await get_user_model().objects.acreate_user("viewer", password="pw")
    await async_client.aforce_login(user)
    cookie = session_cookie(async_client)
    assert await handshake(communicator(cookie=cookie)) is True
    assert await handshake(communicator(cookie="sessionid=forged")) is False


def test_the_consumer_side_check_follows_the_setting(telemetry):
    from django.contrib.auth.models import AnonymousUser

    telemetry(DASHBOARD_REQUIRE_LOGIN=True)
    assert websocket_allowed({"user": AnonymousUser()}) is False
    assert websocket_allowed({}) is False
    assert websocket_allowed({"user": AnonymousUser(), "api_key": ApiKey(scopes="read")}) is True
    telemetry(DASHBOARD_REQUIRE_LOGIN=False)
    assert websocket_allowed({"user": AnonymousUser()}) is True


# --- A real server and a real client ------------------------------------------------


async def _status_of_handshake(url: str, origin: str | None, headers: dict[str, str] | None = None) -> int:
    try:
        async with websockets.connect(
            url, origin=Origin(origin) if origin else None, additional_headers=headers, open_timeout=15
        ) as ws:
            first = await asyncio.wait_for(ws.recv(), 15)
            assert '"initial"' in first
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


def status(url: str, origin: str | None, headers: dict[str, str] | None = None) -> int:
    return asyncio.run(_status_of_handshake(url, origin, headers))


def _create_key(server: LiveServer, scopes: str) -> str:
    code = f"from metrics.models import ApiKey; print(ApiKey.generate('cli', scopes={scopes!r})[1])"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.live
def test_a_real_server_checks_the_full_origin_and_lets_scripts_in(tmp_path):
    with LiveServer(tmp_path, DASHBOARD_REQUIRE_LOGIN="0") as open_server:
        own_origin = f"http://127.0.0.1:{open_server.port}"
        assert status(open_server.ws_url, own_origin) == 101
        assert status(open_server.ws_url, None) == 101  # the websockets client's default: no Origin
        assert status(open_server.ws_url, "http://127.0.0.1:9999") == 403
        assert status(open_server.ws_url, "https://evil.example.net") == 403


@pytest.mark.live
def test_a_real_locked_server_wants_a_session_or_a_read_key(tmp_path):
    with LiveServer(tmp_path, DASHBOARD_REQUIRE_LOGIN="1") as locked:
        own_origin = f"http://127.0.0.1:{locked.port}"
        assert status(locked.ws_url, own_origin) == 403
        assert status(locked.ws_url, None) == 403
        reader, agent = _create_key(locked, "read"), _create_key(locked, "ingest")
        assert status(locked.ws_url, None, {"Authorization": f"Bearer {reader}"}) == 101
        assert status(f"{locked.ws_url}?api_key={reader}", None) == 101
        assert status(locked.ws_url, None, {"X-API-Key": agent}) == 403
