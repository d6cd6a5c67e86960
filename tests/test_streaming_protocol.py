"""The /ws/metrics protocol as plain code: client messages, filtering, frames, outboxes, limits.

No server and no event loop except where the unit is a Twisted/asyncio callback
(TransportWatch), which runs on a test loop with a fake transport.
"""

from __future__ import annotations

import asyncio
import functools

import orjson

from metrics.live import transport as live_transport
from metrics.live.protocol import Outbox, RateLimit, Subscription, Throttle, Update, batch_frames, handle_client_message


def point(service="api", metric_type="latency", value=1.0, **tags):
    return {
        "timestamp": "2024-01-01T12:00:00Z",
        "service": service,
        "metric_type": metric_type,
        "value": value,
        "tags": tags,
    }


def alert(service="api", metric_type="latency", id=1):
    return {"id": id, "service": service, "metric_type": metric_type, "state": "firing", "severity": "critical"}


def decode(frames):
    return [orjson.loads(f) for f in frames]


# --- client messages ---------------------------------------------------------------


def test_ping_is_answered_with_pong_and_server_time_and_echoes_the_id():
    reply = handle_client_message(Subscription(), '{"action": "ping", "id": 7}', None)
    assert reply["type"] == "pong"
    assert reply["server_time"].endswith("Z")
    assert reply["id"] == 7


def test_subscribe_sets_services_types_and_batch():
    sub = Subscription()
    reply = handle_client_message(
        sub, '{"action": "subscribe", "services": ["b", "a"], "metric_types": ["cpu"], "batch": true}', None
    )
    assert reply == {
        "type": "subscribed",
        "services": ["a", "b"],
        "metric_types": ["cpu"],
        "batch": True,
        "mode": "batch",
        "interval": None,
    }
    assert sub.services == {"a", "b"} and sub.metric_types == {"cpu"} and sub.batch


def test_subscribe_with_empty_or_null_lists_means_everything():
    sub = Subscription()
    handle_client_message(sub, '{"action": "subscribe", "services": [], "metric_types": null}', None)
    assert sub.services is None and sub.metric_types is None and not sub.batch


def test_unsubscribe_returns_to_everything_unbatched():
    sub = Subscription(services=frozenset({"a"}), batch=True)
    assert handle_client_message(sub, '{"action": "unsubscribe"}', None) == {"type": "unsubscribed"}
    assert sub == Subscription()


def test_subscription_accepts_bytes_frames():
    sub = Subscription()
    reply = handle_client_message(sub, None, b'{"action": "subscribe", "services": ["a"]}')
    assert reply["type"] == "subscribed"


def test_malformed_messages_get_an_error_and_leave_the_subscription_alone():
    sub = Subscription(services=frozenset({"keep"}))
    cases = [
        "not json",
        "[1, 2]",
        '{"action": "dance"}',
        '{"no": "action"}',
        '{"action": "subscribe", "services": "api"}',
        '{"action": "subscribe", "services": [1]}',
        '{"action": "subscribe", "metric_types": ["temperature"]}',
        '{"action": "subscribe", "batch": "yes"}',
    ]
    for text in cases:
        reply = handle_client_message(sub, text, None)
        assert reply["type"] == "error", text
        assert isinstance(reply["error"], str) and reply["error"]
    assert sub.services == {"keep"}


# --- filtering and frames ----------------------------------------------------------------


def test_update_chunk_holds_only_matching_points_as_a_json_array_body():
    update = Update([point("a", "cpu", 1), point("b", "cpu", 2), point("a", "latency", 3)], [])
    body, n = update.chunk(Subscription(services=frozenset({"a"}), metric_types=frozenset({"cpu"})))
    assert n == 1
    assert orjson.loads(b"[" + body + b"]") == [point("a", "cpu", 1)]


def test_update_serialises_once_per_subscription():
    update = Update([point()], [])
    first = update.chunk(Subscription(batch=True))
    assert update.chunk(Subscription()) is first  # same filter, batch flag irrelevant


