"""Who may open a connection to the LMTP server: browser origins, the bearer token, TLS, and
the warning for an address reachable from other machines.

A server on localhost is reachable from any web page the user visits (a browser lets a page
open a websocket to 127.0.0.1), so requests that carry an `Origin` header, which only browsers
send, are refused unless the origin is allowed. Non-browser clients (cogql's, LMQL's) send no
Origin and are not affected.
"""

from __future__ import annotations

import hmac
import http
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import DeployError
from ..lmtp.transports.websocket import TOKEN_ENV


class AccessConfigError(DeployError, ValueError):
    """A token, origin or certificate setting the server cannot use."""


@dataclass(frozen=True)
class Refusal:
    """Why a handshake is refused: the HTTP status and a line saying what to do."""

    status: http.HTTPStatus
    text: str


@dataclass(frozen=True)
class AccessPolicy:
    token: str | None = None
    allowed_origins: frozenset[str] = frozenset()  # "*" allows every origin

    def __post_init__(self) -> None:
        token = self.token
        if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
            raise AccessConfigError("the token must be printable ASCII without spaces")

    @classmethod
    def build(cls, token: str | None, origins: Iterable[str] = ()) -> AccessPolicy:
        return cls(token or None, frozenset(_normal_origin(o) for o in origins))

    def check(self, origin: str | None, authorization: str | None) -> Refusal | None:
        """The refusal for a request with these headers, or None to let it in."""
        if origin is not None and not self.origin_allowed(origin):
            return Refusal(
                http.HTTPStatus.FORBIDDEN,
                "browser pages may not use this LMTP server (Origin not allowed); start it "
                "with --allow-origin ORIGIN to allow one",
            )
        if self.token is not None and not self.authorized(authorization):
            return Refusal(
                http.HTTPStatus.UNAUTHORIZED,
                "this LMTP server needs a token: send 'Authorization: Bearer TOKEN' (cogql: "
                f"cogql.model(..., token=...) or {TOKEN_ENV})",
            )
        return None

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allowed_origins or _normal_origin(origin) in self.allowed_origins

    def authorized(self, authorization: str | None) -> bool:
        """Constant-time comparison of the bearer token (the header is compared whole, so its
        length is the only thing a wrong guess can learn)."""
        assert self.token is not None
        given = (authorization or "").encode("utf-8", "replace")
        return hmac.compare_digest(given, f"Bearer {self.token}".encode())


def _normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def tls_context(
    certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None
) -> ssl.SSLContext:
    """The server's TLS context from PEM files (the key may sit in the certificate file)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as e:
        raise AccessConfigError(
            f"cannot use the certificate {os.fspath(certfile)!r}: {e}"
        ) from None
    return context


def exposure_warning(addresses: Iterable[str], *, token: bool, tls: bool) -> str | None:
    """What to tell the operator when the server listens beyond this machine, or None."""
    exposed = sorted({a for a in addresses if not _is_loopback(a)})
    if not exposed:
        return None
    where = ", ".join(exposed)
    if not token:
        return (
            f"listening on {where}, reachable from other machines, with NO token: anyone who "
            "can reach it can run the model. Set --token (or COGQL_SERVE_TOKEN), or listen on "
            "127.0.0.1 behind an SSH tunnel or a reverse proxy"
        )
    if not tls:
        return (
            f"listening on {where}, reachable from other machines, without TLS: the token "
            "and all traffic cross the network in clear text (--certfile/--keyfile)"
        )
    return f"listening on {where}, reachable from other machines (token and TLS required)"


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:  # not an IP (a unix socket path): local
        return True
