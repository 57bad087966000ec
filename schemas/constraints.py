"""Constrained field types, and how a body that breaks a constraint is refused.

A field declares its range with ``msgspec.Meta`` (``ge``/``le``, ``min_length``/``max_length``,
``multiple_of``, ``pattern``); decoding refuses a value outside it, naming the field's path,
with ``INVALID_REQUEST_BODY``. ``Meta(extra=refusal(...))`` changes that refusal where an API
documents another one: its error code, its own message text, the param it names. The server
(server/validation.py) reads these entries back with ``msgspec.inspect``; they apply to
constraint failures only, never to a value of the wrong type or a missing field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from schemas.errors import ErrorCode
from schemas.limits import (
    MAX_AUDIO_NAME_CHARS,
    MAX_CLIP_SKIP,
    MAX_GUIDANCE_SCALE,
    MAX_IMAGE_SIDE,
    MAX_NAME_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SAMPLING_SEED,
    MAX_SPEECH_INPUT_CHARS,
    MAX_SPEECH_INSTRUCTIONS_CHARS,
    MAX_STEPS,
    MAX_TOKEN_ID,
    MAX_TRANSCRIPTION_PROMPT_CHARS,
    MIN_IMAGE_SIDE,
    MIN_SAMPLING_SEED,
    SEED_LIMIT,
    SIDE_MULTIPLE,
)

# The keys of ``Meta.extra`` that server/validation.py reads.
ERROR_CODE = "error_code"
MESSAGE = "message"
PARAM = "param"
AT_FIELD = "errors_at_field"
# Marks text that counts against the server's prompt limit (``limits.max_prompt_chars``), checked
# after decoding (server/prompt_limit.py) because the limit is a setting, not a constant.
PROMPT_TEXT = "prompt_text"

# ``pattern`` for text that must hold something besides whitespace (msgspec searches, unanchored).
NOT_BLANK = r"\S"


def refusal(
    code: ErrorCode | None = None, *, message: str | None = None, param: str | None = None, at_field: bool = False
) -> dict[str, Any]:
    """``Meta.extra`` for a field whose constraint failure is refused otherwise than by default.

    ``code``: the ErrorCode (default INVALID_REQUEST_BODY). ``message``: a fixed message (the
    vendor APIs document their own texts). ``param``: the param to name instead of the field's
    path. ``at_field``: a failure inside this field's items (``loras[0].strength``) names this
    field (``loras``) as the param; the message still names the item.
    """
    extra: dict[str, Any] = {}
    if code is not None:
        extra[ERROR_CODE] = code.value
    if message is not None:
        extra[MESSAGE] = message
    if param is not None:
        extra[PARAM] = param
    if at_field:
        extra[AT_FIELD] = True
    return extra


# The constrained types several schemas share.

# A1111's restore_faces (GFPGAN or CodeFormer after generation): no face restoration model is
# served, so true is refused naming the field rather than dropped; false, the default, is accepted.
NoFaceRestoration = Annotated[
    Literal[False],
    msgspec.Meta(
        extra=refusal(
            message="restore_faces is not supported: this server has no face restoration model "
            "(GFPGAN, CodeFormer); send false or leave it out."
        )
    ),
]


def pixel_side(low: int, high: int) -> msgspec.Meta:
    """A picture's side in pixels, a multiple of SIDE_MULTIPLE in [low, high]; refused as INVALID_IMAGE_SIZE."""
    return msgspec.Meta(
        ge=low,
        le=high,
        multiple_of=SIDE_MULTIPLE,
        extra=refusal(ErrorCode.INVALID_IMAGE_SIZE),
        description=f"Pixels, a multiple of {SIDE_MULTIPLE}.",
    )


ImageSide = Annotated[int, pixel_side(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)]
_PROMPT_LIMIT = f"At most limits.max_prompt_chars characters ({MAX_PROMPT_CHARS} by default)."
# Every prompt-like text of the image and video APIs (prompts, negative prompts, prompt segments):
# one limit, one refusal naming the field, on every route.
PromptText = Annotated[str, msgspec.Meta(extra={PROMPT_TEXT: True}, description=_PROMPT_LIMIT)]
Prompt = Annotated[str, msgspec.Meta(pattern=NOT_BLANK, extra={PROMPT_TEXT: True}, description=_PROMPT_LIMIT)]
NotBlank = Annotated[str, msgspec.Meta(pattern=NOT_BLANK)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]
Steps = Annotated[int, msgspec.Meta(ge=1, le=MAX_STEPS)]
GuidanceScale = Annotated[float, msgspec.Meta(ge=0, le=MAX_GUIDANCE_SCALE)]
ClipSkip = Annotated[int, msgspec.Meta(ge=0, le=MAX_CLIP_SKIP)]
Seed = Annotated[int, msgspec.Meta(ge=-1, le=SEED_LIMIT, description="-1 (or null): the server draws one.")]
SamplingSeed = Annotated[
    int, msgspec.Meta(ge=MIN_SAMPLING_SEED, le=MAX_SAMPLING_SEED, description="A signed 64-bit integer.")
]
# vLLM's truncate_prompt_tokens: keep the last N prompt tokens; -1: as many as the context holds.
TruncatePromptTokens = Annotated[int, msgspec.Meta(ge=-1, description="-1: the model's context length.")]
UnitInterval = Annotated[float, msgspec.Meta(ge=0, le=1)]
_TOKEN_ID = f"A token id of the model's vocabulary (0 to at most {MAX_TOKEN_ID})."
TokenId = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKEN_ID, description=_TOKEN_ID)]
# A token id as a JSON object key (logit_bias): ASCII digits only, never a sign, spaces or
# digits that are digits only to Unicode, which int() would read.
TokenIdKey = Annotated[str, msgspec.Meta(pattern=f"^[0-9]{{1,{len(str(MAX_TOKEN_ID))}}}$", description=_TOKEN_ID)]


# The free strings of the audio routes, each under its ceiling in schemas/limits.py.
def bounded_text(max_chars: int) -> msgspec.Meta:
    return msgspec.Meta(max_length=max_chars, description=f"At most {max_chars} characters.")


AudioName = Annotated[str, bounded_text(MAX_AUDIO_NAME_CHARS)]
SpeechInput = Annotated[str, bounded_text(MAX_SPEECH_INPUT_CHARS)]
SpeechInstructions = Annotated[str, bounded_text(MAX_SPEECH_INSTRUCTIONS_CHARS)]
TranscriptionPrompt = Annotated[str, bounded_text(MAX_TRANSCRIPTION_PROMPT_CHARS)]
