"""Schemathesis against /metrics/openapi.json on a live daphne server.

Every documented operation gets a bounded number of generated requests (valid
and invalid by the schema); each answer must not be a 5xx and must conform to
the response schema documented for its status code.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.faultkit import sqlite_env
from tests.live import LiveServer

pytestmark = [pytest.mark.live, pytest.mark.slow]


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("schemathesis"), **sqlite_env(REQUIRE_API_KEY="0")) as server:
        yield schemathesis.openapi.from_url(server.url + "/metrics/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_answers_conform_to_the_openapi_document(case):
    case.call_and_validate(
        checks=[not_a_server_error, response_schema_conformance, status_code_conformance], timeout=30
    )
