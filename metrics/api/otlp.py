"""OTLP/HTTP on the wire: which bodies are OTLP, gzip, and the ExportMetricsServiceResponse answer.

The receiver is metrics/api/ingest_app.py (POST /v1/metrics); decoding and
mapping onto points are metrics/ingest/otlp.py. Answers follow the OTLP/HTTP
specification rather than the JSON API's error shape: success is an
ExportMetricsServiceResponse (with partial_success when data points were
rejected), failures a google.rpc.Status (errors.render_otlp), both in the
encoding of the request.
"""

from __future__ import annotations

import zlib

from django.http import HttpResponse
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from metrics.api.errors import JSON, PROTOBUF
from metrics.errors import ApiError
from metrics.ingest.submit import Protocol, Receipt


def protocol_of(content_type: str) -> Protocol:
    """OTLP's two encodings by Content-Type; 415 (answered in JSON) for anything else."""
    if content_type == PROTOBUF:
        return Protocol.OTLP_PROTOBUF
    if content_type == JSON:
        return Protocol.OTLP_JSON
    raise ApiError(415, f"Content-Type must be {PROTOBUF} or {JSON}, got {content_type or 'none'!r}")


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding (identity or gzip), at most `limit` bytes once inflated."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise ApiError(415, f"Content-Encoding {encoding[:32]!r} is not supported; use gzip")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, f"Body is not valid gzip: {exc}") from None
    if len(plain) > limit:
        raise ApiError(413, f"Decompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise ApiError(400, "Body is truncated gzip")
    return plain


def accepted(receipt: Receipt, as_json: bool) -> HttpResponse:
    response = ExportMetricsServiceResponse()
    if receipt.rejected or receipt.message:
        response.partial_success.rejected_data_points = receipt.rejected
        response.partial_success.error_message = receipt.message
    if as_json:
        return HttpResponse(json_format.MessageToJson(response, indent=None), content_type=JSON)
    return HttpResponse(response.SerializeToString(), content_type=PROTOBUF)
