"""One Schemathesis run over a served OpenAPI document, read back from its NDJSON event report.

The run is Schemathesis's own command line in a child process (its stable interface, and a
second process: generation does not compete with the server for the test process's GIL).
Its configuration is written here from the fuzz catalog, so fuzzed bodies name real models,
voices and images often enough to pass validation and reach the capabilities behind it.
"""

from __future__ import annotations

import base64
import collections
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from engines.base import ModelSpec
from tests.fuzz.fakeserver import tiny_png_base64

# What every response is checked for. Server errors and schema conformance are the point;
# the media type and the status code are part of conformance: a response whose type or
# status the document does not list has no documented schema to conform to.
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "content_type_conformance",
    "status_code_conformance",
)
SEED = 20261203
# Per operation, on top of the coverage phase's boundary and negative cases (a fixed set
# per schema): the fuzzing phase's random cases. Sized so the whole run stays near a
# minute on two cores.
MAX_EXAMPLES = 25
REQUEST_TIMEOUT_S = 15
RUN_TIMEOUT_S = 420
# How often a body field named below takes a catalog value instead of a generated one.
CATALOG_PROBABILITY = 0.5


def run_config(specs: list[ModelSpec], voices: list[str]) -> dict[str, Any]:
    models = sorted({name for spec in specs for name in (spec.name, *spec.aliases)})
    loras = sorted({lora for spec in specs for lora in spec.options.get("loras", {})})
    image = tiny_png_base64()
    bindings = {
        "models": ["body.model", "body.model_name", "body.model_id", "body.request.model_name"],
        "loras": ["body.loras[*].model_name", "body.request.loras[*].model_name"],
        "images": [
            "body.image_file",
            "body.request.image_base64",
            "body.request.mask_image_base64",
            "body.request.controlnet.units[*].image_base64",
        ],
        "voices": ["body.voice", "body.request.voice_id"],
        "languages": ["body.request.language", "body.language"],
    }
    return {
        "seed": SEED,
        "workers": 1,
        "continue-on-failure": True,
        "request-timeout": REQUEST_TIMEOUT_S,
        "suppress-health-check": ["all"],
        "cache": {"enabled": False},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        # Coverage: boundary and invalid values from each schema. Fuzzing: random cases, where
        # the catalog dictionaries apply. Stateful: chains that feed ids from responses (a
        # created video, a task) into the routes that read them.
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": True},
        },
        "dictionaries": {
            "models": {"values": models},
            "loras": {"values": loras},
            "images": {"values": [image, f"data:image/png;base64,{image}"]},
            "voices": {"values": voices},
            "languages": {"values": ["en", "en-US", "de"]},
        },
        "parameters": {
            path: {"dictionary": dictionary, "probability": CATALOG_PROBABILITY}
            for dictionary, paths in bindings.items()
            for path in paths
        },
    }


@dataclass
class Finding:
    """One failed check on one operation, with the first request that showed it."""

    operation: str
    check: str
    code: str
    title: str
    message: str
    reproducer: str
    count: int = 0

    def describe(self) -> str:
        first_line = self.message.strip().splitlines()[0] if self.message.strip() else ""
        return f"{self.operation}: {self.code} {self.title} x{self.count} ({first_line})\n    {self.reproducer}"


@dataclass(repr=False)
class FuzzReport:
    requests: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    operations: set[str] = field(default_factory=set)
    findings: dict[tuple[str, str, str, str], Finding] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)  # reproducers of requests with no response
    errors: list[str] = field(default_factory=list)  # what kept Schemathesis from testing an operation
    exit_code: int = 0
    output_tail: str = ""

    def __repr__(self) -> str:
        return f"FuzzReport({self.requests} requests, {len(self.findings)} findings)"

    def by_check(self, check: str) -> list[Finding]:
        return sorted((f for f in self.findings.values() if f.check == check), key=lambda f: (f.code, f.operation))

    def summary(self) -> str:
        statuses = dict(sorted(self.statuses.items()))
        lines = [
            f"{self.requests} requests over {len(self.operations)} operations; statuses {statuses}",
            *(finding.describe() for finding in sorted(self.findings.values(), key=lambda f: (f.code, f.operation))),
            *(f"no response: {reproducer}" for reproducer in self.unanswered),
            *(f"error: {error}" for error in self.errors),
        ]
        return "\n".join(lines)


def reproducer(request: dict[str, Any], limit: int = 400) -> str:
    """The request as a curl command, its body cut at ``limit`` characters."""
    parts = [f"curl -X {request['method']}"]
    for name, values in request.get("headers", {}).items():
        if name.lower() == "content-type":
            parts.append(f"-H 'Content-Type: {values[0]}'")
    body = request.get("body")
    if body is not None:
        raw = base64.b64decode(body["$base64"]) if "$base64" in body else str(body).encode()
        text = raw.decode("utf-8", "backslashreplace")
        text = text if len(text) <= limit else f"{text[:limit]}...({len(raw)} bytes)"
        parts.append("--data-raw " + json.dumps(text))
    parts.append(f"'{request['uri']}'")
    return " ".join(parts)


def _events(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open() as lines:
        for line in lines:
            event = json.loads(line)
            yield next(iter(event.items()))


def read_report(path: Path) -> FuzzReport:
    report = FuzzReport()
    seen_cases: set[str] = set()
    for kind, event in _events(path):
        if kind in ("NonFatalError", "FatalError"):
            report.errors.append(f"{event.get('label', kind)}: {json.dumps(event)[:400]}")
        if kind != "ScenarioFinished":
            continue
        recorder = event["recorder"]
        operation = recorder["label"]
        report.operations.add(operation)
        interactions = recorder.get("interactions", {})
        for case_id, interaction in interactions.items():
            if case_id in seen_cases:
                continue
            seen_cases.add(case_id)
            report.requests += 1
            response = interaction.get("response")
            if response is None:
                report.unanswered.append(f"{operation}: {reproducer(interaction['request'])}")
            else:
                report.statuses[response["status_code"]] += 1
        for case_id, checks in recorder.get("checks", {}).items():
            for check in checks:
                if check["status"] != "failure":
                    continue
                failure = check["failure_info"]["failure"]
                # One finding a distinct cause: the message's first line says what is wrong.
                cause = failure["message"].strip().split("\n", 1)[0]
                key = (operation, check["name"], failure["code"], cause)
                if key not in report.findings:
                    unknown = {"method": "?", "uri": "?"}
                    request = interactions[case_id]["request"] if case_id in interactions else unknown
                    report.findings[key] = Finding(
                        operation=operation,
                        check=check["name"],
                        code=failure["code"],
                        title=failure["title"],
                        message=failure["message"],
                        reproducer=reproducer(request),
                    )
                report.findings[key].count += 1
    return report


def run_schemathesis(document_url: str, work_dir: Path, specs: list[ModelSpec], voices: list[str]) -> FuzzReport:
    """Fuzz every operation of the document at ``document_url``; reports and state stay in ``work_dir``."""
    config_path = work_dir / "schemathesis.toml"
    config_path.write_text(tomli_w.dumps(run_config(specs, voices)))
    events_path = work_dir / "events.ndjson"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config_path),
        "--no-color",
        "run",
        document_url,
        "--checks",
        ",".join(CHECKS),
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(events_path),
    ]
    # cwd: Schemathesis keeps crash files and example databases in the working directory.
    result = subprocess.run(command, cwd=work_dir, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    report = read_report(events_path) if events_path.exists() else FuzzReport()
    report.exit_code = result.returncode
    report.output_tail = (result.stdout + result.stderr)[-4000:]
    return report
