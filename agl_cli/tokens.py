"""What a bearer token may hold, decided once: the daemon refuses to serve with a token
file that breaks the rule, and the CLI refuses to send such a token."""

from __future__ import annotations


def problem(token: str, where: str) -> str | None:
    """The sentence that says the token in `where` is not one `Authorization: Bearer` carries
    as it is, without showing it; None if it is. The daemon's own are URL-safe; one written by
    hand may hold a space, or a letter beyond ASCII."""
    if token.isascii() and token.isprintable() and " " not in token:
        return None
    return (
        f"The token in {where} has a character no token of agl's may have"
        " (a token is printable ASCII without spaces)."
    )
