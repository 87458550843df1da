"""The client's TypedDicts and the server's pydantic models describe the same bodies.

The client cannot import the server's models (it stays light, see test_startup), so each
shape is written twice; this test holds the two together, field by field and type by
type. The client may say less about a nested object (`dict[str, Any]`), never differ.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import pytest
import typing_extensions
from pydantic import BaseModel, TypeAdapter

from agl_cli import client, models, store_models
from agl_cli.server import schemas

PAIRS: list[tuple[Any, type[BaseModel]]] = [
    (client.TaskRecord, schemas.TaskRecord),
    (client.TaskPage, schemas.TaskPage),
    (client.RolloutRecord, schemas.RolloutRecord),
    (client.RolloutList, schemas.RolloutList),
    (client.ResourcesUpdate, models.ResourcesUpdate),
    (client.ResourcesList, schemas.ResourcesList),
    (client.Staged, schemas.Staged),
    (client.Rates, schemas.Rates),
    (client.DatabaseSpace, schemas.DatabaseSpace),
    (client.Status, schemas.Status),
    (client.Attempt, store_models.Attempt),
]

Schema = dict[str, Any]


def _readable(shape: Any) -> Any:
    """The client's `typing.TypedDict` as a `typing_extensions` one, which pydantic reads
    on every Python (the client itself does not import typing_extensions, to start fast)."""
    if typing.is_typeddict(shape):
        fields = {name: _readable(hint) for name, hint in typing.get_type_hints(shape).items()}
        return typing_extensions.TypedDict(shape.__name__, fields, total=shape.__total__)  # type: ignore[operator]
    arguments = typing.get_args(shape)
    if not arguments:
        return shape
    origin = typing.get_origin(shape)
    readable = tuple(_readable(argument) for argument in arguments)
    return typing.Union[readable] if origin is types.UnionType else origin[readable]  # noqa: UP007


def _schema_of(shape: Any) -> Schema:
    return TypeAdapter(_readable(shape)).json_schema(mode="serialization")


def _resolve(schema: Schema, defs: Schema) -> Schema:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _values(schema: Schema) -> Schema:
    """The schema of a mapping's values (`additionalProperties: true` allows any)."""
    values = schema.get("additionalProperties", {})
    return values if isinstance(values, dict) else {}


def _alternatives(schema: Schema) -> list[Schema]:
    return list(schema.get("anyOf", [schema]))


def _disagreements(path: str, ours: Schema, theirs: Schema, defs: tuple[Schema, Schema]) -> list[str]:
    """Where the client's schema (ours) says something the server's (theirs) does not."""
    ours, theirs = _resolve(ours, defs[0]), _resolve(theirs, defs[1])
    if not ours:  # Any: the client promises nothing
        return []
    if (
        ours.get("type") == "object"
        and "properties" not in ours
        and ours.get("additionalProperties", True) is True
    ):
        return []  # dict[str, Any] stands for any object
    if "anyOf" in ours or "anyOf" in theirs:
        left, right = _alternatives(ours), _alternatives(theirs)
        if len(left) != len(right):
            return [f"{path}: {len(left)} alternatives in the client, {len(right)} in the server"]
        problems: list[str] = []
        for alternative in left:
            matches = [r for r in right if not _disagreements(path, alternative, r, defs)]
            if not matches:
                problems.append(f"{path}: the client's {alternative} is not one of the server's")
        return problems
    if "enum" in ours or "const" in ours or "enum" in theirs or "const" in theirs:
        mine = set(ours.get("enum", [ours.get("const")]))
        yours = set(theirs.get("enum", [theirs.get("const")]))
        return [] if mine == yours else [f"{path}: values {sorted(mine)} vs {sorted(yours)}"]
    if ours.get("type") != theirs.get("type"):
        return [f"{path}: {ours.get('type')} in the client, {theirs.get('type')} in the server"]
    if ours.get("type") == "array":
        return _disagreements(f"{path}[]", ours.get("items", {}), theirs.get("items", {}), defs)
    if ours.get("type") != "object":
        return []
    if "properties" not in ours:  # an open mapping: it may stand for any object
        if "properties" in theirs:
            return []
        return _disagreements(f"{path}{{}}", _values(ours), _values(theirs), defs)
    mine_fields, their_fields = set(ours["properties"]), set(theirs.get("properties", {}))
    if mine_fields != their_fields:
        return [
            f"{path}: fields only in the client {sorted(mine_fields - their_fields)},"
            f" only in the server {sorted(their_fields - mine_fields)}"
        ]
    problems = []
    for name in sorted(mine_fields):
        problems += _disagreements(
            f"{path}.{name}", ours["properties"][name], theirs["properties"][name], defs
        )
    return problems


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[model.__name__ for _, model in PAIRS])
def test_each_client_shape_agrees_with_the_server_model_of_the_same_name(
    ours: Any, theirs: type[BaseModel]
) -> None:
    assert ours.__name__ == theirs.__name__
    mine = _schema_of(ours)
    yours = theirs.model_json_schema(mode="serialization")
    defs = (mine.get("$defs", {}), yours.get("$defs", {}))
    assert _disagreements(theirs.__name__, mine, yours, defs) == []


def test_the_comparison_notices_a_field_the_server_does_not_have() -> None:
    from typing import TypedDict

    class Rates(TypedDict):
        claims_per_second: float
        rollouts_per_second: int
        seconds: float

    mine = _schema_of(Rates)
    yours = schemas.Rates.model_json_schema(mode="serialization")
    assert _disagreements("Rates", mine, yours, ({}, {})) == [
        "Rates.rollouts_per_second: integer in the client, number in the server"
    ]


def test_every_response_model_of_the_api_has_a_client_shape() -> None:
    """A new response model without a client twin would escape the check above."""
    checked = {model.__name__ for _, model in PAIRS}
    response_models = {
        name
        for name, value in vars(schemas).items()
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == schemas.__name__
        and "[" not in name  # pydantic's parametrised generics (DashboardEvent's base)
    }  # fmt: skip
    not_for_the_client = {
        # requests: the client sends plain dicts the server validates
        "QueueRequest", "TaskIds", "PublishRequest", "PublishBody", "SignInRequest", "_Body",
        # answers the client reduces to one value or raises as an error
        "RolloutIds", "BatchCreated", "Committed", "Discarded", "Cancelled", "Retried", "QueueState", "TaskList",
        "Stopping", "SignInCode",
        "ErrorMessage", "ValidationIssue", "ValidationErrors",
        # what the dashboard's page reads (tests/test_dashboard_api.py checks each answer)
        "RewardLine", "RewardChart", "DashboardSummary", "DashboardEvent", "RolloutLine", "RolloutLines",
        "TripletLine", "SpanLine", "TaskHistory", "RolloutResult", "RolloutDetail", "FailureList",
        "WorkerList", "ResourcesPage",
    }  # fmt: skip
    assert response_models - not_for_the_client == checked - {"ResourcesUpdate", "Attempt"}  # not in schemas
