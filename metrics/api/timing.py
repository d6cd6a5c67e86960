"""Middleware that times every request into metrics.stats, by URL route (for /metrics/prometheus)."""

from __future__ import annotations

import time
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from metrics import stats


def _route(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return "/" + match.route if match is not None and match.route else "unmatched"


class RequestTimingMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        stats.observe(_route(request), time.perf_counter() - started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self.get_response(request)
        stats.observe(_route(request), time.perf_counter() - started)
        return response
