"""vLLM's ``structured_outputs`` onto the engine's constraint fields (as the guided_* ones)."""

from __future__ import annotations

from engines.base import SamplingOptions
from schemas.openai.common import StructuredOutputs
from server.errors import bad_request


def has_constraint(options: SamplingOptions) -> bool:
    return any(
        (
            options.json_schema is not None,
            options.json_object,
            options.regex is not None,
            options.choice is not None,
            options.grammar is not None,
        )
    )


def apply_structured_outputs(structured: StructuredOutputs, options: SamplingOptions) -> None:
    """Set ``structured``'s one constraint on ``options``; a 400 for none, several, one that
    this server does not run (structural tags), or one beside a guided_* field."""
    if structured.structural_tag is not None:
        raise bad_request("structured_outputs.structural_tag is not supported by this server.", "structured_outputs")
    given = [
        name
        for name, value in (
            ("json", structured.json),
            ("regex", structured.regex),
            ("choice", structured.choice),
            ("grammar", structured.grammar),
            ("json_object", structured.json_object or None),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise bad_request(
            "structured_outputs must hold exactly one of json, regex, choice, grammar and json_object"
            + (f"; it holds {', '.join(given)}." if given else "."),
            "structured_outputs",
        )
    if has_constraint(options):
        raise bad_request("Give structured_outputs or the guided_* fields, not both.", "structured_outputs")
    options.json_schema = structured.json
    options.regex = structured.regex
    options.choice = structured.choice
    options.grammar = structured.grammar
    options.json_object = bool(structured.json_object)
    options.compact_json = structured.disable_any_whitespace
