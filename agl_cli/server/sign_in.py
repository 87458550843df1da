"""One-time sign-in codes: how `agl dashboard` signs a browser in without putting the
token on the browser's command line, which every user of the machine can read.

The CLI asks for a code (with the token), opens the page at `/#code=...`, and the page
trades the code for the token at `SIGN_IN_PATH`, which needs no token. A code is good
for one trade within `CODE_SECONDS`, and lives only in the daemon's memory.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agl_cli.server import schemas
from agl_cli.server.openapi import Endpoint
from agl_cli.server.requests import read_model
from agl_cli.server.responses import ORJSONResponse, error

CODE_SECONDS = 60.0
MAX_UNSPENT = 64  # codes kept at most; past it, the oldest is forgotten
SIGN_IN_PATH = "/dashboard/sign-in"
REFUSED = "This sign-in link has expired or was used already: run agl dashboard again, or paste the token."


class SignInCodes:
    """Codes handed out and neither spent nor expired, oldest first."""

    def __init__(self, lifetime: float = CODE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._lifetime = lifetime
        self._clock = clock
        self._deadlines: OrderedDict[str, float] = OrderedDict()

    def issue(self) -> str:
        now = self._clock()
        # Forget the oldest while it has expired, or while there is no room for one more.
        while self._deadlines and (
            next(iter(self._deadlines.values())) <= now or len(self._deadlines) >= MAX_UNSPENT
        ):
            self._deadlines.popitem(last=False)
        code = secrets.token_urlsafe(24)
        self._deadlines[code] = now + self._lifetime
        return code

    def redeem(self, code: str) -> bool:
        """Whether `code` was issued here and is still good; either way it is spent."""
        deadline = self._deadlines.pop(code, None)
        return deadline is not None and self._clock() < deadline


def codes_of(request: Request) -> SignInCodes:
    codes: SignInCodes = request.app.state.sign_in_codes
    return codes


async def issue_code(request: Request) -> Response:
    """A code the dashboard's page trades for the token, once, within `CODE_SECONDS`."""
    code = codes_of(request).issue()
    return ORJSONResponse({"code": code, "expires_in": CODE_SECONDS}, status_code=201)


async def redeem_code(request: Request) -> Response:
    """The token, for a code issued here and not yet spent or expired."""
    given = await read_model(request, schemas.SignInRequest)
    if not codes_of(request).redeem(given.code):
        return error(401, REFUSED)
    return ORJSONResponse({"token": request.app.state.options.token})


ENDPOINTS = [
    Endpoint(
        "POST", "/v1/dashboard/sign-in-codes", issue_code, "A one-time code that signs the dashboard in",
        {201: schemas.SignInCode},
    ),
]  # fmt: skip
routes = [Route(SIGN_IN_PATH, redeem_code, methods=["POST"])]
