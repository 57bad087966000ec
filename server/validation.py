"""Request bodies: decoded into their schemas, refused in the one error vocabulary.

Every POST handler that takes a body declares it as its ``data`` parameter, so the OpenAPI
document describes it; a DTO of this module decodes it, the way its API's clients send it:

- ``NovitaBody`` (/v3): JSON, types strict, an explicit ``null`` read as "not given" at any
  depth (novita-client serialises every field of its request objects).
- ``LooseBody`` (the vendor APIs): JSON whose numbers may arrive as strings ("512"); a ``null``
  or ``""`` field is "not given"; an empty body is ``{}``.
- ``OpenAIBody``: JSON, numbers converted as Litestar does for the other OpenAI routes.
- ``ParsedForm``: a form (or body) already parsed by the route's guard, which keeps the
  route's own parsing rules; see ``parse_into_data``. Such a route reads its form with
  ``read_form``, which refuses a text part that is not text.

A failure raises ApiError, which the app's one exception handler renders in the envelope of
the route family. A field's constraint (``msgspec.Meta``) is refused as schemas/constraints.py
declares: with INVALID_REQUEST_BODY unless the field names another code, a message naming the
field and its range unless the field gives the API's own text, and the field's path as param.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import FormMultiDict
from litestar.dto import AbstractDTO, DTOConfig
from litestar.enums import RequestEncodingType
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard
from litestar.typing import FieldDefinition

from schemas.constraints import AT_FIELD, ERROR_CODE, MESSAGE, NOT_BLANK, PARAM
from schemas.errors import ApiError, ErrorCode
from server.prompt_limit import check_prompts

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.dto.data_structures import DTOFieldDefinition
    from litestar.openapi.spec import Reference, Schema

T = TypeVar("T")

_MISSING = re.compile(r"Object missing required field `([^`]+)`")
# msgspec's wording when a value has the right type but breaks a Meta constraint.
# A failed constraint, or a value outside a Literal (refused as its field declares when it has a message).
_CONSTRAINT = re.compile(
    r"Expected `[^`]+` (?:>=|<=|>|<|of length|that's a multiple of|matching regex)|Invalid enum value"
)
_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_PATH = re.compile(r"(?:\.[^.\[]+|\[\d+\])+")


def without_nulls(value: Any) -> Any:
    """``value`` with every ``null`` object member dropped, at any depth."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError, body_type: Any = None) -> ApiError:
    """The refusal for msgspec's error ("Expected `int`, got `str` - at `$.n`"), naming the param.

    With ``body_type`` (what was being decoded), a constraint failure is refused as its field
    declares (see schemas/constraints.py).
    """
    text = str(exc)
    path = None
    if " - at `key` in `$" in text:
        # A key of an object that breaks the key's type (logit_bias's token ids): the object is the param.
        text, _, where = text.partition(" - at `key` in `$")
        owner = where.rstrip("`").lstrip(".") or None
        message = f"Invalid key in '{owner}': {text}" if owner else f"Invalid key in the request body: {text}"
        return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=owner)
    if " - at `$" in text:
        text, _, where = text.partition(" - at `$")
        path = where.rstrip("`").lstrip(".") or None
    missing = _MISSING.match(text)
    if missing:
        # msgspec places the error at the enclosing object; the client needs the absent field.
        param = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return ApiError(ErrorCode.INVALID_REQUEST_BODY, f"Missing required field '{param}'.", param=param)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return ApiError(ErrorCode.INVALID_REQUEST_BODY, f"Request body is not valid JSON: {text}")
    if body_type is not None and path and _CONSTRAINT.match(text):
        refusal = _constraint_refusal(body_type, path)
        if refusal is not None:
            return refusal
    message = f"Invalid value for '{path}': {text}" if path else f"Invalid request body: {text}"
    return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=path)


def convert(fields: Any, body_type: type[T], *, strict: bool = True) -> T:
    """Decoded JSON (or form fields) as ``body_type``; ApiError on a mistyped or out-of-range field."""
    try:
        value = msgspec.convert(fields, body_type, strict=strict)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, body_type) from None
    check_prompts(value)  # limits.max_prompt_chars, a setting: no Meta bound can hold it
    return value


