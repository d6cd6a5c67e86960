"""Read-only documents for other tools: the OpenAPI description and the Prometheus exposition."""

from __future__ import annotations

from django.db import OperationalError
from django.http import HttpRequest, HttpResponse

from metrics.api import openapi
from metrics.api import prometheus as prom
from metrics.api.access import api_access
from metrics.api.errors import FastJsonResponse, error, require_methods


@require_methods("GET")
def openapi_view(request: HttpRequest) -> HttpResponse:
    return FastJsonResponse(openapi.document())


@api_access
@require_methods("GET")
def prometheus_view(request: HttpRequest) -> HttpResponse:
    try:
        body = prom.exposition()
    except OperationalError as exc:
        response = error(f"Database unavailable: {type(exc).__name__}; retry shortly", 503, field="database")
        response["Retry-After"] = "2"
        return response
    return HttpResponse(body, content_type=prom.CONTENT_TYPE)
