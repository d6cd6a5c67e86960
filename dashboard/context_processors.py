"""Template context every page gets."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest

from metrics import kinds


def metric_kinds(request: HttpRequest) -> dict[str, Any]:
    """How each metric kind is labelled and formatted, as JSON: base.html hands it to charts.js (data-metric-kinds)."""
    return {"metric_kinds": orjson.dumps(kinds.for_page()).decode()}