def test_single_frames_are_metric_frames_in_order():
    update = Update([point(value=1), point(value=2)], [])
    frames = decode(update.singles(Subscription()))
    assert frames == [{"type": "metric", "data": point(value=1)}, {"type": "metric", "data": point(value=2)}]


def test_alert_frames_follow_the_subscription_filter():
    update = Update([], [alert("a", id=1), alert("b", id=2)])
    frames = decode(update.alert_frames(Subscription(services=frozenset({"b"}))))
    assert frames == [{"type": "alert", "data": alert("b", id=2)}]


def test_batch_frames_join_chunks_and_split_past_the_point_limit():
    u1 = Update([point(value=i) for i in range(3)], [])
    u2 = Update([point(value=i) for i in range(3, 5)], [])
    sub = Subscription(batch=True)
    one = decode(batch_frames([u1.chunk(sub), u2.chunk(sub)]))
    assert one == [{"type": "metrics", "data": [point(value=i) for i in range(5)]}]
    split = decode(batch_frames([u1.chunk(sub), u2.chunk(sub)], max_points=3))
    assert [len(f["data"]) for f in split] == [3, 2]


def test_batch_frames_skip_empty_chunks():
    assert batch_frames([(b"", 0)]) == []


# --- outbox: bounded, drop oldest, lag notice --------------------------------------------


def test_outbox_in_batch_mode_gathers_updates_into_one_metrics_frame():
    box = Outbox()
    box.subscription.batch = True
    box.offer(Update([point(value=1)], []))
    box.offer(Update([point(value=2)], [alert()]))
    frames = decode(box.take())
    assert frames == [{"type": "metrics", "data": [point(value=1), point(value=2)]}, {"type": "alert", "data": alert()}]
    assert not box and box.take() == []


def test_outbox_sends_metric_then_alert_frames_in_single_mode():
    box = Outbox()
    box.offer(Update([point(value=1)], [alert()]))
    assert [f["type"] for f in decode(box.take())] == ["metric", "alert"]


def test_outbox_ignores_updates_that_do_not_match():
    box = Outbox()
    box.subscription.services = frozenset({"other"})
    assert box.offer(Update([point("api")], [alert("api")])) is False
    assert not box


def test_full_outbox_drops_oldest_updates_and_reports_lag_first():
    box = Outbox(max_points=5)
    box.subscription.batch = True
    for i in range(4):
        box.offer(Update([point(value=10 * i + j) for j in range(2)], []))
    frames = decode(box.take())
    assert frames[0] == {"type": "lag", "dropped": 4}
    assert [p["value"] for p in frames[1]["data"]] == [20, 21, 30, 31]
    # The notice is given once.
    box.offer(Update([point(value=99)], []))
    assert [f["type"] for f in decode(box.take())] == ["metrics"]


def test_outbox_alert_queue_is_bounded_separately():
    box = Outbox(max_points=1, max_alerts=2)
    for i in range(3):
        box.offer(Update([], [alert(id=i)]))
    frames = decode(box.take())
    assert frames[0] == {"type": "lag", "dropped": 1}
    assert [f["data"]["id"] for f in frames[1:]] == [1, 2]


def test_an_update_bigger_than_the_bound_is_kept_whole_not_split():
    box = Outbox(max_points=2)
    box.offer(Update([point(value=i) for i in range(5)], []))
    assert len(box.take()) == 5


def test_clearing_the_outbox_forgets_queued_updates():
    box = Outbox()
    box.offer(Update([point()], [alert()]))
    box.clear()
    assert box.take() == []


# --- coalescing and inbound rate -------------------------------------------------------------


def test_throttle_flushes_an_idle_connection_at_once_then_once_per_interval():
    throttle = Throttle(0.1, burst=2)
    for now in (1000.0, 1000.0):  # the burst: two flushes straight away
        assert throttle.delay(now) == 0
        throttle.flushed(now)
    assert abs(throttle.delay(1000.03) - 0.07) < 1e-6  # then one token per 100 ms
    assert throttle.delay(1000.1) == 0
    throttle.flushed(1000.1)
    assert throttle.delay(1000.15) > 0
    assert throttle.delay(1005.0) == 0


