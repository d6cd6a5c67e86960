from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("metrics", "0003_sketch_contribution")]

    operations = [
        # Existing keys keep both scopes, so no deployed client breaks.
        migrations.AddField(
            model_name="apikey",
            name="scopes",
            field=models.CharField(
                choices=[("ingest,read", "read and ingest"), ("ingest", "ingest only"), ("read", "read only")],
                default="ingest,read",
                help_text="What the key may do: ingest points, read them, or both.",
                max_length=32,
            ),
        ),
    ]
