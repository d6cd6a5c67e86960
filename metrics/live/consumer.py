"""The /ws/metrics consumer. Thin: join the hub, send the snapshot, apply client messages.

The protocol lives in metrics.live.protocol (plain functions), delivery in
metrics.live.fanout (per-process hub, per-connection outbox and sender task).
"""

from __future__ import annotations

import asyncio

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from metrics import stats
from metrics.live import fanout, protocol, transport


class MetricsConsumer(AsyncWebsocketConsumer):
    # Updates come through the hub's single subscription, not a per-consumer group.
    groups: list[str] = []

    async def connect(self) -> None:
        conf = settings.TELEMETRY
        self.max_message_bytes = conf["WS_MAX_MESSAGE_BYTES"]
        self.rate = protocol.RateLimit(conf["WS_MAX_MESSAGES_PER_SECOND"])
        self.watch = transport.TransportWatch.attach(self.base_send, self._stalled, conf["WS_STALL_TIMEOUT_SECONDS"])
        if self.watch is not None:
            self.watch.limit_incoming(self.max_message_bytes)
        self.conn = fanout.Connection(
            self.send,
            conf["WS_FLUSH_INTERVAL_MS"] / 1000,
            conf["WS_QUEUE_POINTS"],
            self.watch,
            on_error=lambda: self.close(code=fanout.CLOSE_SERVER_ERROR),
        )
        # Join before reading the snapshot so no point falls between the two
        # (a point may then arrive in both).
        await fanout.hub().join(self.conn)
        await self.accept()
        initial = await database_sync_to_async(protocol.latest_points)(protocol.INITIAL_POINTS)
        await self.send(protocol.initial_frame(initial))
        self.conn.start()

    async def disconnect(self, code: int) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            await conn.stop()
            await fanout.hub().leave(conn)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data) if text_data is not None else len(bytes_data or b"")
        if size > self.max_message_bytes:  # servers other than daphne deliver it whole
            stats.ws_refused_too_big.inc()
            await self.close(code=fanout.CLOSE_TOO_BIG)
            return
        if not self.rate.allow(asyncio.get_running_loop().time()):
            stats.ws_refused_rate.inc()
            await self.close(code=fanout.CLOSE_RATE_LIMIT)
            return
        subscription = self.conn.subscription
        before = subscription.key, subscription.mode, subscription.interval
        reply = protocol.handle_client_message(subscription, text_data, bytes_data)
        if (subscription.key, subscription.mode, subscription.interval) != before:
            fanout.hub().resubscribed(self.conn)
        await self.send(protocol.encode(reply))

    def _stalled(self) -> None:
        """The client has not read for the stall timeout: close, then cut the TCP connection."""
        stats.ws_closed_slow.inc()
        loop = asyncio.get_running_loop()
        loop.create_task(self.close(code=fanout.CLOSE_TOO_SLOW))
        if self.watch is not None:  # always set when this callback can fire
            # The close frame sits behind the unread backlog; do not wait for the peer.
            loop.call_later(1.0, self.watch.abort)
