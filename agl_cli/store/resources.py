"""What a resource bundle and its id must be for 0.3.0's workers to read them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from agl_cli.models import NamedResources
from agl_cli.store.errors import InvalidResourcesError


def check_resources_id(resources_id: str) -> None:
    """Refuse names that could not be fetched back through `GET /resources/{id}`."""
    if not resources_id or resources_id != resources_id.strip():
        raise InvalidResourcesError("A resources id must be non-empty and have no surrounding spaces.")
    if resources_id == "latest":
        raise InvalidResourcesError("'latest' is reserved and cannot be used as a resources id.")
    if resources_id in (".", ".."):
        raise InvalidResourcesError(f"'{resources_id}' cannot be a resources id: no URL can name it.")
    if "/" in resources_id or len(resources_id) > 200:
        raise InvalidResourcesError("A resources id must be at most 200 characters and contain no '/'.")
    if any(character < " " or character == "\x7f" for character in resources_id):
        raise InvalidResourcesError(
            "A resources id must not contain control characters (a newline, NUL, a tab)."
        )


def validate_resources(resources: Mapping[str, Any]) -> NamedResources:
    """Check a bundle against the resource types that 0.3.0 workers understand."""
    plain = {
        name: value.model_dump() if isinstance(value, BaseModel) else value
        for name, value in resources.items()
    }
    try:
        return _RESOURCES_ADAPTER.validate_python(plain)
    except ValidationError as exc:
        raise InvalidResourcesError(describe_resource_error(exc)) from None


def describe_resource_error(exc: ValidationError) -> str:
    """Turn pydantic's first complaint about a bundle into one sentence."""
    first = exc.errors(include_url=False)[0]
    loc = list(first["loc"])
    if len(loc) > 1 and loc[1] in _RESOURCE_TYPES:
        del loc[1]  # pydantic names the union member; the user only needs the field
    where = ".".join(str(part) for part in loc)
    if first["type"] == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag")
        return (
            f"Resource '{first['loc'][0]}' has unknown resource_type '{tag}'; "
            f"expected one of: {', '.join(_RESOURCE_TYPES)}."
        )
    if first["type"] == "union_tag_not_found":
        return f"Resource '{first['loc'][0]}' has no resource_type; expected one of: {', '.join(_RESOURCE_TYPES)}."
    return f"Resource field '{where}': {first['msg']}."


_RESOURCE_TYPES = ("llm", "proxy_llm", "prompt_template")
_RESOURCES_ADAPTER: TypeAdapter[NamedResources] = TypeAdapter(NamedResources)
