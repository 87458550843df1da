"""JSON values for property tests of agl's readers: any value, and the bytes that JSON
readers disagree on, to splice into a body."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["train", "val", "test", "1.5", ""]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# What a mangled body may have spliced in: the bytes JSON readers disagree on.
SPLICES = st.sampled_from(
    [b"1e999", b"9" * 320, b"\xff", b"\xed\xa0\x80", b'"\\ud800"', b"[[[", b"]", b",", b"01", b"1.", b"-",
     b"NaN", b"\x01", b'"', b"\\", b"e5", b"E-400", b"{}", b" ", b"true", b"nul"]
)  # fmt: skip


def spliced(body: bytes, splice: bytes, where: float, cut: int) -> bytes:
    """`body` with `splice` put in at `where` (0 to 1 of the way in), over `cut` bytes."""
    at = int(where * len(body))
    return body[:at] + splice + body[at + cut :]


def repeats_a_key(body: bytes) -> bool:
    """Whether an object in `body` gives a key twice (Python's reader takes what orjson refuses)."""
    repeated = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        repeated = repeated or len({key for key, _ in items}) < len(items)
        return dict(items)

    json.loads(body, object_pairs_hook=pairs)
    return repeated
