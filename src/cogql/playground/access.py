"""Who may use a playground: the page it opened, and nothing else on the machine or the web.

A query is a program that the playground runs as the user, so every request must carry the
session's random token (in the URL the playground opens, then in each request the page makes),
and a request that a browser sends from another origin (a web page the user has open, which
could otherwise reach loopback) is refused, as is a Host that is not the server's own (DNS
rebinding).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

TOKEN_PARAM = "token"
TOKEN_HEADER = "x-cogql-token"


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class Access:
    """The token and the origins allowed; `port` is known once the server listens."""

    token: str = field(default_factory=new_token)
    host: str = "127.0.0.1"
    port: int = 0

    @property
    def hosts(self) -> set[str]:
        """The Host headers a request may carry: the server's address, or localhost."""
        names = {self.host, "127.0.0.1", "localhost"} if _loopback(self.host) else {self.host}
        return {f"{name}:{self.port}" for name in names}

    @property
    def origins(self) -> set[str]:
        return {f"http://{h}" for h in self.hosts}

    def refusal(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        """Why a request is refused (None: it may go on)."""
        host = headers.get("host", "")
        if host not in self.hosts:
            return f"Host {host!r} is not this playground's"
        origin = headers.get("origin")
        if origin is not None and origin not in self.origins:
            return f"Origin {origin!r} is not this playground's"
        given = query.get(TOKEN_PARAM) or headers.get(TOKEN_HEADER) or ""
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return "the session token is missing or wrong: open the URL the playground printed"
        return None


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")
