"""Per-process fan-out of broadcasts to this process's WebSocket connections.

One `Hub` per event loop (one per daphne process) holds the process's single
channel-layer subscription to the "metrics" group and hands every message to
its connections' outboxes. Redis therefore carries one copy of each broadcast
per server process, not one per connected browser, and the in-memory layer
copies nothing per client.

Each `Connection` owns a bounded `protocol.Outbox` and one sender task that
flushes it, coalesced by a `protocol.Throttle`. Under daphne, a
`transport.TransportWatch` tells when more than 64 KiB wait in the
connection's write buffer and when they drained. While paused the sender holds back (the outbox
drops the oldest updates and the client gets a "lag" notice), and a transport
that stays paused for the stall timeout is closed. Memory per connection is
therefore bounded by the outbox, not by how slowly a client reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer

from metrics import stats
from metrics.live.protocol import Outbox, Throttle, Update
from metrics.live.summary import Aggregator
from metrics.live.transport import TransportWatch

log = logging.getLogger(__name__)
GROUP = "metrics"
MESSAGE_TYPE = "metrics.batch"

# Close codes. Under daphne an over-sized frame is refused by autobahn itself
# with 1009 (RFC 6455 "message too big") before it is buffered; applications may
# only close with 1000 or 3000-4999, so the consumer's own refusals use 4xxx.
CLOSE_TOO_BIG = 4009  # a message over WS_MAX_MESSAGE_BYTES reached the consumer (not daphne)
CLOSE_RATE_LIMIT = 4029  # client messages over WS_MAX_MESSAGES_PER_SECOND
CLOSE_TOO_SLOW = 4008  # the client stopped reading for WS_STALL_TIMEOUT_SECONDS
CLOSE_SERVER_ERROR = 4011  # the sender failed (logged): the client should reconnect


class Connection:
    """One WebSocket client as the hub sees it: an outbox and the task that flushes it."""

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        flush_interval: float,
        max_points: int,
        watch: TransportWatch | None = None,
        on_error: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._on_error = on_error
        self.outbox = Outbox(max_points=max_points)
        self.throttle = Throttle(flush_interval)
        self.watch = watch
        self._send = send
        self._wake = asyncio.Event()
        self._armed = False
        self._task: asyncio.Task | None = None

    @property
    def subscription(self):
        return self.outbox.subscription

    def offer(self, update: Update) -> None:
        if self.outbox.offer(update) and not self._armed:
            self._armed = True
            self._wake.set()

    def offer_summary(self, frame: bytes) -> None:
        self.outbox.offer_summary(frame)
        if not self._armed:
            self._armed = True
            self._wake.set()

    def resubscribed(self) -> None:
        """The subscription changed: drop what was queued under the old one."""
        self.outbox.clear()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        if self.outbox:
            self._armed = True
            self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.watch is not None:
            self.watch.detach()

    async def _run(self) -> None:
        try:
            await self._flush_forever()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("WebSocket sender failed; closing the connection")
            stats.ws_sender_errors.inc()
            if self._on_error is not None:
                await self._on_error()

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = self.throttle.delay(loop.time())
            if delay:
                await asyncio.sleep(delay)
            if self.watch is not None and self.watch.paused:
                # The outbox keeps bounding memory meanwhile; the watch closes us on a stall.
                await self.watch.resumed.wait()
            frames = self.outbox.take()
            self._armed = False
            if not frames:
                continue
            self.throttle.flushed(loop.time())
            if frames[0].startswith(b'{"type":"lag"'):
                stats.ws_lag_notices.inc()
            if self.watch is not None:
                for frame in frames:
                    if not self.watch.send_text(frame):
                        return  # closing: disconnect() stops this task
            else:
                for frame in frames:
                    await self._send(frame.decode())
            stats.ws_frames.inc(len(frames))


class Hub:
    """This event loop's one subscription to the broadcast group, fanned out to local connections."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.channel: str | None = None
        self.layer: Any = None
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.summary = Aggregator()
        self._ticker: asyncio.Task | None = None

    async def join(self, conn: Connection) -> None:
        self.connections.add(conn)
        stats.ws_connections.set(len(self.connections))
        async with self._lock:
            if self._task is None and conn in self.connections:
                await self._subscribe()

    async def leave(self, conn: Connection) -> None:
        self.connections.discard(conn)
        stats.ws_connections.set(len(self.connections))
        self.summary.forget(conn)
        async with self._lock:
            if self._task is not None and not self.connections:
                await self._unsubscribe()

    def resubscribed(self, conn: Connection) -> None:
        """`conn` changed its subscription: drop its queue, (un)register it as a summary subscriber."""
        conn.resubscribed()
        self.summary.update(conn, time.time())
        if self.summary and self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    def dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") != MESSAGE_TYPE or not self.connections:
            return
        update = Update.from_message(message)
        self.summary.add(update.points)
        # Summary subscribers take only alerts from an update: without any, they are not visited.
        skip_summary = self.summary.members and not update.alerts
        for conn in self.connections.difference(self.summary.members) if skip_summary else self.connections:
            conn.offer(update)

    async def _tick_forever(self) -> None:
        """Close the summary windows as their ends pass and queue the frames; ends with the last subscriber."""
        try:
            while self.summary:
                due = self.summary.next_due()
                # Always yield, even when the next window is already due (a tick that ran late and
                # long): the senders woken by the last tick flush first, so no client's frame is
                # replaced by the next one before it could go out.
                await asyncio.sleep(max(0.0, (due or 0.0) - time.time()))
                self.summary.tick(time.time())
        except asyncio.CancelledError:
            raise
        except Exception:  # logged and counted; the next summary subscribe starts a new ticker
            log.exception("summary ticker failed")
            stats.ws_sender_errors.inc()
        finally:
            self._ticker = None

    async def _subscribe(self) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        self.layer = layer
        try:
            self.channel = await layer.new_channel("fanout.")
            await layer.group_add(GROUP, self.channel)
        except Exception as exc:  # Redis down: connections still work; the receive loop retries
            log.warning("fan-out hub could not join the %r group: %s: %s", GROUP, type(exc).__name__, exc)
            stats.fanout_subscribe_failures.inc()
            self.channel = None
        self._task = asyncio.get_running_loop().create_task(self._receive_loop())

    async def _unsubscribe(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.layer is not None and self.channel is not None:
            try:
                await self.layer.group_discard(GROUP, self.channel)
            except Exception as exc:
                log.warning("fan-out hub could not leave the %r group: %s: %s", GROUP, type(exc).__name__, exc)
        self.channel = None

    async def _receive_loop(self) -> None:
        layer, channel = self.layer, self.channel
        expiry = getattr(layer, "group_expiry", None)
        refresh_every = min(expiry / 2, 3600.0) if expiry else None
        loop = asyncio.get_running_loop()
        joined_at = loop.time()
        while True:
            try:
                if channel is None:
                    channel = self.channel = await layer.new_channel("fanout.")
                    await layer.group_add(GROUP, channel)
                    joined_at = loop.time()
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                stats.fanout_receive_errors.inc()
                log.warning("fan-out hub receive failed: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1.0)
                continue
            self.dispatch(message)
            if refresh_every and loop.time() - joined_at > refresh_every:
                # Layers with a group expiry (in-memory, core Redis) forget members after a day.
                await layer.group_add(GROUP, channel)
                joined_at = loop.time()

    def group_members(self) -> int | None:
        """How many channels of this process the layer lists in the group (the hub's, or none)."""
        layer = self.layer or get_channel_layer()
        groups = getattr(layer, "groups", None)  # RedisPubSubChannelLayer proxies to this loop's layer
        if not isinstance(groups, dict):
            return None
        # The pub/sub layer keys groups by their Redis channel name.
        name = layer._get_group_channel_name(GROUP) if hasattr(layer, "_get_group_channel_name") else GROUP
        return len(groups.get(name, ()))


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()
_serving_loop: asyncio.AbstractEventLoop | None = None


def hub() -> Hub:
    """The running event loop's hub (created on first use)."""
    global _serving_loop
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None:
        found = _hubs[loop] = Hub()
        _serving_loop = loop
    return found


def serving_loop() -> asyncio.AbstractEventLoop | None:
    """The loop that serves WebSocket connections in this process, if one is running."""
    loop = _serving_loop
    return loop if loop is not None and loop.is_running() else None


def local_delivery() -> bool:
    """True when the layer cannot cross processes, so publishing may hand updates to the hub directly."""
    return isinstance(get_channel_layer(), InMemoryChannelLayer)
