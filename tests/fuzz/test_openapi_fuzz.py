"""Property-based fuzzing of every operation in the served OpenAPI document.

Schemathesis generates valid and invalid requests from the document (its boundary-value
coverage phase, then random cases per operation), sends them over HTTP to the app on fake
engines, and checks each response. One run feeds every test below; each test asserts one
property over all of it, and fails listing every operation that broke it with a request
that shows it. The run is seeded and deterministic, and bounded per operation.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fuzz.conftest import FuzzServer
from tests.fuzz.fakeserver import FUZZ_SPECS, VOICES
from tests.fuzz.schemathesis_run import FuzzReport, run_schemathesis

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def fuzz_report(fuzz_server: FuzzServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzReport]:
    work_dir = tmp_path_factory.mktemp("schemathesis")
    report = run_schemathesis(fuzz_server.document_url, work_dir, FUZZ_SPECS, VOICES)
    # Exit code 1 is "checks failed", which the tests below report; anything else is a run
    # that did not happen (a bad configuration, an unreadable document).
    assert report.exit_code in (0, 1), report.output_tail
    (work_dir / "summary.txt").write_text(report.summary())
    print(f"\nfuzz summary ({work_dir / 'summary.txt'}):\n{report.summary()}")
    yield report


def _document_operations(server: FuzzServer) -> set[str]:
    document = httpx.get(server.document_url, timeout=10).json()
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch", "head", "options")
    }


def _served_operations(server: FuzzServer) -> set[str]:
    from litestar.routes import HTTPRoute

    assert server.app.openapi_config is not None
    document_path = server.app.openapi_config.path  # the document's own pages are not in it
    return {
        f"{method} {route.path_format}"
        for route in server.app.routes
        if isinstance(route, HTTPRoute) and not route.path.startswith(document_path)
        for handler in route.route_handlers
        if handler.include_in_schema
        for method in handler.http_methods
        if method not in ("HEAD", "OPTIONS")
    }


def _failures(report: FuzzReport, check: str) -> str:
    findings = report.by_check(check)
    return f"{len(findings)} operation(s) fail {check}:\n" + "\n".join(f.describe() for f in findings)


def test_document_describes_every_route_the_app_serves(fuzz_server: FuzzServer) -> None:
    documented = _document_operations(fuzz_server)
    assert _served_operations(fuzz_server) == documented
    # Both OpenAI mounts, the /v3 task API and the vendor APIs are in the one document.
    for prefix in ("/v1/", "/openai/v1/", "/v3/", "/api/novassium/", "/api/v3/"):
        assert any(operation.split(" ", 1)[1].startswith(prefix) for operation in documented), prefix


def test_every_documented_operation_is_fuzzed(fuzz_server: FuzzServer, fuzz_report: FuzzReport) -> None:
    assert not fuzz_report.errors, "\n".join(fuzz_report.errors)
    assert _document_operations(fuzz_server) <= fuzz_report.operations
    assert fuzz_report.requests >= 20 * len(fuzz_report.operations)


def test_no_request_gets_a_server_error(fuzz_report: FuzzReport) -> None:
    assert not fuzz_report.unanswered, "requests with no response:\n" + "\n".join(fuzz_report.unanswered)
    assert not fuzz_report.by_check("not_a_server_error"), _failures(fuzz_report, "not_a_server_error")


def test_responses_match_their_documented_schemas(fuzz_report: FuzzReport) -> None:
    assert not fuzz_report.by_check("response_schema_conformance"), _failures(
        fuzz_report, "response_schema_conformance"
    )


def test_responses_have_documented_media_types(fuzz_report: FuzzReport) -> None:
    assert not fuzz_report.by_check("content_type_conformance"), _failures(fuzz_report, "content_type_conformance")


def test_responses_have_documented_status_codes(fuzz_report: FuzzReport) -> None:
    assert not fuzz_report.by_check("status_code_conformance"), _failures(fuzz_report, "status_code_conformance")