def decode_task_body(raw: bytes, body_type: type[T]) -> T:
    """A /v3 body as ``body_type``, reading an explicit ``null`` as "not given".

    novita-client serialises every field of its request objects, so options the caller
    left out arrive as nulls; treating them as absent lets the documented defaults apply.
    """
    try:
        fields = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise validation_error(exc) from None
    return convert(without_nulls(fields), body_type)


def decode_loose(raw: bytes, body_type: type[T]) -> T:
    """A vendor API's JSON object as ``body_type``, converting the strings these clients send
    for numbers ("512", "7.5"); a ``null`` or ``""`` field reads as "not given", and so does
    an empty body."""
    try:
        fields = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        raise validation_error(exc) from None
    if not isinstance(fields, dict):
        raise ApiError(ErrorCode.INVALID_REQUEST_BODY, "The request body must be a JSON object.")
    given = {name: value for name, value in fields.items() if value is not None and value != ""}
    return convert(given, body_type, strict=False)


def decode_openai(raw: bytes, body_type: type[T]) -> T:
    """An OpenAI JSON body as ``body_type``; numbers and booleans given as strings are
    converted, as Litestar does for the routes without a DTO."""
    try:
        fields = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise validation_error(exc) from None
    return convert(fields, body_type, strict=False)


# Refusing a constraint failure as the field declares.


def _constraint_refusal(body_type: Any, path: str) -> ApiError | None:
    found = _field_at(msgspec.inspect.type_info(body_type), path)
    if found is None:
        return None
    leaf, extras = found
    code = ErrorCode.INVALID_REQUEST_BODY
    message = param = None
    for where, extra in extras:  # outermost first
        if ERROR_CODE in extra:
            code = ErrorCode(extra[ERROR_CODE])
        if MESSAGE in extra:
            message = extra[MESSAGE]
        if PARAM in extra:
            param = extra[PARAM]
        elif extra.get(AT_FIELD) and param is None:
            param = where
    if message is None:
        rule = _rule(leaf)
        if rule is None:
            return None
        message = f"{path} must {rule}."
    return ApiError(code, message, param=param or path)


def _field_at(info: Any, path: str) -> tuple[Any, list[tuple[str, dict[str, Any]]]] | None:
    """The type at ``path`` ("request.loras[0].strength") in ``info``, and the Meta extras met
    on the way there, each with the path of the field that carries it."""
    inspect = msgspec.inspect
    dotted = path if path.startswith("[") else f".{path}"
    if _PATH.fullmatch(dotted) is None:  # a dict key, say: not a path through fields and items
        return None
    tokens: list[str | int] = [name or int(index) for name, index in _PATH_TOKEN.findall(dotted)]
    extras: list[tuple[str, dict[str, Any]]] = []
    walked = ""
    position = 0
    while True:
        if isinstance(info, inspect.Metadata):
            if info.extra:
                extras.append((walked, info.extra))
            info = info.type
            continue
        following = tokens[position] if position < len(tokens) else None
        if isinstance(info, inspect.UnionType):
            info = next((member for member in info.types if _fits(member, following)), None)
            if info is None:
                return None
            continue
        if following is None:
            return info, extras
        position += 1
        if isinstance(following, int) and isinstance(
            info, inspect.ListType | inspect.SetType | inspect.FrozenSetType | inspect.VarTupleType
        ):
            info = info.item_type
            walked += f"[{following}]"
        elif isinstance(following, str) and isinstance(info, inspect.StructType):
            field = next((field for field in info.fields if field.encode_name == following), None)
            if field is None:
                return None
            info = field.type
            walked += f".{following}" if walked else following
        else:
            return None


