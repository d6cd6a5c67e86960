"""metrics/live/transport.py reaches into daphne, autobahn and Twisted: pin what it was checked against.

An upgrade of any of the three fails here first, as a reminder to re-read
transport.py against the new code (and then move the pins); the names it
uses are checked too, so a rename shows as a failing test, not as lost
backpressure in production.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest

CHECKED_AGAINST = {"daphne": "4.2.1", "autobahn": "26.10.2", "twisted": "26.10.0"}


@pytest.mark.parametrize(("package", "pinned"), sorted(CHECKED_AGAINST.items()))
def test_the_installed_version_is_the_one_transport_was_checked_against(package, pinned):
    assert version(package) == pinned, f"{package} changed: re-check metrics/live/transport.py, then move the pin"


def test_daphne_still_sends_through_handle_reply_and_channels_keeps_it_as_real_send():
    from channels import sessions
    from daphne.server import Server

    assert "handle_reply" in vars(Server)
    assert "real_send" in inspect.getsource(sessions)


def test_autobahn_still_has_the_protocol_names_transport_uses():
    from autobahn.websocket.protocol import WebSocketProtocol

    assert {"failByDrop", "maxFramePayloadSize"} <= set(WebSocketProtocol.CONFIG_ATTRS_COMMON)
    assert callable(WebSocketProtocol.sendMessage)
    assert hasattr(WebSocketProtocol, "STATE_OPEN")


def test_twisted_still_passes_producers_through_the_http_channel():
    from twisted.internet.tcp import Connection
    from twisted.web.http import HTTPChannel

    assert callable(HTTPChannel.registerProducer) and callable(HTTPChannel.unregisterProducer)
    assert "_requestProducer" in inspect.getsource(HTTPChannel)
    assert callable(Connection.abortConnection)
