"""The one module that reaches into daphne, autobahn and Twisted internals: everything else speaks ASGI.

Two things ASGI does not offer, and the streaming path needs:
- backpressure: TransportWatch registers as a Twisted push producer on the
  connection, so Twisted says when more than 64 KiB wait unsent (a client not
  reading) and when they drained; fanout.Connection holds back meanwhile and
  closes a client that stays stalled;
- cheap frames: send_text() writes pre-encoded JSON bytes straight to
  autobahn, skipping the per-client decode/dispatch/encode of the ASGI send
  path (12 % of the server's time in the soak's profile).

What it relies on (tests/test_live_transport.py pins the versions it was
checked against and the names): daphne's send callable is
`functools.partial(server.handle_reply, protocol)`, which channels' session
middleware keeps as `real_send`; autobahn's protocol `sendMessage`, `state`,
`STATE_OPEN`, `failByDrop` and `maxFramePayloadSize`; twisted.web's
HTTPChannel as the transport's producer, with `registerProducer`,
`unregisterProducer` and `_requestProducer`; `abortConnection`. Under any
other server (or a test communicator) attach() returns None and the consumer
falls back to plain ASGI sends with no backpressure.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any


def daphne_protocol(send: Callable) -> Any | None:
    """The autobahn protocol behind an ASGI `send` callable served by daphne, if any.

    daphne passes `functools.partial(server.handle_reply, protocol)`; channels'
    session middleware wraps it in a bound method whose object keeps it as
    `real_send`. Anything else (another server, a test communicator) gives None.
    """
    for _ in range(8):
        if isinstance(send, functools.partial):
            for arg in send.args:
                if hasattr(arg, "transport") and hasattr(arg, "sendMessage"):
                    return arg
            return None
        owner = getattr(send, "__self__", None)
        inner = getattr(owner, "real_send", None)
        if inner is None:
            return None
        send = inner
    return None


class TransportWatch:
    """Twisted push producer for one connection: tells whether its write buffer is backed up."""

    def __init__(self, protocol: Any, on_stall: Callable[[], None], stall_timeout: float) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.on_stall = on_stall
        self.stall_timeout = stall_timeout
        self.paused = False
        self.resumed = asyncio.Event()
        self.resumed.set()
        self._timer: asyncio.TimerHandle | None = None
        self.consumer: Any = None

    @classmethod
    def attach(cls, send: Callable, on_stall: Callable[[], None], stall_timeout: float) -> TransportWatch | None:
        protocol = daphne_protocol(send)
        transport = getattr(protocol, "transport", None)
        if transport is None:
            return None
        # daphne upgrades an HTTP request: twisted.web's HTTPChannel stays the
        # transport's producer and passes pause/resume on to the producer
        # registered with it, so register there (or on the bare transport).
        consumer = getattr(transport, "producer", None) or transport
        if not hasattr(consumer, "registerProducer"):
            return None
        watch = cls(protocol, on_stall, stall_timeout)
        watch.consumer = consumer
        try:
            consumer.registerProducer(watch, True)
        except RuntimeError:  # another producer is registered: leave it alone
            return None
        return watch

    def limit_incoming(self, max_bytes: int) -> None:
        """Make autobahn refuse larger frames with close code 1009 as soon as their header arrives.

        Only the frame limit: autobahn applies maxMessagePayloadSize to outgoing
        messages too, and batch frames may be larger. A message fragmented into
        many small frames is caught by the consumer's own length check.
        """
        self.protocol.maxFramePayloadSize = max_bytes
        # Fail with a closing handshake (so the client sees the code), not a bare TCP drop.
        self.protocol.failByDrop = False

    def send_text(self, payload: bytes) -> bool:
        """Write one text frame straight to autobahn; False once the connection is closing.

        Frames are built as UTF-8 JSON bytes, shared by every connection with
        the same subscription. The ASGI send path would decode each to str,
        pass it through channels' and daphne's dispatch and encode it again,
        per client: 12 % of the server's time in the soak's profile.
        """
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return False
        protocol.sendMessage(payload, False)
        return True

    # IPushProducer, called by Twisted on the event loop's thread.
    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.resumed.clear()
        self._timer = asyncio.get_running_loop().call_later(self.stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumed.set()
        self._cancel_timer()

    def stopProducing(self) -> None:
        self._cancel_timer()
        self.resumed.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        if self.paused:
            self.on_stall()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (the peer is not reading it)."""
        if getattr(self.transport, "connected", False):
            self.transport.abortConnection()

    def detach(self) -> None:
        self._cancel_timer()
        consumer = self.consumer
        registered = getattr(consumer, "_requestProducer", getattr(consumer, "producer", None))
        if registered is self:
            consumer.unregisterProducer()
