"""The API token check: Replicate documents `Bearer`, LMQL's client still sends `Token`, and
both are accepted there, so both are accepted here; everything else is a 401."""

from __future__ import annotations

import hmac
import secrets

from .errors import Unauthenticated

SCHEMES = ("bearer", "token")


def new_token() -> str:
    """A fresh random token in Replicate's `r8_` style (not a real Replicate token)."""
    return "r8_" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")


def check(authorization: str | None, token: str) -> None:
    """Raise Unauthenticated unless the header carries exactly `token`."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() not in SCHEMES or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Unauthenticated()
