from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from metrics import events
        from metrics.alerts import signals  # noqa: F401
        from metrics.live import publish

        # Committed points and alert changes reach WebSocket clients through this hook only:
        # the code that writes never imports metrics/live (docs/architecture.md).
        events.committed.connect(publish.on_committed, dispatch_uid="metrics.live.publish")
