"""Ways to carry LMTP ops to an engine: offers the LMTP client the `Transport` protocol and its
implementations: websocket (an LMTP server), Replicate (a deployed Cog model) and OpenAI
(an OpenAI-compatible API, answering LMTP ops on the client side). The
in-process transport (`inprocess.InProcessTransport`) hosts an engine, a layer below the client,
so it is imported from its module, not offered here.

Names load on first use; importing the package imports none of its modules."""

import typing as _typing

__all__ = [
    "Cancellable",
    "EventCallback",
    "Handle",
    "OpenAITransport",
    "ReplicateTransport",
    "Transport",
    "WebSocketTransport",
]

if _typing.TYPE_CHECKING:
    from .base import Cancellable, EventCallback, Handle, Transport
    from .openai import OpenAITransport
    from .replicate import ReplicateTransport
    from .websocket import WebSocketTransport
else:
    from ..._lazy import lazy_exports as _lazy_exports

    __getattr__ = _lazy_exports(
        __name__,
        {
            ".base": ("Cancellable", "EventCallback", "Handle", "Transport"),
            ".openai": ("OpenAITransport",),
            ".replicate": ("ReplicateTransport",),
            ".websocket": ("WebSocketTransport",),
        },
    )
