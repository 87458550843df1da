"""Resource bundles: what one and its id must be for 0.3.0's workers to read them, and the
versions kept of each (publishing a bundle under a known id makes its next version)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from agl_cli.models import NamedResources, ResourcesUpdate
from agl_cli.store.batches import Batches
from agl_cli.store.errors import InvalidResourcesError
from agl_cli.store.ids import new_resources_id
from agl_cli.store.rows import RESOURCES_COLUMNS, ResourcesRow, resources_from_row

# What ends a path segment in a URL, or begins an escape: 0.3.0's workers put an id in the
# URL of `GET /resources/{id}` as it is, so such an id fetches nothing or another bundle.
_CUT_IN_A_URL = frozenset("/?#%")


def check_resources_id(resources_id: str) -> None:
    """Refuse names that could not be fetched back through `GET /resources/{id}`."""
    if not resources_id or resources_id != resources_id.strip():
        raise InvalidResourcesError("A resources id must be non-empty and have no surrounding spaces.")
    if resources_id == "latest":
        raise InvalidResourcesError("'latest' is reserved and cannot be used as a resources id.")
    if resources_id in (".", ".."):
        raise InvalidResourcesError(f"'{resources_id}' cannot be a resources id: no URL can name it.")
    if len(resources_id) > 200 or any(character in _CUT_IN_A_URL for character in resources_id):
        raise InvalidResourcesError(
            "A resources id must be at most 200 characters, without '/', '?', '#' or '%'"
            " (0.3.0's workers put it in a URL as it is)."
        )
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


class Resources(Batches):
    """The published bundles, each at its latest version, in the order they were published."""

    def publish_resources(
        self, resources: Mapping[str, Any], resources_id: str | None = None
    ) -> ResourcesUpdate:
        checked = validate_resources(resources)
        if resources_id is not None:
            check_resources_id(resources_id)
        now = self.clock()
        with self._write() as conn:
            previous = (
                conn.execute(
                    "SELECT create_time, version FROM resources WHERE resources_id = ?", (resources_id,)
                ).fetchone()
                if resources_id
                else None
            )
            create_time, version = previous or (now, 0)  # a new id: its first version
            update = ResourcesUpdate(
                resources_id=resources_id or new_resources_id(),
                create_time=create_time,
                update_time=now,
                version=version + 1,
                resources=checked,
            )
            conn.execute(
                "INSERT INTO resources (resources_id, publish_seq, create_time, update_time, version, body)"
                " VALUES (?, (SELECT coalesce(max(publish_seq), 0) + 1 FROM resources), ?, ?, ?, ?)"
                " ON CONFLICT (resources_id) DO UPDATE SET publish_seq = excluded.publish_seq,"
                " update_time = excluded.update_time, version = excluded.version, body = excluded.body",
                (
                    update.resources_id,
                    update.create_time,
                    update.update_time,
                    update.version,
                    update.model_dump_json(include={"resources"}),
                ),
            )
        return update

    def get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        rows = self._read(
            f"SELECT {RESOURCES_COLUMNS} FROM resources WHERE resources_id = ?", (resources_id,)
        )
        return resources_from_row(ResourcesRow._make(rows[0])) if rows else None

    def latest_resources(self) -> ResourcesUpdate | None:
        rows = self._read(f"SELECT {RESOURCES_COLUMNS} FROM resources ORDER BY publish_seq DESC LIMIT 1")
        return resources_from_row(ResourcesRow._make(rows[0])) if rows else None

    def list_resources(self, last: int | None = None) -> list[ResourcesUpdate]:
        if last is None:
            rows = self._read(f"SELECT {RESOURCES_COLUMNS} FROM resources ORDER BY publish_seq")
        else:
            newest_first = f"SELECT {RESOURCES_COLUMNS} FROM resources ORDER BY publish_seq DESC LIMIT ?"
            rows = self._read(newest_first, (last,))[::-1]
        return [resources_from_row(ResourcesRow._make(values)) for values in rows]
