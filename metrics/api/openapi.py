"""The OpenAPI 3.1 description of the REST API, served at /metrics/openapi.json.

Written as data next to the code it describes; tests/test_openapi.py checks that
every route under /metrics/ (and /v1/metrics) is here and validates real
responses against these schemas, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from metrics.kinds import KINDS, METRIC_TYPES

JSON = "application/json"
AGGREGATIONS = ["raw", "1m", "5m", "1h", "auto"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": extra}
    schema["required"] = list(properties) if required is None else required
    return schema


NUMBER = {"type": "number"}
STRING = {"type": "string"}
TIMESTAMP = {"type": "string", "format": "date-time"}
SERVICE = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
METRIC_TYPE = {"type": "string", "enum": list(METRIC_TYPES)}
# "latency (ms) >= 0, error_rate (fraction 0-1) between 0 and 1, ...": the ranges validation enforces.
VALUE_RANGES = ", ".join(f"{k.name} ({k.unit}) {k.bounds_text()}" for k in KINDS.values()) + "."
TAG_VALUE = {
    "anyOf": [
        {
            "type": "string",
            "description": "No control characters (C0, DEL, C1), bidi overrides or isolates, line or paragraph "
            "separators, or invisible format characters.",
        },
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ]
}

SCHEMAS: dict[str, Any] = {
    "Error": obj(
        {
            "error": {"type": "string", "description": "What went wrong, for a person."},
            "details": {"type": "array", "items": ref("ErrorDetail")},
        }
    ),
    "ErrorDetail": obj(
        {
            "index": {
                "anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}],
                "description": "Point index, or null.",
            },
            "field": STRING,
            "message": STRING,
        }
    ),
    "PointIn": obj(
        {
            "timestamp": {
                "anyOf": [TIMESTAMP, {"type": "number", "minimum": 0}, {"type": "null"}],
                "description": "ISO-8601 (Z or offset; naive means UTC) or Unix seconds from 0 to 1e11; "
                "missing means now.",
            },
            "service": SERVICE,
            "metric_type": METRIC_TYPE,
            "value": {
                "type": "number",
                "description": VALUE_RANGES,
            },
            "tags": {"type": "object", "additionalProperties": TAG_VALUE, "maxProperties": 16},
        },
        required=["service", "metric_type", "value"],
        extra=True,
    ),
    "Point": obj(
        {
            "timestamp": TIMESTAMP,
            "service": STRING,
            "metric_type": METRIC_TYPE,
            "value": NUMBER,
            "tags": {"type": "object", "additionalProperties": TAG_VALUE},
        }
    ),
    "IngestRequest": {
        "anyOf": [
            ref("PointIn"),
            {"type": "array", "items": ref("PointIn"), "minItems": 1},
            {
                "type": "object",
                "properties": {"metrics": {"type": "array", "items": ref("PointIn"), "minItems": 1}},
                "required": ["metrics"],
            },
        ]
    },
    "IngestResponse": obj(
        {
            "status": {"type": "string", "enum": ["success"]},
            "accepted": {"type": "integer", "minimum": 0},
            "alert": nullable(ref("Alert")),
            "alerts": {"type": "array", "items": ref("Alert")},
        }
    ),
    "Alert": obj(
        {
            "id": {"type": "integer"},
            "kind": {
                "type": "string",
                "enum": ["threshold", "anomaly"],
                "description": "threshold: a value past a fixed line; anomaly: unusual for its series (docs/alerts.md).",
            },
            "timestamp": nullable(TIMESTAMP),
            "service": STRING,
            "metric_type": METRIC_TYPE,
            "severity": {"type": "string", "enum": ["warning", "critical"]},
            "state": {"type": "string", "enum": ["firing", "resolved"]},
            "message": STRING,
            "value": NUMBER,
            "latest_value": NUMBER,
            "threshold": NUMBER,
            "started_at": nullable(TIMESTAMP),
            "last_breach_at": nullable(TIMESTAMP),
            "resolved_at": nullable(TIMESTAMP),
            "breach_count": {"type": "integer", "minimum": 0},
            "acknowledged": {"type": "boolean"},
            "acknowledged_by": nullable(STRING),
            "acknowledged_at": nullable(TIMESTAMP),
        },
    ),
    "QueryRequest": obj(
        {
            "start_time": nullable({"anyOf": [TIMESTAMP, {"type": "number"}]}),
            "end_time": nullable({"anyOf": [TIMESTAMP, {"type": "number"}]}),
            "services": nullable({"type": "array", "items": SERVICE}),
            "metric_types": nullable({"type": "array", "items": METRIC_TYPE}),
            "aggregation": {"type": "string", "enum": AGGREGATIONS, "default": "raw"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100000},
            "exact": {
                "anyOf": [{"type": ["boolean", "null"]}, {"enum": [0, 1, "true", "false", "1", "0", ""]}],
                "description": "Force exact percentiles from raw points while they exist.",
            },
        },
        required=[],
    ),
    "Bucket": obj(
        {
            "timestamp": TIMESTAMP,
            "service": STRING,
            "metric_type": METRIC_TYPE,
            "p50": nullable(NUMBER),
            "p95": nullable(NUMBER),
            "p99": nullable(NUMBER),
            "min": nullable(NUMBER),
            "max": nullable(NUMBER),
            "avg": nullable(NUMBER),
            "count": {"type": "integer", "minimum": 0},
        }
    ),
    "RawQueryResponse": obj(
        {
            "data": {"type": "array", "items": ref("Point")},
            "source": {"type": "string", "enum": ["raw"]},
            "aggregation": {"type": "string", "enum": ["raw"]},
            "truncated": {"type": "boolean"},
        }
    ),
    "BucketQueryResponse": obj(
        {
            "data": {"type": "array", "items": ref("Bucket")},
            "source": {"type": "string", "enum": ["raw", "rollup"]},
            "aggregation": {"type": "string", "enum": AGGREGATIONS[1:]},
            "bucket_seconds": {"type": "integer", "minimum": 1},
            "start_time": TIMESTAMP,
            "end_time": TIMESTAMP,
        }
    ),
    "QueryResponse": {"oneOf": [ref("RawQueryResponse"), ref("BucketQueryResponse")]},
    "MetricSummary": obj(
        {
            "current": NUMBER,
            "avg": NUMBER,
            "p50": NUMBER,
            "p95": NUMBER,
            "p99": NUMBER,
            "min": NUMBER,
            "max": NUMBER,
            "count": {"type": "integer", "minimum": 0},
        },
        required=["current", "avg", "p50", "p95", "p99", "min", "max"],
    ),
    "ServiceStatus": obj(
        {
            "service": STRING,
            "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy", "stale"]},
            "last_seen": nullable(TIMESTAMP),
            "metrics": {
                "type": "object",
                "propertyNames": METRIC_TYPE,
                "additionalProperties": ref("MetricSummary"),
            },
        }
    ),
    "ServicesResponse": obj({"services": {"type": "array", "items": ref("ServiceStatus")}}),
    "AlertsResponse": obj({"alerts": {"type": "array", "items": ref("Alert")}}),
    "Health": obj(
        {
            "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
            "timestamp": TIMESTAMP,
            "services_count": {"type": "integer", "minimum": 0},
            "checks": {"type": "object", "additionalProperties": STRING, "required": ["database", "channel_layer"]},
            "streaming": obj(
                {
                    "connections": {"type": "integer", "minimum": 0},
                    "group_members": nullable({"type": "integer", "minimum": 0}),
                    "publish_backlog": {"type": "integer", "minimum": 0},
                },
                required=[],
                extra=True,
            ),
            "version": STRING,
        },
    ),
    "Ping": obj({"status": {"type": "string", "enum": ["ok"]}}),
    "OtlpStatus": {
        "type": "object",
        "description": "google.rpc.Status in the OTLP JSON mapping (protobuf-encoded for protobuf requests).",
        "properties": {"code": {"type": "integer"}, "message": STRING, "details": {"type": "array"}},
        "required": ["message"],
    },
    "ExportMetricsServiceRequest": {
        "type": "object",
        "description": "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest in the OTLP JSON "
        "mapping (lowerCamelCase keys, 64-bit integers as strings, enums as integers).",
        "properties": {"resourceMetrics": {"type": "array", "description": "ResourceMetrics messages."}},
    },
    "ExportMetricsServiceResponse": {
        "type": "object",
        "properties": {
            "partialSuccess": {
                "type": "object",
                "properties": {
                    "rejectedDataPoints": {"type": ["string", "integer"]},
                    "errorMessage": STRING,
                },
            }
        },
        "additionalProperties": False,
    },
}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def error_response(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": json_content(ref("Error"))}
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    return response


def errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input; nothing was stored.",
        401: "Missing or invalid API key (ingest, when keys are required) or not logged in (reads, when "
        "DASHBOARD_REQUIRE_LOGIN is on).",
        403: "The API key may not write this service, or lacks the scope (ingest / read) this endpoint needs.",
        405: "Method not allowed (see the Allow header).",
        413: "Body or point count over the limit.",
        415: "Content-Type is not JSON.",
        429: "Over a cardinality or rate limit (a cardinality 429 says how to free room: delete series or "
        "services in the admin, or wait for retention to remove those with no data left), or locked out after "
        "too many failed basic-auth logins.",
        503: "Database unavailable.",
    }
    return {str(c): error_response(text[c], retry_after=c in (413, 429, 503)) for c in codes}


def ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"200": {"description": description, "content": json_content(schema)}}


QUERY_PARAMETERS = [
    {
        "name": "start_time",
        "in": "query",
        "schema": TIMESTAMP,
        "description": "ISO-8601 (naive means UTC), from 1970 to before 9000; default end - 1 h.",
    },
    {
        "name": "end_time",
        "in": "query",
        "schema": TIMESTAMP,
        "description": "ISO-8601, from 1970 to before 9000; default now. Included in raw queries; "
        "bucketed ones cover [start, end).",
    },
    {
        "name": "services",
        "in": "query",
        "schema": {"type": "array", "items": SERVICE},
        "style": "form",
        "explode": True,
        "description": "Repeat the parameter or give a comma-separated list.",
    },
    {
        "name": "metric_types",
        "in": "query",
        "schema": {"type": "array", "items": METRIC_TYPE},
        "style": "form",
        "explode": True,
    },
    {"name": "aggregation", "in": "query", "schema": {"type": "string", "enum": AGGREGATIONS}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000}},
    {"name": "exact", "in": "query", "schema": {"type": "boolean"}},
]

SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}, {}]
# Reads: a key with read scope, basic auth with a Django user, a session, or nothing when login is not required.
READ_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}, {"basicAuth": []}, {}]

PATHS: dict[str, Any] = {
    "/metrics/health": {
        "get": {
            "operationId": "health",
            "summary": "Liveness and dependency checks",
            "responses": {
                **ok(ref("Health")),
                "503": {"description": "The database cannot be reached.", "content": json_content(ref("Health"))},
                **errors(405),
            },
        }
    },
    "/metrics/ingest": {
        "post": {
            "operationId": "ingest",
            "summary": 'Store one point, an array of points, or {"metrics": [...]}',
            "security": SECURITY,
            "requestBody": {"required": True, "content": json_content(ref("IngestRequest"))},
            "responses": {**ok(ref("IngestResponse")), **errors(400, 401, 403, 405, 413, 415, 429, 503)},
        }
    },
    "/metrics/query": {
        "get": {
            "operationId": "queryGet",
            "summary": "Raw points or percentile buckets (parameters in the query string)",
            "parameters": QUERY_PARAMETERS,
            "security": READ_SECURITY,
            "responses": {**ok(ref("QueryResponse")), **errors(400, 401, 403, 405, 429, 503)},
        },
        "post": {
            "operationId": "queryPost",
            "summary": "Raw points or percentile buckets",
            "requestBody": {"required": False, "content": json_content(ref("QueryRequest"))},
            "security": READ_SECURITY,
            "responses": {**ok(ref("QueryResponse")), **errors(400, 401, 403, 405, 413, 415, 429, 503)},
        },
    },
    "/metrics/services": {
        "get": {
            "operationId": "services",
            "summary": "Every service with its status and recent figures",
            "security": READ_SECURITY,
            "responses": {**ok(ref("ServicesResponse")), **errors(401, 403, 405, 429, 503)},
        }
    },
    "/metrics/alerts": {
        "get": {
            "operationId": "alerts",
            "summary": "Alerts, newest first",
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                },
                {"name": "severity", "in": "query", "schema": {"type": "string", "enum": ["", "warning", "critical"]}},
                {"name": "state", "in": "query", "schema": {"type": "string", "enum": ["", "firing", "resolved"]}},
                {"name": "service", "in": "query", "schema": {"type": "string"}},
            ],
            "security": READ_SECURITY,
            "responses": {**ok(ref("AlertsResponse")), **errors(400, 401, 403, 405, 429, 503)},
        }
    },
    "/metrics/ping": {
        "get": {
            "operationId": "ping",
            "summary": "Trivial JSON answer (benchmark baseline)",
            "responses": {**ok(ref("Ping")), **errors(405)},
        }
    },
    "/metrics/prometheus": {
        "get": {
            "operationId": "prometheus",
            "summary": "Prometheus text exposition of the latest values, percentiles, alerts and server figures",
            "security": READ_SECURITY,
            "responses": {
                "200": {
                    "description": "Prometheus text format 0.0.4",
                    "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}},
                },
                **errors(401, 403, 405, 429, 503),
            },
        }
    },
    "/metrics/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {**ok({"type": "object"}), **errors(405)},
        }
    },
    "/v1/metrics": {
        "post": {
            "operationId": "otlpExport",
            "summary": "OpenTelemetry OTLP/HTTP metrics receiver",
            "description": "Accepts ExportMetricsServiceRequest as application/x-protobuf or application/json "
            "(optionally Content-Encoding: gzip). Errors answer a google.rpc.Status in the request's encoding, "
            "as the OTLP specification requires. Data points that break a rule (tags, nesting, histogram "
            "buckets, ranges) are rejected one by one and counted in partialSuccess.",
            "security": SECURITY,
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                    JSON: {"schema": ref("ExportMetricsServiceRequest")},
                },
            },
            "responses": {
                "200": {
                    "description": "Accepted; partialSuccess says how many data points were rejected and why.",
                    "content": {
                        "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                        JSON: {"schema": ref("ExportMetricsServiceResponse")},
                    },
                },
                **{
                    str(code): {
                        "description": text,
                        "content": {
                            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                            JSON: {"schema": ref("OtlpStatus")},
                        },
                        **({"headers": {"Retry-After": {"schema": {"type": "integer"}}}} if code in (429, 503) else {}),
                    }
                    for code, text in (
                        (400, "Undecodable body, or data the database refused; nothing stored, do not retry."),
                        (401, "Missing or invalid API key (when keys are required)."),
                        (
                            403,
                            "The API key lacks the ingest scope, or is limited to other services; the whole request is refused.",
                        ),
                        (405, "Method not allowed."),
                        (413, "Body over the limit, or more data points than INGEST_MAX_POINTS; do not retry as is."),
                        (415, "Unsupported Content-Type or Content-Encoding."),
                        (429, "Over a cardinality or rate limit; retry after Retry-After seconds."),
                        (503, "Database unavailable; retry after Retry-After seconds."),
                    )
                },
            },
        }
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Telemetry API",
            "version": settings.TELEMETRY["VERSION"],
            "description": "Ingest service metrics, query them back with percentiles, read alerts. "
            'Errors share one shape: {"error", "details": [{"index", "field", "message"}]}.',
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "basicAuth": {"type": "http", "scheme": "basic"},
            },
        },
    }
