"""What Django does for a request, done by threads that serve no request.

Django starts each request by clearing the query log (kept when DEBUG is on)
and dropping a connection that errored or outlived CONN_MAX_AGE. The ingest
writer, the pooled read threads and the maintenance scheduler reuse one
connection each for the life of the process and never see a request, so
without this their DEBUG query logs grew to Django's 9,000-entry cap, each
batch INSERT logged with its literal values: the `make run` demo and the soak
(both DEBUG on) grew by hundreds of megabytes (docs/reliability.md).
"""

from __future__ import annotations

from django.db import close_old_connections, reset_queries


def unit_of_work_starts() -> None:
    """Call on the thread, before each unit of work (a writer group, a read, a scheduler pass)."""
    reset_queries()
    close_old_connections()
