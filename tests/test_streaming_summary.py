"""Summary subscriptions as plain code: the statistics, the windows, one encode per filter, one pending frame.

No server and no event loop: `Aggregator` is driven with literal wall-clock
seconds, the way `fanout.Hub`'s ticker drives it. The same behaviour against a
real daphne is tests/test_streaming_summary_live.py.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from metrics import stats
from metrics.live import fanout, publish
from metrics.live.protocol import Outbox, Subscription, Update, handle_client_message
from metrics.live.summary import Aggregator, series_stats
from metrics.series import sketch

# 2026-12-01T12:00:00Z: windows of 1, 5 and 10 s all start on it.
T0 = 1_796_126_400.0


def point(service="api", metric_type="latency", value=1.0):
    return {"timestamp": "2026-12-01T12:00:00Z", "service": service, "metric_type": metric_type, "value": value}


class Client:
    """What the aggregator needs of a connection: a subscription and somewhere to put a frame."""

    def __init__(self, message: str) -> None:
        self.outbox = Outbox()
        reply = handle_client_message(self.outbox.subscription, message, None)
        assert reply["type"] == "subscribed", reply

    @property
    def subscription(self) -> Subscription:
        return self.outbox.subscription

    def offer_summary(self, frame: bytes) -> None:
        self.outbox.offer_summary(frame)

    def frames(self) -> list[dict]:
        return [orjson.loads(f) for f in self.outbox.take()]


def summary(interval=1, **fields) -> str:
    return orjson.dumps({"action": "subscribe", "mode": "summary", "interval": interval, **fields}).decode()


# --- statistics ------------------------------------------------------------------------


def test_series_stats_are_exact_for_count_min_max_mean_last_and_p95_within_the_sketch_accuracy():
    values = [float(v) for v in range(1, 101)]
    [row] = series_stats({("api", "latency"): values})
    assert {k: row[k] for k in ("service", "metric_type", "count", "min", "max", "mean", "last")} == {
        "service": "api",
        "metric_type": "latency",
        "count": 100,
        "min": 1.0,
        "max": 100.0,
        "mean": 50.5,
        "last": 100.0,
    }
    exact = float(np.quantile(values, 0.95))  # 95.05
    assert row["p95"] == pytest.approx(exact, rel=sketch.RELATIVE_ACCURACY)
    # The same number the rollups' sketch gives for these values: one percentile implementation.
    assert row["p95"] == pytest.approx(min(100.0, sketch.quantiles(sketch.encode(values), [0.95])[0]), rel=1e-12)


def test_series_stats_keep_series_apart_and_sorted_and_last_is_the_last_published():
    rows = series_stats({("b", "cpu"): [5.0, 1.0, 3.0], ("a", "cpu"): [7.0]})
    assert [(r["service"], r["count"], r["min"], r["max"], r["last"]) for r in rows] == [
        ("a", 1, 7.0, 7.0, 7.0),
        ("b", 3, 1.0, 5.0, 3.0),
    ]
    assert rows[0]["p95"] == 7.0  # clamped to what was observed


# --- protocol ------------------------------------------------------------------------------


def test_subscribe_in_summary_mode_echoes_mode_and_interval():
    sub = Subscription()
    reply = handle_client_message(sub, summary(5, services=["api"]), None)
    assert reply == {
        "type": "subscribed",
        "services": ["api"],
        "metric_types": None,
        "batch": False,
        "mode": "summary",
        "interval": 5,
    }
    assert sub.interval == 5 and sub.mode == "summary"


@pytest.mark.parametrize("interval", [2, 0, -1, 1.0, "1", True, None])
def test_an_interval_outside_the_allowed_set_is_an_error_naming_the_field(interval):
    sub = Subscription()
    reply = handle_client_message(sub, summary(interval), None)
    assert reply["type"] == "error"
    assert "'interval'" in reply["error"] and "1, 5, 10" in reply["error"]
    assert sub.interval is None  # the subscription is unchanged


def test_an_unknown_mode_is_an_error_and_unsubscribe_leaves_summary_mode():
    sub = Subscription()
    assert "mode" in handle_client_message(sub, '{"action": "subscribe", "mode": "sum"}', None)["error"]
    handle_client_message(sub, summary(1), None)
    assert handle_client_message(sub, '{"action": "unsubscribe"}', None) == {"type": "unsubscribed"}
    assert sub.interval is None and sub.mode == "points"


def test_a_summary_subscriber_gets_alerts_but_no_point_frames():
    client = Client(summary(1))
    alert = {"id": 1, "service": "api", "metric_type": "latency", "state": "firing"}
    client.outbox.offer(Update([point()], [alert]))
    assert [f["type"] for f in client.frames()] == ["alert"]


# --- windows and delivery ------------------------------------------------------------------


def test_each_tick_sends_a_frame_with_the_points_published_in_it_and_an_empty_one_when_none_were():
    agg, client = Aggregator(), Client(summary(1))
    agg.update(client, T0 + 0.3)
    agg.add([point(value=float(v)) for v in range(1, 101)])
    assert agg.next_due() == T0 + 1
    assert agg.close_due(T0 + 0.99) == []
    for tick in agg.close_due(T0 + 1.01):
        agg.deliver(tick)
    [first] = client.frames()
    assert first["type"] == "summary" and first["interval"] == 1
    assert (first["start"], first["end"]) == ("2026-12-01T12:00:00.300000Z", "2026-12-01T12:00:01Z")
    [row] = first["series"]
    assert (row["count"], row["min"], row["max"], row["mean"], row["last"]) == (100, 1.0, 100.0, 50.5, 100.0)
    for tick in agg.close_due(T0 + 2.0):
        agg.deliver(tick)
    [quiet] = client.frames()
    assert (quiet["start"], quiet["end"], quiet["series"]) == ("2026-12-01T12:00:01Z", "2026-12-01T12:00:02Z", [])


def test_a_late_tick_covers_the_whole_stalled_span_instead_of_inventing_frames():
    agg, client = Aggregator(), Client(summary(1))
    agg.update(client, T0)
    [tick] = agg.close_due(T0 + 3.5)
    assert (tick.start, tick.end) == (T0, T0 + 3)
    assert agg.next_due() == T0 + 4


def test_a_filter_only_gets_its_series():
    agg = Aggregator()
    only_api = Client(summary(1, services=["api"], metric_types=["cpu"]))
    everything = Client(summary(1))
    agg.update(only_api, T0)
    agg.update(everything, T0)
    agg.add([point("api", "cpu", 1.0), point("api", "memory", 2.0), point("db", "cpu", 3.0)])
    for tick in agg.close_due(T0 + 1):
        agg.deliver(tick)
    assert [(s["service"], s["metric_type"]) for s in only_api.frames()[0]["series"]] == [("api", "cpu")]
    assert [(s["service"], s["metric_type"]) for s in everything.frames()[0]["series"]] == [
        ("api", "cpu"),
        ("api", "memory"),
        ("db", "cpu"),
    ]


def test_subscribers_with_the_same_filter_share_one_encoded_frame():
    agg = Aggregator()
    clients = [Client(summary(1, services=["api"])) for _ in range(1000)]
    other = Client(summary(1, services=["db"]))
    for c in [*clients, other]:
        agg.update(c, T0)
    agg.add([point("api"), point("db")])
    before = stats.snapshot()
    agg.tick(T0 + 1)
    after = stats.snapshot()
    assert after["ws_summary_encodes"] - before["ws_summary_encodes"] == 2
    assert after["ws_summary_frames"] - before["ws_summary_frames"] == 1001
    assert {k: agg.last_tick[k] for k in ("interval", "subscribers", "frames_encoded")} == {
        "interval": 1,
        "subscribers": 1001,
        "frames_encoded": 2,
    }
    frames = {id(c.outbox.summary) for c in clients}
    assert len(frames) == 1  # the very same bytes object in every outbox


def test_intervals_tick_apart_and_a_five_second_window_gathers_five_seconds():
    agg = Aggregator()
    fast, slow = Client(summary(1)), Client(summary(5))
    agg.update(fast, T0)
    agg.update(slow, T0)
    for second in range(5):
        agg.add([point(value=float(second))])
        for tick in agg.close_due(T0 + second + 1):
            agg.deliver(tick)
    fast_frames = fast.frames()
    slow_frames = slow.frames()
    # The fast client read nothing for 5 s: one pending frame, the other four counted as dropped.
    assert [f["type"] for f in fast_frames] == ["lag", "summary"]
    assert fast_frames[0]["dropped"] == 4
    assert fast_frames[1]["series"][0]["count"] == 1
    [five] = slow_frames
    assert five["series"][0]["count"] == 5 and five["series"][0]["mean"] == 2.0


def test_the_last_subscriber_leaving_stops_the_aggregation():
    agg, client = Aggregator(), Client(summary(1))
    agg.update(client, T0)
    assert agg
    agg.forget(client)
    assert not agg and agg.next_due() is None
    agg.add([point()])  # nothing open: nothing kept
    assert agg.windows == {}


def test_the_hub_feeds_its_aggregator_and_hands_summary_subscribers_only_alerts():
    hub = fanout.Hub()

    async def send(text: str) -> None:
        raise AssertionError("nothing is sent: no sender task runs here")

    summarised, raw = fanout.Connection(send, 0.05, 100), fanout.Connection(send, 0.05, 100)
    handle_client_message(summarised.subscription, summary(1), None)
    hub.connections.update({summarised, raw})
    hub.summary.update(summarised, T0)
    visits = []
    offer = summarised.offer
    summarised.offer = lambda update: (visits.append(update), offer(update))  # type: ignore[method-assign]
    hub.dispatch(publish.message([point(value=4.0)], []))
    assert visits == []  # an update without alerts does not even visit a summary subscriber
    assert not summarised.outbox and raw.outbox.waiting == 1
    alert = {"id": 1, "service": "api", "metric_type": "latency", "state": "firing"}
    hub.dispatch(publish.message([point(value=6.0)], [alert]))
    assert [orjson.loads(f)["type"] for f in summarised.outbox.take()] == ["alert"]
    [tick] = hub.summary.close_due(T0 + 1)
    assert [(s["count"], s["mean"]) for s in tick.series] == [(2, 5.0)]
