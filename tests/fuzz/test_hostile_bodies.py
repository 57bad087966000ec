"""Hostile requests (tests/fuzz/hostile.py) against every route: never a server error.

Whole-document probes go to every POST route of the document, both OpenAI mounts included.
Field and form probes start from a body or form each POST route accepts and replace one
field (or file) at a time, so each hostile value reaches the validation of its own field;
they go to the /v1 mount (the /openai/v1 mount serves the same controllers). Parameter
probes do the same to each query and path parameter of the GET routes. Every probe must
get an answer below 500 with no stack trace in it; a test lists every probe that did not,
grouped by cause, with a request that shows it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest

from tests.fuzz.conftest import FuzzServer
from tests.fuzz.fakeserver import MAX_BODY_BYTES
from tests.fuzz.hostile import (
    BASE_BODIES,
    BASE_STATUS,
    MULTIPART_BASES,
    PATH_PARAMETERS,
    Probe,
    document_probes,
    field_probes,
    form_probe,
    multipart_probes,
    parameter_probes,
)

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300)]

REQUEST_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def client(fuzz_server: FuzzServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.base_url, timeout=REQUEST_TIMEOUT_S) as http:
        yield http


@pytest.fixture(scope="module")
def document(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/schema/openapi.json")
    response.raise_for_status()
    return dict(response.json())


def _post_routes(document: dict[str, Any], media_type: str | None = None) -> list[str]:
    return [
        path
        for path, item in document["paths"].items()
        if "post" in item
        and (media_type is None or media_type in item["post"].get("requestBody", {}).get("content", {}))
    ]


def _url(path: str) -> str:
    for parameter, value in PATH_PARAMETERS.items():
        path = path.replace(parameter, value)
    return path


def _request(client: httpx.Client, probe: Probe) -> httpx.Response:
    if probe.method == "GET":
        return client.get(probe.path)
    headers = {} if probe.content_type is None else {"content-type": probe.content_type}
    return client.post(_url(probe.path), content=probe.content, headers=headers)


def _send(client: httpx.Client, probe: Probe) -> tuple[str, str] | None:
    """What was wrong with the answer to ``probe`` (in short, and the answer), or None."""
    try:
        response = _request(client, probe)
    except httpx.TransportError as exc:
        return "no answer", type(exc).__name__
    if response.status_code >= 500:
        return str(response.status_code), response.text[:160]
    if "Traceback" in response.text:
        return f"{response.status_code} with a stack trace", response.text[:160]
    return None


def _failures(client: httpx.Client, probes: Iterable[Probe]) -> tuple[int, str]:
    """Sends every probe: how many were sent, and a report of those that failed, a paragraph a cause."""
    sent = 0
    groups: dict[tuple[str, str], list[tuple[Probe, str]]] = collections.defaultdict(list)
    for probe in probes:
        sent += 1
        outcome = _send(client, probe)
        if outcome is not None:
            groups[(probe.cause, outcome[0])].append((probe, outcome[1]))
    lines = []
    for (cause, outcome), failed in sorted(groups.items()):
        where = sorted({f"{p.path}{f' [{p.field}]' if p.field else ''}" for p, _ in failed})
        shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
        example, answer = failed[0]
        lines.append(
            f"{cause}: {outcome} x{len(failed)} at {shown}\n    e.g. {example.reproducer(160)}\n    -> {answer}"
        )
    return sent, "\n".join(lines)


def _v1(path: str) -> str:
    return path.replace("/openai/v1/", "/v1/", 1)


def test_every_post_route_has_a_base_body(document: dict[str, Any]) -> None:
    assert {_v1(path) for path in _post_routes(document, "application/json")} == set(BASE_BODIES)
    multipart = {path for path, _, _ in MULTIPART_BASES}
    assert {_v1(path) for path in _post_routes(document, "multipart/form-data")} == multipart


def test_base_bodies_are_accepted(client: httpx.Client) -> None:
    """The field probes change one field of these, so each probe is wrong in that field only."""
    statuses = {path: client.post(_url(path), json=body).status_code for path, body in BASE_BODIES.items()}
    assert statuses == {path: BASE_STATUS.get(path, 200) for path in BASE_BODIES}


def test_base_forms_are_accepted(client: httpx.Client) -> None:
    """As the base bodies are: the form probes change one field or file of these."""
    for path, fields, files in MULTIPART_BASES:
        encoded = {name: value.encode() for name, value in fields.items()}
        response = _request(client, form_probe("base form", path, encoded, files, None))
        assert response.status_code == 200, (path, response.text)


def test_hostile_documents_get_no_server_error(client: httpx.Client, document: dict[str, Any]) -> None:
    routes = _post_routes(document)
    probes = (probe for path in routes for probe in document_probes(path, BASE_BODIES.get(_v1(path)), MAX_BODY_BYTES))
    sent, failures = _failures(client, probes)
    assert sent > 30 * len(routes)
    assert not failures, f"of {sent} hostile documents, these got a server error:\n{failures}"
    assert client.get("/health").status_code == 200


def test_hostile_field_values_get_no_server_error(client: httpx.Client) -> None:
    probes = (probe for path, body in BASE_BODIES.items() for probe in field_probes(path, body))
    sent, failures = _failures(client, probes)
    assert sent > 1000
    assert not failures, f"of {sent} bodies with one hostile field, these got a server error:\n{failures}"
    assert client.get("/health").status_code == 200


def test_hostile_form_fields_get_no_server_error(client: httpx.Client) -> None:
    probes = (probe for path, fields, files in MULTIPART_BASES for probe in multipart_probes(path, fields, files))
    sent, failures = _failures(client, probes)
    assert sent > 500
    assert not failures, f"of {sent} forms with one hostile field or file, these got a server error:\n{failures}"


def test_hostile_parameters_get_no_server_error(client: httpx.Client, document: dict[str, Any]) -> None:
    gets = {path: item["get"] for path, item in document["paths"].items() if "get" in item}
    routes = {path: operation["parameters"] for path, operation in gets.items() if operation.get("parameters")}
    probes = (probe for path, parameters in routes.items() for probe in parameter_probes(path, parameters))
    sent, failures = _failures(client, probes)
    assert sent > 100
    assert not failures, f"of {sent} requests with one hostile parameter, these got a server error:\n{failures}"
