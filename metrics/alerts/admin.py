from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from . import outbox
from .models import ContactPoint, Notification, Silence


@admin.register(ContactPoint)
class ContactPointAdmin(admin.ModelAdmin):
    list_display = ("name", "destination_kind", "services", "metric_types", "min_severity", "enabled")
    list_filter = ("enabled", "min_severity", "from_environment")
    search_fields = ("name", "services")
    readonly_fields = ("from_environment",)
    actions = ["send_test_notification"]

    @admin.display(description="kind")
    def destination_kind(self, obj: ContactPoint) -> str:
        return "alertmanager webhook" if obj.is_alertmanager else obj.destination.partition("://")[0]

    @admin.action(description="Send test notification")
    def send_test_notification(self, request: HttpRequest, queryset: QuerySet[ContactPoint]) -> None:
        for point in queryset:
            outcome = outbox.send_test(point)
            if outcome.ok:
                self.message_user(request, f"{point.name}: test notification delivered.", messages.SUCCESS)
            else:
                self.message_user(request, f"{point.name}: test failed: {outcome.error}", messages.ERROR)


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "contact_point",
        "group_key",
        "status",
        "state",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "last_error",
    )
    list_filter = ("state", "status", "contact_point")
    search_fields = ("group_key", "last_error")
    date_hierarchy = "created_at"
    raw_id_fields = ("alerts",)
    readonly_fields = [f.name for f in Notification._meta.fields if f.name != "id"] + ["alerts"]
    actions = ["retry_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Retry now (failed or pending)")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        n = queryset.exclude(state=Notification.SENT).update(
            state=Notification.PENDING, next_attempt_at=timezone.now(), claimed_until=None
        )
        self.message_user(request, f"{n} notification(s) will be sent on the next pass.")


@admin.register(Silence)
class SilenceAdmin(admin.ModelAdmin):
    list_display = ("__str__", "service", "metric_type", "starts_at", "ends_at", "created_by", "comment")
    list_filter = ("service", "metric_type")
    date_hierarchy = "starts_at"
    readonly_fields = ("created_by", "created_at", "end_handled")

    def save_model(self, request: HttpRequest, obj: Silence, form: object, change: bool) -> None:
        if not change:
            obj.created_by = request.user.get_username()
        super().save_model(request, obj, form, change)
