from django.core.management.base import BaseCommand

from metrics.maintenance.retention import prune


class Command(BaseCommand):
    help = (
        "Roll up completed minutes, then delete raw points, rollups and resolved alerts past retention, "
        "and the series and services with no data left."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--dry-run", action="store_true", help="Report what would be deleted; change nothing.")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        report = prune(dry_run=options["dry_run"])
        verb = "would delete" if report.dry_run else "deleted"
        self.stdout.write(
            f"rolled up {report.rolled_up} series-minutes; {verb} {report.points_deleted} points "
            f"(before {report.points_cutoff}), {report.rollups_deleted} rollups and {report.tier_windows_deleted} tier windows "
            f"(before {report.rollups_cutoff}), "
            f"{report.alerts_deleted} resolved alerts (before {report.alerts_cutoff}), "
            f"{report.series_deleted} series and {report.services_deleted} services with no data left"
        )
