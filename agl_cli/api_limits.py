"""How much one request to the management API may carry or ask for: known to the server,
which holds every request to it, and to the CLI, which keeps within it (and says so in
one sentence when the user asks for more). Light on purpose: the CLI imports it."""

from __future__ import annotations

from typing import Any

MAX_PER_REQUEST = 10_000  # tasks queued, or rollout ids cancelled or retried, in one request
MAX_LIST_LIMIT = 10_000  # tasks or rollouts in one page of a list
DEFAULT_LIST_LIMIT = 100
# A page of results or tasks stops early once it holds this much of them (after the first):
# made whole as objects, one takes about nine times its JSON, and results with token ids
# are often a megabyte each. Whoever pages on (from the last `seq`, or the next offset)
# gets the rest.
PAGE_BYTES = 4 << 20
MAX_SEQ = 2**62  # the largest sequence number or offset a request may name (SQLite's integers reach 2**63)
STREAM_PING_SECONDS = 15  # the rollout stream sends a comment this often when idle
STREAM_READ_TIMEOUT = 3 * STREAM_PING_SECONDS  # a client that hears nothing for three pings: a dead link
FLOAT_DIGITS = 309  # digits of the largest float (1.8e308): an integer with more is past its range
MAX_DEPTH = 200
"""How deeply a body may nest, counting its innermost values. Whatever agl keeps is
written again inside answers a few levels deeper, and orjson writes at most 255 levels: a
body it could read but never answer with must be refused now, not fail every later read
of it."""
_HEADROOM = 255 - MAX_DEPTH


def is_seq(text: str) -> bool:
    """Whether `text` names a sequence number: ASCII digits up to `MAX_SEQ` (its length is
    looked at first, so that no string of thousands of digits is ever converted)."""
    return text.isascii() and text.isdigit() and len(text) < 20 and int(text) <= MAX_SEQ


def too_deep(parsed: Any) -> bool:
    """Whether `parsed` nests more than `MAX_DEPTH` levels, found at orjson's speed: it
    refuses to write more than 255 levels, so wrapped in the rest it must fail."""
    import orjson  # here, not above: `--help` must not pay for it

    for _ in range(_HEADROOM):
        parsed = [parsed]
    try:
        orjson.dumps(parsed)
    except orjson.JSONEncodeError:
        return True
    return False
