"""The /ws/metrics consumer. Thin: join the group, apply the subscription, send.

Filtering and serialisation live in metrics.streaming; database reads in
plain functions called through database_sync_to_async.
"""

from __future__ import annotations

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import broadcast, streaming


class MetricsConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.subscription = streaming.Subscription()
        await self.channel_layer.group_add(broadcast.GROUP, self.channel_name)
        await self.accept()
        initial = await database_sync_to_async(streaming.latest_points)(50)
        await self.send_json({"type": "initial", "data": initial})

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(broadcast.GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        reply = streaming.handle_client_message(self.subscription, text_data, bytes_data)
        if reply is not None:
            await self.send_json(reply)

    async def metrics_batch(self, event: dict) -> None:
        for frame in streaming.frames_for(self.subscription, event):
            await self.send_json(frame)

    async def health_probe(self, event: dict) -> None:
        return None

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=orjson.dumps(content).decode())
