"""The LMTP websocket server (`cogql serve-model`): one engine, many clients, LMQL's wire format."""

from .access import AccessConfigError, AccessPolicy, tls_context
from .host import EngineHost, ModelUnavailable
from .limits import Limits
from .server import BackgroundServer, LMTPServer, serve_until_signalled

__all__ = [
    "AccessConfigError",
    "AccessPolicy",
    "BackgroundServer",
    "EngineHost",
    "LMTPServer",
    "Limits",
    "ModelUnavailable",
    "serve_until_signalled",
    "tls_context",
]
