"""What a message says and how it leaves: the Alertmanager webhook (signed) or Apprise.

Building a message reads the database; sending one never does, so sends run
in worker threads while the runner's thread keeps the database work.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import threading
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from django.conf import settings

from . import notify
from .models import ContactPoint

# Apprise's email plugin imports imghdr (for PGPy), deprecated on Python 3.11/3.12: import
# it once here, quietly, rather than warn from a worker thread at the first email.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'imghdr' is deprecated", DeprecationWarning)
    # Python 3.13 removed it; Apprise installs its own stand-in there.
    with contextlib.suppress(ImportError):
        import imghdr  # noqa: F401

SIGNATURE_HEADER = "X-Telemetry-Signature"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert
RANGES = (("15m", 900), ("1h", 3600), ("6h", 6 * 3600), ("24h", 24 * 3600), ("7d", 7 * 24 * 3600))


def _iso(dt: datetime | None) -> str:
    if dt is None:
        return ZERO_TIME
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def service_link(alert: Any, now: datetime) -> str:
    """The service page over the smallest range that still shows when the alert started."""
    age = (now - alert.started_at).total_seconds()
    range_key = next((key for key, seconds in RANGES if age <= seconds * 0.8), RANGES[-1][0])
    base = settings.TELEMETRY["NOTIFY_EXTERNAL_URL"]
    return f"{base}/services/{alert.service}/?{urlencode({'range': range_key})}#alert-{alert.pk}"


def alert_entry(alert: Any, now: datetime) -> dict[str, Any]:
    firing = alert.state == "firing"
    return {
        "status": "firing" if firing else "resolved",
        "labels": notify.labels(alert),
        "annotations": {
            "summary": alert.message,
            "value": f"{alert.latest_value:g}",
            "threshold": f"{alert.threshold:g}",
        },
        "startsAt": _iso(alert.started_at),
        "endsAt": ZERO_TIME if firing else _iso(alert.resolved_at),
        "generatorURL": service_link(alert, now),
        "fingerprint": notify.fingerprint(alert),
    }


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    return {k: v for k, v in dicts[0].items() if all(d.get(k) == v for d in dicts[1:])}


def alertmanager_body(point: ContactPoint, group_key: str, alerts: list[Any], now: datetime) -> dict[str, Any]:
    """The JSON Alertmanager's webhook_config sends (version 4)."""
    entries = [alert_entry(a, now) for a in alerts]
    return {
        "version": "4",
        "groupKey": f'{{}}:{{service="{group_key}"}}',
        "truncatedAlerts": 0,
        "status": "firing" if any(e["status"] == "firing" for e in entries) else "resolved",
        "receiver": point.name,
        "groupLabels": {"service": group_key},
        "commonLabels": _common([e["labels"] for e in entries]),
        "commonAnnotations": _common([e["annotations"] for e in entries]),
        "externalURL": settings.TELEMETRY["NOTIFY_EXTERNAL_URL"],
        "alerts": entries,
    }


def apprise_message(status: str, group_key: str, alerts: list[Any], now: datetime) -> dict[str, str]:
    firing = [a for a in alerts if a.state == "firing"]
    word = {"open": "FIRING", "escalate": "ESCALATED", "resolve": "RESOLVED"}[status]
    title = f"[{word}] {group_key}: {len(firing)} firing, {len(alerts) - len(firing)} resolved"
    lines = []
    for a in alerts:
        state = a.severity.upper() if a.state == "firing" else "RESOLVED"
        lines.append(f"{state} [{notify.kind(a)}] {a.message}\n  {service_link(a, now)}")
    notify_type = (
        "success" if not firing else ("failure" if any(a.severity == "critical" for a in firing) else "warning")
    )
    return {"title": title, "body": "\n".join(lines), "type": notify_type}


def build(point: ContactPoint, status: str, group_key: str, alerts: list[Any], now: datetime) -> dict[str, Any]:
    if point.is_alertmanager:
        return alertmanager_body(point, group_key, alerts, now)
    return apprise_message(status, group_key, alerts, now)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str = ""


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(destination: str, secret: str, payload: dict[str, Any], notification_id: int, timeout: float) -> Outcome:
    """One delivery attempt. No database access: this runs in a worker thread."""
    try:
        scheme = destination.partition("://")[0].lower()
        if scheme.startswith("alertmanager+"):
            return _post_webhook(destination.removeprefix("alertmanager+"), secret, payload, notification_id, timeout)
        return _apprise(destination, payload, timeout)
    except Exception as exc:  # a destination must never take the runner down
        return Outcome(False, f"{type(exc).__name__}: {exc}")


def _post_webhook(url: str, secret: str, payload: dict[str, Any], notification_id: int, timeout: float) -> Outcome:
    body = orjson.dumps(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "telemetry-alerts",
        "X-Telemetry-Notification": str(notification_id),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - admin-configured URL
            return Outcome(200 <= response.status < 300, f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        return Outcome(False, f"HTTP {exc.code}: {exc.read(300).decode(errors='replace')}")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return Outcome(False, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")


class _ThreadLog(logging.Handler):
    """Apprise reports failures only through its logger; keep the lines of this thread's send."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage())


def _apprise(url: str, payload: dict[str, Any], timeout: float) -> Outcome:
    import apprise

    if "cto=" not in url and "rto=" not in url:
        # Apprise's own default is 4 s each; ours keeps a dead destination from holding a worker longer.
        url += ("&" if "?" in url else "?") + urlencode({"cto": timeout, "rto": timeout})
    sender = apprise.Apprise()
    if not sender.add(url):
        return Outcome(False, "not a valid Apprise URL (see https://github.com/caronc/apprise/wiki)")
    log = _ThreadLog()
    logger = logging.getLogger("apprise")
    logger.addHandler(log)
    try:
        ok = sender.notify(title=payload["title"], body=payload["body"], notify_type=payload.get("type", "info"))
    finally:
        logger.removeHandler(log)
    return Outcome(bool(ok), "" if ok else ("; ".join(log.lines[-3:]) or "Apprise reported a failure"))