def _fits(member: Any, following: str | int | None) -> bool:
    """Whether a union member is the one a path continues into (or, at its end, the constrained one)."""
    inspect = msgspec.inspect
    base = member.type if isinstance(member, inspect.Metadata) else member
    if following is None:
        return not isinstance(base, inspect.NoneType)
    if isinstance(following, int):
        return isinstance(base, inspect.ListType | inspect.SetType | inspect.FrozenSetType | inspect.VarTupleType)
    return isinstance(base, inspect.StructType) and any(field.encode_name == following for field in base.fields)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bounds(low: float | None, low_open: bool, high: float | None, high_open: bool) -> str | None:
    lower = None if low is None else (f"above {_number(low)}" if low_open else f"at least {_number(low)}")
    upper = None if high is None else (f"below {_number(high)}" if high_open else f"at most {_number(high)}")
    if low is not None and high is not None and not (low_open or high_open):
        return f"between {_number(low)} and {_number(high)}"
    return " and ".join(part for part in (lower, upper) if part) or None


def _count(minimum: int | None, maximum: int | None, unit: str) -> str | None:
    if minimum is not None and maximum is not None:
        return f"hold {minimum} to {maximum} {unit}s"
    if minimum is not None:
        return f"hold at least {minimum} {unit}{'s' if minimum != 1 else ''}"
    if maximum is not None:
        return f"hold at most {maximum} {unit}{'s' if maximum != 1 else ''}"
    return None


def _rule(info: Any) -> str | None:
    """What a constrained type asks, as the end of "<param> must ...": "be between 1 and 100"."""
    inspect = msgspec.inspect
    clauses: list[str] = []
    if isinstance(info, inspect.IntType | inspect.FloatType):
        low, low_open = (info.gt, True) if info.gt is not None else (info.ge, False)
        high, high_open = (info.lt, True) if info.lt is not None else (info.le, False)
        bounds = _bounds(low, low_open, high, high_open)
        if info.multiple_of is not None:
            clauses.append(f"be a multiple of {_number(info.multiple_of)}" + (f" {bounds}" if bounds else ""))
        elif bounds:
            clauses.append(f"be {bounds}")
    elif isinstance(info, inspect.StrType):
        length = _count(info.min_length, info.max_length, "character")
        if length:
            clauses.append(length)
        if info.pattern == NOT_BLANK:
            clauses.append("not be blank")
        elif info.pattern is not None:
            clauses.append(f"match the pattern {info.pattern!r}")
    elif isinstance(info, inspect.ListType | inspect.SetType | inspect.FrozenSetType | inspect.VarTupleType):
        items = _count(info.min_length, info.max_length, "item")
        if items:
            clauses.append(items)
    return " and ".join(clauses) or None


# The DTOs that decode ``data``. Each handler's body type is its ``data`` annotation.


class _BodyDecoder(AbstractDTO[Any]):
    """Decodes the ``data`` of every handler it is set on into the handler's annotation,
    and describes that annotation (its msgspec schema) to OpenAPI. It never encodes."""

    config: ClassVar[DTOConfig] = DTOConfig()
    _body_types: ClassVar[dict[str, Any]] = {}

    @classmethod
    def generate_field_definitions(cls, model_type: type[Any]) -> Generator[DTOFieldDefinition, None, None]:
        yield from ()  # no transfer model: the annotation is decoded as it is

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False

    @classmethod
    def is_supported_model_type_field(cls, field_definition: FieldDefinition) -> bool:
        return False  # return values are encoded as Litestar does without a DTO

    @classmethod
    def create_for_field_definition(
        cls, field_definition: FieldDefinition, handler_id: str, backend_cls: Any = None
    ) -> None:
        cls._body_types[handler_id] = field_definition.annotation

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: SchemaCreator
    ) -> Reference | Schema:
        body = FieldDefinition.from_annotation(
            field_definition.annotation, kwarg_definition=field_definition.kwarg_definition
        )
        return schema_creator.for_field_definition(body)

    @property
    def body_type(self) -> Any:
        return self._body_types[self.asgi_connection.route_handler.handler_id]

    def decode_builtins(self, value: Any) -> Any:
        return convert(value, self.body_type)

    def data_to_encodable_type(self, data: Any) -> Any:  # pragma: no cover - never a return DTO
        raise NotImplementedError


