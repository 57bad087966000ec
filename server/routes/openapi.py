"""The OpenAPI document: explicit operation ids, and the error responses each family sends.

The OpenAI routes are served twice, under ``/v1`` and ``/openai/v1``, and an operation id
must be unique in the document: the ``/v1`` copy gets the plain name (the one OpenAI's own
document uses where it has one), the ``/openai/v1`` copy the name with an ``Openai`` prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)
from litestar.types import Method
from litestar.types.callable_types import OperationIDCreator
from litestar.types.internal_types import PathParameterDefinition

from schemas.errors import ErrorCode
from server.errors import ErrorFamily, error_family


def operation_id(name: str) -> OperationIDCreator:
    def create(_: HTTPRouteHandler, __: Method, path_components: list[str | PathParameterDefinition]) -> str:
        if path_components and path_components[0] == "openai":
            return "openai" + name[0].upper() + name[1:]
        return name

    return create


def file_download(media_types: Iterable[str]) -> type[Operation]:
    """An ``operation_class`` for a route that answers a ``File`` of one of ``media_types``.

    Litestar documents a ``File`` answer under the handler's one ``media_type``, empty unless
    the handler sets it; a route whose files differ in type documents each type it sends."""
    types = tuple(media_types)

    @dataclass
    class FileDownload(Operation):
        def __post_init__(self) -> None:
            success = (self.responses or {}).get("200")
            if isinstance(success, OpenAPIResponse):
                success.content = {
                    media_type: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, content_media_type=media_type))
                    for media_type in types
                }

    return FileDownload


# The error responses, as each family sends them (server/errors.py renders them).

_STRING = Schema(type=OpenAPIType.STRING)
_NULLABLE_STRING = Schema(type=[OpenAPIType.STRING, OpenAPIType.NULL])

ERROR_SCHEMAS: dict[ErrorFamily, tuple[str, Schema]] = {
    ErrorFamily.OPENAI: (
        "OpenAIError",
        Schema(
            type=OpenAPIType.OBJECT,
            required=["error"],
            properties={
                "error": Schema(
                    type=OpenAPIType.OBJECT,
                    required=["message", "type", "param", "code"],
                    properties={
                        "message": _STRING,
                        "type": _STRING,
                        "param": _NULLABLE_STRING,
                        "code": Schema(
                            type=[OpenAPIType.STRING, OpenAPIType.NULL],
                            description="One of the unified error codes.",
                        ),
                    },
                )
            },
            description="OpenAI's error body; code is the unified error code.",
        ),
    ),
    ErrorFamily.NOVITA: (
        "NovitaError",
        Schema(
            type=OpenAPIType.OBJECT,
            required=["code", "reason", "message", "metadata"],
            properties={
                "code": Schema(type=OpenAPIType.INTEGER, description="The HTTP status."),
                "reason": Schema(
                    type=OpenAPIType.STRING, enum=[code.value for code in ErrorCode], description="The error code."
                ),
                "message": _STRING,
                "metadata": Schema(type=OpenAPIType.OBJECT, additional_properties=Schema()),
            },
            description="Novita's error body.",
        ),
    ),
    ErrorFamily.NOVASSIUM: (
        "NovassiumError",
        Schema(
            type=OpenAPIType.OBJECT,
            required=["success", "message", "code"],
            properties={
                "success": Schema(type=OpenAPIType.BOOLEAN, const=False),
                "message": _STRING,
                "code": Schema(type=OpenAPIType.STRING, description="Novassium's lowercase error code."),
            },
            description="Novassium's error body.",
        ),
    ),
    ErrorFamily.SDAPI: (
        "SdApiError",
        Schema(
            type=OpenAPIType.OBJECT,
            required=["status", "message"],
            properties={
                "status": Schema(type=OpenAPIType.STRING, const="error"),
                "message": Schema(
                    one_of=[
                        _STRING,
                        Schema(
                            type=OpenAPIType.OBJECT,
                            additional_properties=Schema(type=OpenAPIType.ARRAY, items=_STRING),
                            description="The messages of each refused field, by field name.",
                        ),
                    ]
                ),
                "tip": _STRING,
                "tips": _STRING,
            },
            description="The Stable Diffusion API's error body.",
        ),
    ),
}

_DESCRIPTIONS = {
    400: "The request is invalid (INVALID_REQUEST_BODY and the other 400 codes)",
    401: "No API key was given (MISSING_API_KEY)",
    403: "The key is invalid, inactive or lacks the role (INVALID_API_KEY, API_NOT_ALLOWED, ACCESS_DENY)",
    404: "No such route, model or task (API_NOT_FOUND, MODEL_NOT_FOUND, TASK_NOT_FOUND)",
    405: "The route does not take this method (METHOD_NOT_ALLOWED); Allow lists those it takes",
    409: "The model is in use or between states (MODEL_IN_USE), or does not fit (MODEL_DOES_NOT_FIT)",
    413: "The body is larger than limits.max_body_bytes (REQUEST_BODY_TOO_LARGE)",
    415: "On a server without keys, a JSON route was sent another content type (UNSUPPORTED_MEDIA_TYPE)",
    429: "A request window or a queue is full (RATE_LIMIT_EXCEEDED, QUEUE_FULL); see Retry-After",
    500: "The server or an engine failed (ENGINE_ERROR, UNKNOWN)",
    503: "No capacity now (SERVICE_NOT_AVAILABLE); see Retry-After",
}
# Routes that answer without any guard, and whose failures are only the server's own.
_UNGUARDED = frozenset({"/health", "/ready"})
_OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _statuses(path: str, operation: Operation) -> list[int]:
    if path in _UNGUARDED:
        return [500]
    statuses = [401, 403, 404, 429, 500, 503]
    if operation.request_body is not None or operation.parameters:
        statuses.append(400)
    if operation.request_body is not None:
        statuses += [413, 415]
    return sorted(statuses)


def describe_error_responses(openapi: OpenAPI) -> None:
    """Every operation's error responses in its family's envelope, in place of Litestar's own
    ``{status_code, detail}`` (which this server never sends)."""
    components = openapi.components
    components.schemas = dict(components.schemas or {})
    for name, schema in ERROR_SCHEMAS.values():
        components.schemas[name] = schema
    allow = OpenAPIHeader(schema=_STRING, description="The methods the route takes")
    retry_after = OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER), description="Seconds to wait")
    for path, item in (openapi.paths or {}).items():
        name, _ = ERROR_SCHEMAS[error_family(path)]
        content = {"application/json": OpenAPIMediaType(schema=Reference(ref=f"#/components/schemas/{name}"))}
        for method in _OPERATIONS:
            operation: Operation | None = getattr(item, method, None)
            if operation is None:
                continue
            declared = {int(status) for status in operation.responses or {} if status.isdigit() and int(status) >= 400}
            responses = {
                status: response
                for status, response in (operation.responses or {}).items()
                if not (status.isdigit() and int(status) >= 400)
            }
            # The common statuses, and those a route declares itself (``responses=``) in the envelope.
            for status in sorted(set(_statuses(path, operation)) | (declared & _DESCRIPTIONS.keys())):
                headers: dict[str, OpenAPIHeader | Reference] = {}
                if status in (429, 503):
                    headers["Retry-After"] = retry_after
                responses[str(status)] = OpenAPIResponse(
                    description=_DESCRIPTIONS[status], content=dict(content), headers=headers or None
                )
            responses["405"] = OpenAPIResponse(
                description=_DESCRIPTIONS[405], content=dict(content), headers={"Allow": allow}
            )
            operation.responses = dict(sorted(responses.items()))


class _OpenAPIPluginWithErrors(OpenAPIPlugin):
    __slots__ = ()

    def _build_openapi(self) -> OpenAPI:
        openapi = super()._build_openapi()
        describe_error_responses(openapi)
        return openapi


def document_error_responses(app: Litestar) -> None:
    """Have ``app``'s OpenAPI document describe the error responses it really sends. Litestar
    builds the document lazily, on first use; its plugin becomes one that adds them."""
    plugin = app.plugins.get(OpenAPIPlugin)
    plugin.__class__ = _OpenAPIPluginWithErrors
