"""Read-only documents for other tools: the OpenAPI description and the Prometheus exposition."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from metrics.api import openapi, prometheus
from metrics.api.access import api_access
from metrics.api.errors import FastJsonResponse, api_view


@api_view("GET")
def openapi_view(request: HttpRequest) -> HttpResponse:
    return FastJsonResponse(openapi.document())


@api_access
@api_view("GET")
def prometheus_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(prometheus.exposition(), content_type=prometheus.CONTENT_TYPE)
