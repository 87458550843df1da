"""`plain_task` reads a task from parsed JSON without a pydantic model, for the daemon's
queue and stage routes (`agl queue` sends a million tasks, 5,000 a request): it must take
exactly the tasks `TaskSpec` takes, with the same fields, and leave the rest to
`TaskSpec`, which says why (tests/test_management_api.py has those 422s)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agl_cli.models import PlainTask, TaskSpec, plain_task

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
TASKS = st.fixed_dictionaries(
    {},
    optional={
        "input": JSON,
        "mode": st.sampled_from([None, "train", "val", "test", "training", "", 1, True, ["train"]]),
        "resources_id": st.sampled_from([None, "rs-1", "", "  ", "\t", 1, False, {}]) | st.text(max_size=3),
        "metadata": st.dictionaries(st.text(max_size=3), JSON, max_size=3) | JSON,
        "colour": JSON,
    },
)


def spec_of(value: Any) -> TaskSpec | None:
    try:
        return TaskSpec.model_validate(value)
    except ValidationError:
        return None


@given(TASKS | JSON)
def test_a_plain_task_is_exactly_a_task_the_model_takes_with_the_same_fields(value: Any) -> None:
    plain, spec = plain_task(value), spec_of(value)
    assert (plain is None) == (spec is None)
    if plain is not None and spec is not None:
        assert plain == PlainTask(spec.input, spec.mode, spec.resources_id, spec.metadata)


def test_the_everyday_task_is_plain() -> None:
    assert plain_task({"input": {"q": "1 + 1?"}, "mode": "train", "metadata": {"shard": 3}}) == PlainTask(
        {"q": "1 + 1?"}, "train", None, {"shard": 3}
    )
    assert plain_task({"input": None, "resources_id": "rs-7"}) == PlainTask(None, None, "rs-7", {})
