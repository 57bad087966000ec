"""Explicit OpenAPI operation ids.

The OpenAI routes are served twice, under ``/v1`` and ``/openai/v1``, and an operation id
must be unique in the document: the ``/v1`` copy gets the plain name (the one OpenAI's own
document uses where it has one), the ``/openai/v1`` copy the name with an ``Openai`` prefix.
"""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler
from litestar.types import Method
from litestar.types.callable_types import OperationIDCreator
from litestar.types.internal_types import PathParameterDefinition


def operation_id(name: str) -> OperationIDCreator:
    def create(_: HTTPRouteHandler, __: Method, path_components: list[str | PathParameterDefinition]) -> str:
        if path_components and path_components[0] == "openai":
            return "openai" + name[0].upper() + name[1:]
        return name

    return create
