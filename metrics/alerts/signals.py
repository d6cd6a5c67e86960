from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from metrics.alerts.rules import rules
from metrics.models import AlertRule


@receiver([post_save, post_delete], sender=AlertRule)
def reload_rules(**kwargs: object) -> None:
    rules.invalidate()
