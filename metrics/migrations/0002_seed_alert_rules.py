from django.db import migrations

SEED = {
    "latency": (500.0, 1000.0, "above"),
    "error_rate": (0.05, 0.1, "above"),
    "cpu": (80.0, 95.0, "above"),
    "memory": (80.0, 95.0, "above"),
    "throughput": (100.0, 50.0, "below"),
}


def seed(apps, schema_editor):
    AlertRule = apps.get_model("metrics", "AlertRule")
    for metric_type, (warning, critical, direction) in SEED.items():
        AlertRule.objects.get_or_create(
            metric_type=metric_type,
            service="",
            defaults={"warning": warning, "critical": critical, "direction": direction},
        )


class Migration(migrations.Migration):
    dependencies = [("metrics", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
