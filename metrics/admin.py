from __future__ import annotations

import orjson
from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from .admin_paging import LargeTableAdmin, ServiceFilter, time_range_filter
from .models import Alert, AlertRule, ApiKey, Point, Rollup, Series, Service


@admin.register(Point)
class PointAdmin(LargeTableAdmin):
    # Millions of rows: every list query is served by an index (docs/performance.md,
    # "Admin lists"). No date_hierarchy (DISTINCT by day over the whole table), no
    # free-text search (an unindexed LIKE scan): the time and service filters do both.
    list_display = ("timestamp", "service", "metric_type", "value")
    list_filter = (time_range_filter("timestamp"), ServiceFilter, "metric_type")
    ordering = ("-timestamp",)
    sortable_by = ("timestamp",)


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ("name", "first_seen", "last_seen")
    search_fields = ("name",)

    # Deleting a service frees room under MAX_SERVICES; its series go with it,
    # its points and rollups stay until retention.
    def delete_model(self, request: HttpRequest, obj: Service) -> None:
        Series.objects.filter(service=obj.name).delete()
        super().delete_model(request, obj)
        _forget_series()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Service]) -> None:
        Series.objects.filter(service__in=list(queryset.values_list("name", flat=True))).delete()
        super().delete_queryset(request, queryset)
        _forget_series()


def _forget_series() -> None:
    """After a delete: this process's ingest stops trusting the rows (others within ingest.TRUST)."""
    from metrics.ingest.store import known

    transaction.on_commit(known.clear)


@admin.register(Series)
class SeriesAdmin(admin.ModelAdmin):
    """What the cardinality caps count. Deleting a series frees room under MAX_SERIES_PER_SERVICE at once;
    its points and rollups stay, and its next point creates it again."""

    list_display = ("service", "metric_type", "tags_text", "first_seen", "last_seen")
    list_filter = ("metric_type",)
    search_fields = ("service",)
    ordering = ("service", "metric_type", "tags_hash")
    readonly_fields = ("service", "metric_type", "tags_text", "tags_hash", "first_seen", "last_seen")
    fields = readonly_fields
    show_full_result_count = False

    @admin.display(description="tags")
    def tags_text(self, obj: Series) -> str:
        if obj.tags is None:
            return "(not known: first seen before tags were recorded)"
        return orjson.dumps(obj.tags, option=orjson.OPT_SORT_KEYS).decode() if obj.tags else "(none)"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Series) -> None:
        super().delete_model(request, obj)
        _forget_series()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Series]) -> None:
        super().delete_queryset(request, queryset)
        _forget_series()


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = (
        "started_at",
        "service",
        "metric_type",
        "kind",
        "severity",
        "state",
        "value",
        "latest_value",
        "acknowledged_by",
    )
    list_filter = ("state", "kind", "severity", "service", "metric_type")
    date_hierarchy = "started_at"
    actions = ["acknowledge", "resolve"]

    @admin.action(description="Acknowledge selected alerts")
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        n = queryset.filter(acknowledged_at__isnull=True).update(
            acknowledged_at=timezone.now(), acknowledged_by=request.user.get_username()
        )
        self.message_user(request, f"Acknowledged {n} alert(s).")

    @admin.action(description="Resolve selected alerts")
    def resolve(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        n = queryset.filter(state=Alert.FIRING).update(state=Alert.RESOLVED, resolved_at=timezone.now())
        self.message_user(request, f"Resolved {n} alert(s).")


@admin.register(Rollup)
class RollupAdmin(LargeTableAdmin):
    # As PointAdmin: index-served lists, bounded counts, a time filter for drill-down.
    list_display = ("minute", "service", "metric_type", "count", "min", "max")
    list_filter = (time_range_filter("minute"), ServiceFilter, "metric_type")
    ordering = ("-minute",)
    sortable_by = ("minute",)
    exclude = ("sketch",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Rollup]:
        # The sketch blob is never shown; reading it would multiply the rows' bytes.
        return super().get_queryset(request).defer("sketch")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ("metric_type", "service", "warning", "critical", "direction", "enabled", "anomaly")
    list_filter = ("metric_type", "direction", "enabled", "anomaly")
    list_editable = ("warning", "critical", "enabled")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "scopes", "services", "created_at", "last_used_at", "revoked_at")
    list_filter = ("scopes",)
    readonly_fields = ("prefix", "created_at", "last_used_at")
    fields = ("name", "scopes", "services", "prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: object, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = ApiKey.generate(obj.name, obj.services, obj.scopes)
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        obj.created_at = key.created_at
        # Only the hash is stored; the raw key lives on this object for response_add.
        obj.raw_key = raw  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        """Show the new key once, in this response's body.

        Not through the messages framework: its default storage keeps messages
        in a signed but readable cookie (or the session), which would carry the
        raw key in every later request until it is displayed.
        """
        raw = getattr(obj, "raw_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "New API key",
            "key": obj,
            "raw_key": raw,
        }
        response = TemplateResponse(request, "admin/metrics/apikey/created.html", context)
        # Keep the key out of caches and out of the browser's back/forward history.
        add_never_cache_headers(response)
        response["Cache-Control"] += ", no-store"
        return response

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        n = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {n} key(s).")


from .alerts import admin as alerts_admin  # noqa: E402,F401 - registers contact points, outbox, silences
