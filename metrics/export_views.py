"""Read-only documents for other tools: the OpenAPI description and the Prometheus exposition."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from . import openapi
from .http import FastJsonResponse, require_methods


@require_methods("GET")
def openapi_view(request: HttpRequest) -> HttpResponse:
    return FastJsonResponse(openapi.document())
