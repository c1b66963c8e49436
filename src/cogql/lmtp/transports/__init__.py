"""Ways to carry LMTP ops to an engine: offers the LMTP client the `Transport` protocol and its
implementations: in-process (a local engine; imports torch), websocket (an LMTP server) and
Replicate (a deployed Cog model).

Names load on first use; importing the package imports none of its modules."""

import typing as _typing

__all__ = [
    "Cancellable",
    "EventCallback",
    "Handle",
    "InProcessTransport",
    "ReplicateTransport",
    "Transport",
    "WebSocketTransport",
]

if _typing.TYPE_CHECKING:
    from .base import Cancellable, EventCallback, Handle, Transport
    from .inprocess import InProcessTransport
    from .replicate import ReplicateTransport
    from .websocket import WebSocketTransport
else:
    from ..._lazy import lazy_exports as _lazy_exports

    __getattr__ = _lazy_exports(
        __name__,
        {
            ".base": ("Cancellable", "EventCallback", "Handle", "Transport"),
            ".inprocess": ("InProcessTransport",),
            ".replicate": ("ReplicateTransport",),
            ".websocket": ("WebSocketTransport",),
        },
    )
