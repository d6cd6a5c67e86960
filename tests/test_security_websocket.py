"""The /ws/metrics handshake: Origin checked against ALLOWED_HOSTS, login required when configured.

Two layers: the ASGI application in process (WebsocketCommunicator, each rule
on its own) and a real daphne server with a real websockets client.
"""

from __future__ import annotations

import asyncio

import pytest
import websockets
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from websockets.typing import Origin

from metrics.access import websocket_allowed
from telemetry_project.asgi import application
from tests.live import LiveServer

LOCAL = "http://localhost"


def communicator(origin: str | None = LOCAL, cookie: str | None = None) -> WebsocketCommunicator:
    headers = [(b"host", b"localhost")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, "/ws/metrics", headers=headers)


async def handshake(comm: WebsocketCommunicator) -> bool:
    connected, _ = await comm.connect(timeout=10)
    await comm.disconnect()
    return connected


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_from_a_foreign_origin_is_refused():
    assert await handshake(communicator(origin="https://evil.example.net")) is False


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_without_an_origin_is_refused():
    assert await handshake(communicator(origin=None)) is False


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_from_an_allowed_origin_is_accepted(telemetry):
    telemetry(DASHBOARD_REQUIRE_LOGIN=False)
    assert await handshake(communicator()) is True


@pytest.mark.django_db(transaction=True)
async def test_an_anonymous_websocket_is_refused_when_login_is_required(telemetry):
    telemetry(DASHBOARD_REQUIRE_LOGIN=True)
    assert await handshake(communicator()) is False


@pytest.mark.django_db(transaction=True)
async def test_a_logged_in_websocket_is_accepted_when_login_is_required(telemetry, async_client):
    telemetry(DASHBOARD_REQUIRE_LOGIN=True)
    user = await get_user_model().objects.acreate_user("viewer", password="pw")
    await async_client.aforce_login(user)
    cookie = f"sessionid={async_client.cookies['sessionid'].value}"
    assert await handshake(communicator(cookie=cookie)) is True
    assert await handshake(communicator(cookie="sessionid=forged")) is False


def test_the_consumer_side_check_follows_the_setting(telemetry):
    from django.contrib.auth.models import AnonymousUser

    telemetry(DASHBOARD_REQUIRE_LOGIN=True)
    assert websocket_allowed({"user": AnonymousUser()}) is False
    assert websocket_allowed({}) is False
    telemetry(DASHBOARD_REQUIRE_LOGIN=False)
    assert websocket_allowed({"user": AnonymousUser()}) is True


async def _status_of_handshake(url: str, origin: str | None) -> int:
    try:
        async with websockets.connect(url, origin=Origin(origin) if origin else None, open_timeout=15) as ws:
            first = await asyncio.wait_for(ws.recv(), 15)
            assert '"initial"' in first
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.live
def test_a_real_server_refuses_foreign_origins_and_anonymous_clients(tmp_path):
    with LiveServer(tmp_path, DASHBOARD_REQUIRE_LOGIN="0") as open_server:
        own_origin = f"http://127.0.0.1:{open_server.port}"
        assert asyncio.run(_status_of_handshake(open_server.ws_url, own_origin)) == 101
        assert asyncio.run(_status_of_handshake(open_server.ws_url, "https://evil.example.net")) == 403
    with LiveServer(tmp_path, DASHBOARD_REQUIRE_LOGIN="1") as locked:
        own_origin = f"http://127.0.0.1:{locked.port}"
        assert asyncio.run(_status_of_handshake(locked.ws_url, own_origin)) == 403
