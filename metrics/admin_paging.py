"""Admin change lists that stay fast on tables of millions of rows (points, rollups).

Django's stock change list costs grow with the table: an exact COUNT(*) on
every page, `date_hierarchy`'s DISTINCT-by-day over every row, a filter
sidebar built from SELECT DISTINCT, and deep OFFSETs. Here:

- the count is bounded (`COUNT(*)` over at most `max_pages` pages of rows), or,
  unfiltered, an O(1) estimate of the table size;
- pages stop at `max_pages` with a message pointing at the time filter;
- the date drill-down is a time-range filter on the indexed timestamp, whose
  day choices come from two index-served MIN/MAX lookups;
- the service filter lists the small Service table.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from django.contrib import admin, messages
from django.core.paginator import EmptyPage, Paginator
from django.db import connections
from django.db.models import Max, Min, Model, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from .models import Service


def estimated_rows(model: type[Model], using: str) -> int | None:
    """The table's size without counting it: planner statistics, or the span of its ids."""
    connection = connections[using]
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table])
            row = cur.fetchone()
            if row and row[0] > 0:  # -1 or 0: never analysed yet
                return int(row[0])
        pk = connection.ops.quote_name(model._meta.pk.column)
        # Two subqueries, not MIN and MAX in one SELECT: SQLite answers each
        # alone from the primary key's b-tree, both together by a full scan.
        cur.execute(f"SELECT (SELECT MAX({pk}) FROM {table}), (SELECT MIN({pk}) FROM {table})")
        high, low = cur.fetchone()
    if high is None:
        return 0
    # Retention deletes the oldest rows, so ids stay nearly contiguous.
    return int(high) - int(low) + 1


class BoundedCountPaginator(Paginator):
    """Counts at most `max_pages` pages of rows; past that, pages stop.

    `total` is the exact count when it is cheap (within the bound), otherwise
    the estimate (unfiltered) or None ("more than the bound").
    """

    max_pages = 1000

    def __init__(self, object_list: QuerySet, per_page: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(object_list, per_page, *args, **kwargs)
        self.total: int | None = None
        self.truncated = False
        self.page_clamped = False

    @property
    def bound(self) -> int:
        return self.max_pages * self.per_page

    @cached_property
    def count(self) -> int:
        qs: QuerySet = self.object_list  # type: ignore[assignment]  # the admin always pages a QuerySet
        if not qs.query.where:
            estimate = estimated_rows(qs.model, qs.db)
            if estimate is not None and estimate > self.bound:
                self.total, self.truncated = estimate, True
                return self.bound
        # SELECT COUNT(*) FROM (SELECT id ... LIMIT bound + 1): cost grows with the bound, not the table.
        counted = qs.order_by().values("pk")[: self.bound + 1].count()
        if counted > self.bound:
            self.truncated = True
            return self.bound
        self.total = counted
        return counted

    def validate_number(self, number: Any) -> int:
        # A page past the bound shows the last page with a message instead of
        # the admin's "something's wrong with your database" error page.
        try:
            return super().validate_number(number)
        except EmptyPage:
            if int(number) > self.num_pages:
                self.page_clamped = True
                return self.num_pages
            raise


class LargeTableAdmin(admin.ModelAdmin):
    """Bounded counts, capped pages and a message that says so."""

    paginator = BoundedCountPaginator
    show_full_result_count = False

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        cl = super().get_changelist_instance(request)
        paginator = getattr(cl, "paginator", None)
        if isinstance(paginator, BoundedCountPaginator) and paginator.page_clamped:
            cl.page_num = paginator.num_pages
        if isinstance(paginator, BoundedCountPaginator) and paginator.truncated:
            name = self.model._meta.verbose_name_plural
            size = f"About {paginator.total:,} {name}" if paginator.total else f"More than {paginator.bound:,} {name}"
            note = "you asked for a page past the last one, so the last is shown; " if paginator.page_clamped else ""
            self.message_user(
                request,
                f"{size} match; {note}pages stop at page {paginator.max_pages:,} (the newest {paginator.bound:,}). "
                "Use the time filter to reach older rows.",
                messages.INFO,
            )
        return cl


def _aware(day: datetime) -> datetime:
    return timezone.make_aware(day) if timezone.is_naive(day) else day


def time_range_filter(field: str, max_days: int = 31) -> type[admin.SimpleListFilter]:
    """A date drill-down on `field` that reads only the index on it (unlike date_hierarchy)."""

    recent = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(hours=24)}

    class TimeRangeFilter(admin.SimpleListFilter):
        title = "time"
        parameter_name = "time"

        def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
            qs = model_admin.model._default_manager.all()
            # Separate aggregates on purpose: each is one index seek (see estimated_rows).
            first = qs.aggregate(v=Min(field))["v"]
            last = qs.aggregate(v=Max(field))["v"]
            choices = [("15m", "Last 15 minutes"), ("1h", "Last hour"), ("24h", "Last 24 hours")]
            if first is None or last is None:
                return choices
            tz = timezone.get_current_timezone()
            day = timezone.localtime(last, tz).date()
            oldest = max(timezone.localtime(first, tz).date(), day - timedelta(days=max_days - 1))
            while day >= oldest:
                choices.append((day.isoformat(), day.strftime("%a %d %b %Y")))
                day -= timedelta(days=1)
            return choices

        def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
            value = self.value()
            if not value:
                return None
            if value in recent:
                return queryset.filter(**{f"{field}__gte": timezone.now() - recent[value]})
            try:
                start = _aware(datetime.fromisoformat(value))
            except ValueError:
                return queryset.none()
            # A half-open range on the column itself (not __date), so the index serves it.
            return queryset.filter(**{f"{field}__gte": start, f"{field}__lt": start + timedelta(days=1)})

    return TimeRangeFilter


class ServiceFilter(admin.SimpleListFilter):
    """Choices from the Service table (a few rows), not SELECT DISTINCT over millions."""

    title = "service"
    parameter_name = "service"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in Service.objects.values_list("name", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        return queryset.filter(service=self.value()) if self.value() else None