def test_throttle_does_not_ratchet_delays_when_updates_come_one_interval_apart():
    throttle = Throttle(0.1, burst=2)
    now = 0.0
    for jitter in [0, 0.02, -0.02, 0.01, -0.015, 0, 0.005, -0.01] * 5:
        now += 0.1 + jitter
        assert throttle.delay(now) == 0
        throttle.flushed(now)


def test_throttle_with_no_interval_never_waits():
    throttle = Throttle(0)
    throttle.flushed(1.0)
    assert throttle.delay(1.0) == 0


def test_rate_limit_allows_a_burst_of_twice_the_rate_then_the_rate():
    limit = RateLimit(10)
    assert sum(limit.allow(0.0) for _ in range(25)) == 20
    assert limit.allow(0.05) is False
    assert limit.allow(0.1) is True
    assert sum(limit.allow(10.0) for _ in range(25)) == 20


# --- daphne transport introspection ---------------------------------------------------------


class FakeProtocol:
    def __init__(self, transport):
        self.transport = transport

    def sendMessage(self, payload, isBinary=False):  # noqa: N802 (autobahn's name)
        pass


class FakeTransport:
    def __init__(self):
        self.producer = None
        self.connected = True
        self.aborted = False

    def registerProducer(self, producer, streaming):  # noqa: N802 (Twisted's name)
        if self.producer is not None:
            raise RuntimeError("already registered")
        self.producer = producer

    def unregisterProducer(self):  # noqa: N802
        self.producer = None

    def abortConnection(self):  # noqa: N802
        self.aborted = True


class SessionWrapper:
    def __init__(self, send):
        self.real_send = send

    async def send(self, message):
        return await self.real_send(message)


async def _reply(protocol, message):
    return None


def test_daphne_protocol_is_found_through_the_session_wrapper():
    protocol = FakeProtocol(FakeTransport())
    send = functools.partial(_reply, protocol)
    assert live_transport.daphne_protocol(send) is protocol
    assert live_transport.daphne_protocol(SessionWrapper(send).send) is protocol


def test_other_servers_have_no_daphne_protocol():
    async def send(message):
        return None

    assert live_transport.daphne_protocol(send) is None
    assert live_transport.daphne_protocol(functools.partial(_reply, object())) is None


async def test_transport_watch_reports_pause_and_resume_and_calls_stall_after_timeout():
    transport = FakeTransport()
    stalled: list[str] = []
    fired = asyncio.Event()

    def on_stall() -> None:
        stalled.append("stall")
        fired.set()

    watch = live_transport.TransportWatch.attach(functools.partial(_reply, FakeProtocol(transport)), on_stall, 0.05)
    assert watch is not None and transport.producer is watch
    watch.pauseProducing()
    assert watch.paused and not watch.resumed.is_set()
    watch.resumeProducing()
    assert not watch.paused and watch.resumed.is_set()
    watch.pauseProducing()
    # Wait for the condition, not a duration. The first pause's timer is due
    # before this one: had resuming not cancelled it, it would have fired too.
    await asyncio.wait_for(fired.wait(), 30)
    assert stalled == ["stall"]
    watch.detach()
    assert transport.producer is None


async def test_transport_watch_sets_autobahn_inbound_limits():
    protocol = FakeProtocol(FakeTransport())
    watch = live_transport.TransportWatch.attach(functools.partial(_reply, protocol), lambda: None, 1)
    watch.limit_incoming(1000)
    assert protocol.maxFramePayloadSize == 1000
    assert not hasattr(protocol, "maxMessagePayloadSize")  # autobahn would apply it to sending too
    assert protocol.failByDrop is False


def test_transport_watch_leaves_a_transport_with_another_producer_alone():
    transport = FakeTransport()
    transport.producer = object()
    transport.producer_is_other = True
    # The HTTP channel case: the existing producer is asked first; a plain object cannot take one.
    assert (
        live_transport.TransportWatch.attach(functools.partial(_reply, FakeProtocol(transport)), lambda: None, 1)
        is None
    )
