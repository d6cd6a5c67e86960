"""Dashboard pages. Each page is made of fragments; an HTMX request for one
fragment (HX-Request + HX-Target naming it) gets that fragment alone.

Pages never compute chart series: charts fetch them from dashboard.data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from metrics import events
from metrics.alerts import notify as alert_notify
from metrics.alerts import silences as alert_silences
from metrics.api.access import alert_action_access, can_act_on_alerts, dashboard_access
from metrics.kinds import KINDS, METRIC_TYPES
from metrics.models import Alert, Service

from . import selection as sel
from . import status

Context = dict[str, Any]


def is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _common(request: HttpRequest, selection: sel.Selection) -> Context:
    return {
        "selection": selection,
        "ranges": list(sel.RANGES),
        "query": selection.query_string(),
        "all_services": list(Service.objects.order_by("name").values_list("name", flat=True)),
        "can_act": can_act_on_alerts(request.user),
        "metric_types": METRIC_TYPES,
        "page_path": request.path,
    }


def _cards(selection: sel.Selection) -> Context:
    return {"cards": status.cards(selection)}


def _matrix(selection: sel.Selection) -> Context:
    return {"matrix": status.matrix(selection)}


def _alerts(selection: sel.Selection) -> Context:
    panel = status.alert_panel(selection.service_list)
    alert_silences.mark(panel.firing)  # silenced_until and delivery state for the panel
    return {"panel": panel}


def _everything(selection: sel.Selection) -> Context:
    snapshot = status.Snapshot.take(selection)
    return {
        "cards": status.cards(selection, snapshot),
        "matrix": status.matrix(selection, snapshot),
        **_alerts(selection),
    }


# HX-Target (element id) -> (template, context builder). The page renders them all.
OVERVIEW_FRAGMENTS: dict[str, tuple[str, Callable[[sel.Selection], Context]]] = {
    "cards": ("dashboard/_cards.html", _cards),
    "matrix": ("dashboard/_matrix.html", _matrix),
    "alerts": ("dashboard/_alerts.html", _alerts),
    "overview-body": ("dashboard/_overview_body.html", _everything),
}


# Pages answer a whole page or one fragment for the same URL, chosen by these
# headers: caches (the browser's back button included) must keep them apart.
vary_on_fragment = vary_on_headers("HX-Request", "HX-Target")


@require_GET
@vary_on_fragment
@dashboard_access
def overview(request: HttpRequest) -> HttpResponse:
    selection = sel.from_request(request)
    context = _common(request, selection)
    fragment = OVERVIEW_FRAGMENTS.get(request.headers.get("HX-Target", "")) if is_htmx(request) else None
    if fragment:
        template, build = fragment
        return render(request, template, {**context, **build(selection)})
    return render(request, "dashboard/overview.html", {**context, **_everything(selection)})


def _service_cards(selection: sel.Selection) -> Context:
    return {"cards": status.cards(selection)}


SERVICE_FRAGMENTS: dict[str, tuple[str, Callable[[sel.Selection], Context]]] = {
    "cards": ("dashboard/_cards.html", _service_cards),
    "alerts": ("dashboard/_alerts.html", _alerts),
    "service-body": ("dashboard/_service_body.html", lambda s: {**_service_cards(s), **_alerts(s)}),
}
SERVICE_CHARTS = [
    {"id": f"svc-{m.replace('_', '-')}", "metric": m, "title": f"{KINDS[m].label}: P50, P95, P99"} for m in METRIC_TYPES
]


@require_GET
@vary_on_fragment
@dashboard_access
def service_detail(request: HttpRequest, name: str) -> HttpResponse:
    service = get_object_or_404(Service, name=name)
    picked = sel.from_request(request)
    selection = sel.Selection(picked.range_key, (service.name,), picked.now)
    context = {
        **_common(request, selection),
        "service": service,
        "query": selection.query_string(),
        "service_charts": SERVICE_CHARTS,
    }
    fragment = SERVICE_FRAGMENTS.get(request.headers.get("HX-Target", "")) if is_htmx(request) else None
    if fragment:
        template, build = fragment
        return render(request, template, {**context, **build(selection)})
    context.update(_service_cards(selection))
    context.update(_alerts(selection))
    context["tags"] = status.service_tags(service.name)
    return render(request, "dashboard/service.html", context)


def _publish(alert: Alert) -> None:
    """Tell every open dashboard (alert frame) so their panels refresh too.

    Fire-and-forget like ingestion: a slow channel layer never delays the answer.
    """
    events.announce([], [dict(alert.to_dict())])


def _page_path(request: HttpRequest) -> str:
    """The page the action came from (a local path), so the re-rendered panel refreshes from it."""
    page = request.POST.get("page", "")
    if page.startswith("/") and url_has_allowed_host_and_scheme(page, allowed_hosts=None):
        return page
    return reverse("dashboard:overview")


def _after_action(request: HttpRequest) -> HttpResponse:
    selection = sel.from_request(request)
    page = _page_path(request)
    if is_htmx(request):
        context = {**_common(request, selection), **_alerts(selection), "page_path": page}
        return render(request, "dashboard/_alerts.html", context)
    return redirect(page + "?" + selection.query_string())


def _alert_or_404(pk: int) -> Alert:
    try:
        return Alert.objects.get(pk=pk)
    except Alert.DoesNotExist:
        raise Http404("No such alert") from None


@require_POST
@alert_action_access
def acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    alert = _alert_or_404(pk)
    if alert.acknowledged_at is None:
        alert.acknowledge(request.user.get_username() if request.user.is_authenticated else "dashboard")
        _publish(alert)
    return _after_action(request)


@require_POST
@alert_action_access
def resolve(request: HttpRequest, pk: int) -> HttpResponse:
    alert = _alert_or_404(pk)
    if alert.state == Alert.FIRING:
        with transaction.atomic():
            alert.resolve()
            alert_notify.enqueue([alert])  # receivers hear a manual resolve too
        _publish(alert)
    return _after_action(request)


@require_POST
@alert_action_access
def silence(request: HttpRequest, pk: int) -> HttpResponse:
    """The alert panel's "silence 1 h": mutes the series' notifications, not the alert."""
    alert_silences.silence_alert(_alert_or_404(pk), request.user.get_username())
    return _after_action(request)
