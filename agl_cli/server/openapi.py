"""OpenAPI 3.1 documents generated from route tables: the management API's, and the one of
the protocols workers speak (the legacy routes and the store API).

Each route is declared once as an `Endpoint`: the Starlette route is made from it, and
so is its entry in the document, with request and response schemas taken from the types
it validates and answers with (pydantic writes the JSON Schema; nothing here is written
by hand but the route summaries).
"""

from __future__ import annotations

import http
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agl_cli.server import browsers
from agl_cli.server.schemas import ErrorMessage, ValidationErrors

REF_TEMPLATE = "#/components/schemas/{model}"
JSON = "application/json"
EVENT_STREAM = "text/event-stream"
SQLITE = "application/vnd.sqlite3"  # a database file, as `GET /v1/backup` sends it
# A path's parameters, `{name}` or `{name:rest}` (the rest of the path, for a rollout id a
# worker chose), documented as `{name}`.
_PATH_PARAM = re.compile(r"{(\w+)(?::rest)?}")


class _RestOfPath(PathConvertor):
    """The rest of the path, '/' and line breaks included (Starlette's `path` stops at a
    line break): a rollout id is whatever a worker reported, and one may hold either."""

    regex = "(?s:.*)"


register_url_convertor("rest", _RestOfPath())


def template(path: str) -> str:
    """A route's path as documented, and as metrics label it: `/v1/tasks/{rollout_id}`."""
    return _PATH_PARAM.sub(r"{\1}", path)


Described = Any  # a type pydantic can describe: a model, `list[Model]`, `Model | None`, ...


@dataclass(frozen=True)
class Param:
    """A query parameter or header; `schema` is any type pydantic can describe."""

    name: str
    schema: Any
    description: str
    location: Literal["query", "header"] = "query"
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One route and everything its description needs; a response described as `None`
    has no body worth a schema (an error's is `ErrorMessage`)."""

    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    summary: str
    responses: Mapping[int, Described]
    body: Described = None
    params: Sequence[Param] = field(default_factory=tuple)
    media_type: str = JSON


def routes_of(endpoints: Iterable[Endpoint]) -> list[Route]:
    """One Starlette route per path, whatever its methods, so that a method it lacks is
    405 with every method the path has in `Allow` (a route per method names only its own)."""
    by_path: dict[str, dict[str, Callable[..., Awaitable[Any]]]] = {}
    for endpoint in endpoints:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint.handler
    return [Route(path, _one_of(handlers), methods=list(handlers)) for path, handlers in by_path.items()]


def _one_of(handlers: dict[str, Callable[..., Awaitable[Any]]]) -> Callable[..., Awaitable[Any]]:
    if len(handlers) == 1:
        [handler] = handlers.values()
        return handler

    async def by_method(request: Request) -> Response:
        handler = handlers.get(request.method) or handlers["GET"]  # HEAD: Starlette's GET without a body
        response: Response = await handler(request)
        return response

    return by_method


def build_document(
    endpoints: Sequence[Endpoint], *, title: str, version: str, bearer: bool = True
) -> dict[str, Any]:
    """The OpenAPI document for `endpoints`, with every model under `components.schemas`;
    `bearer`: every route asks for the token."""
    wanted: list[tuple[Described, JsonSchemaMode]] = [
        (ErrorMessage, "serialization"),
        (ValidationErrors, "serialization"),
    ]
    for endpoint in endpoints:
        if endpoint.body is not None:
            wanted.append((endpoint.body, "validation"))
        wanted += [(model, "serialization") for model in endpoint.responses.values() if model is not None]
    described, definitions = TypeAdapter.json_schemas(
        [(key, key[1], TypeAdapter(key[0])) for key in dict.fromkeys(wanted)], ref_template=REF_TEMPLATE
    )
    refs = {key: schema for (key, _), schema in described.items()}
    components: dict[str, Any] = {"schemas": definitions.get("$defs", {})}
    if bearer:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}

    names = [endpoint.handler.__name__ for endpoint in endpoints]
    if len(set(names)) != len(names):  # OpenAPI requires them unique; clients make methods of them
        raise ValueError(
            f"Two routes share an operationId: {sorted({n for n in names if names.count(n) > 1})}"
        )
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation: dict[str, Any] = {
            "operationId": endpoint.handler.__name__,
            "summary": endpoint.summary,
            "security": [{"bearer": []}] if bearer else [],
            "parameters": _parameters(endpoint),
            "responses": {
                str(code): _response(code, model, endpoint.media_type, refs)
                for code, model in sorted({**endpoint.responses, **_refusals(endpoint, bearer)}.items())
            },
        }
        if endpoint.handler.__doc__:
            operation["description"] = endpoint.handler.__doc__.strip()
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": refs[(endpoint.body, "validation")]}},
            }
        paths.setdefault(template(endpoint.path), {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": components,
    }


def _refusals(endpoint: Endpoint, bearer: bool) -> dict[int, Described]:
    """What any route may answer before its own code runs: 401 without the token (where
    it is asked for), 403 to what a browser sends for another site or addresses to a
    name not loopback's, and 415 to a body not typed as JSON (`browsers`)."""
    refusals: dict[int, Described] = {403: None}
    if bearer:
        refusals[401] = None
    if endpoint.method not in browsers.BODILESS:
        refusals[415] = None
    return refusals


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    described = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(endpoint.path)
    ]
    for param in endpoint.params:
        schema = TypeAdapter(param.schema).json_schema(ref_template=REF_TEMPLATE)
        schema.pop("title", None)
        described.append(
            {
                "name": param.name,
                "in": param.location,
                "description": param.description,
                "required": param.required,
                "schema": schema,
            }
        )
    return described


def _response(
    code: int,
    model: Described,
    media_type: str,
    refs: Mapping[tuple[Any, JsonSchemaMode], Any],
) -> dict[str, Any]:
    description = http.HTTPStatus(code).phrase
    if code == 422:
        schemas = [refs[(ErrorMessage, "serialization")], refs[(ValidationErrors, "serialization")]]
        return {"description": description, "content": {JSON: {"schema": {"anyOf": schemas}}}}
    if code >= 400:
        model = model or ErrorMessage
    elif media_type == EVENT_STREAM and model is not None:
        stream = {
            "schema": {"type": "string", "description": "Server-sent events; `data` is an `x-event-data`."},
            "x-event-data": refs[(model, "serialization")],
        }
        return {"description": description, "content": {EVENT_STREAM: stream}}
    if model is None and media_type != JSON:
        return {
            "description": description,
            "content": {media_type: {"schema": {"contentMediaType": media_type}}},
        }
    if model is None:
        return {"description": description}
    return {
        "description": description,
        "content": {JSON: {"schema": refs[(model, "serialization")]}},
    }
