"""A fuzzer (schemathesis, over Hypothesis) run against the server's own OpenAPI description finds no 5xx and
no non-JSON error. Bounded: a fixed number of derandomised examples per operation, on 127.0.0.1.

The one 5xx allowed is the one the fuzzer asks for: 504 when it sets a request `timeout` of a few microseconds
(the schedule-policy extension), which must say that the deadline passed."""
from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings  # noqa: E402
from test_serve import server  # noqa: E402,F401 - the shared live server


def test_fuzzing_the_openapi_description_finds_no_server_errors(server):  # noqa: F811
    schema = schemathesis.openapi.from_url(server.http + "/openapi.json")
    seen = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=10, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            response = case.call(timeout=30)
            if response.status_code >= 500:
                assert response.status_code == 504 and "deadline" in response.json()["error"], (
                    response.status_code, response.text[:300], case.as_curl_command())
            if response.status_code != 200:
                assert response.headers.get("content-type") == ["application/json"], response.text[:200]
                assert "error" in response.json()

        run()
        seen += 1
    assert seen >= 15
