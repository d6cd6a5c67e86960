from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from .admin_paging import LargeTableAdmin, ServiceFilter, time_range_filter
from .models import Alert, AlertRule, ApiKey, Point, Rollup, Service


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


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = (
        "started_at",
        "service",
        "metric_type",
        "severity",
        "state",
        "value",
        "latest_value",
        "acknowledged_by",
    )
    list_filter = ("state", "severity", "service", "metric_type")
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
    list_display = ("metric_type", "service", "warning", "critical", "direction", "enabled")
    list_filter = ("metric_type", "direction", "enabled")
    list_editable = ("warning", "critical", "enabled")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "services", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    fields = ("name", "services", "prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: object, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = ApiKey.generate(obj.name, obj.services)
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        obj.created_at = key.created_at
        # Shown exactly once: only the hash is stored.
        messages.warning(request, f"New API key (copy it now, it will not be shown again): {raw}")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        n = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {n} key(s).")