class NovitaBody(_BodyDecoder):
    """/v3 JSON: types strict, explicit nulls read as "not given". An empty body never
    reaches the DTO (Litestar reads it as no data): the guard ``refuse_empty_body`` refuses it."""

    def decode_bytes(self, value: bytes) -> Any:
        return decode_task_body(value, self.body_type)


class LooseBody(_BodyDecoder):
    """The vendor APIs' JSON: string numbers converted, null and "" fields not given. The
    handler's ``data`` default stands for an empty body."""

    def decode_bytes(self, value: bytes) -> Any:
        return decode_loose(value, self.body_type)


class OpenAIBody(_BodyDecoder):
    """OpenAI JSON bodies."""

    def decode_bytes(self, value: bytes) -> Any:
        return decode_openai(value, self.body_type)


_PARSED = "omniserve.parsed_body"


class ParsedForm(_BodyDecoder):
    """A body its route's guard (``parse_into_data``) already parsed: the form routes read their
    uploads and repeated parts by their own rules, asynchronously. The guard also fills
    Litestar's form cache, so Litestar does not parse the form a second time."""

    def decode_builtins(self, value: Any) -> Any:
        return self.asgi_connection.scope["state"][_PARSED]

    def decode_bytes(self, value: bytes) -> Any:
        return self.asgi_connection.scope["state"][_PARSED]


# The steps that must come before Litestar reads ``data`` are guards, not ``before_request``
# hooks: guards run in order after the key guards of the routers, while a hook of a handler
# would replace the app's own (tracing names the server span in one).


async def read_form(request: Request[Any, Any, Any]) -> FormMultiDict:
    """The request's form (empty for a body that is not one), as ``request.form()`` reads it.

    Litestar decodes each text part in the charset its part declares (UTF-8 by default) and
    lets the codec's error escape; bytes that are not text in that charset, or a charset no
    codec knows, are the client's mistake and are refused here, as INVALID_REQUEST_BODY."""
    try:
        return await request.form()
    except UnicodeDecodeError as exc:
        raise ApiError(
            ErrorCode.INVALID_REQUEST_BODY,
            f"A text field of the form is not valid {exc.encoding} text (byte {exc.start} of its value); "
            "send text as UTF-8, and files as file parts.",
        ) from None
    except LookupError:  # codecs.lookup: the only lookup form parsing does
        raise ApiError(
            ErrorCode.INVALID_REQUEST_BODY, "A text field of the form declares a charset this server does not know."
        ) from None


async def read_upload_form(request: Request[Any, Any, Any], file_part: str) -> FormMultiDict:
    """The form of an upload route, which takes multipart/form-data only (``file_part`` says
    what its file part holds): anything else is refused naming ``file``, and a body over the
    route's limit is REQUEST_BODY_TOO_LARGE with that limit."""
    if request.content_type[0] != RequestEncodingType.MULTI_PART:
        raise ApiError(
            ErrorCode.INVALID_REQUEST_BODY,
            f"This route takes multipart/form-data: {file_part}.",
            param="file",
        )
    try:
        return await read_form(request)
    except RequestEntityTooLarge:
        limit = request.route_handler.resolve_request_max_body_size()
        raise ApiError(
            ErrorCode.REQUEST_BODY_TOO_LARGE, f"The upload is larger than the {limit} bytes accepted.", param="file"
        ) from None


def parse_into_data(parse: Callable[[Request[Any, Any, Any]], Awaitable[Any]]) -> Guard:
    """A guard that runs ``parse`` and hands its result to ``ParsedForm`` as ``data``.

    ``parse`` reads the request's form with ``read_form`` (or its body); the form is then
    where Litestar's own form reading finds it ({} for a body that is not a form)."""

    async def parse_body(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        request = cast("Request[Any, Any, Any]", connection)
        parsed = await parse(request)
        await read_form(request)
        connection.scope["state"][_PARSED] = parsed

    return parse_body


async def refuse_empty_body(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard for the /v3 POST routes: an empty body, which Litestar reads as no ``data``, is
    refused as undecodable JSON, as it was before the handlers took typed bodies."""
    request = cast("Request[Any, Any, Any]", connection)
    if request.method == "POST" and not await request.body():
        decode_task_body(b"", dict)
