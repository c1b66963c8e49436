"""LMTP, the client side: offers the runtime `LMTPClient` (generate, score and model info
over any `Transport`), the one wire schema (ops and events in `messages`), cost records,
and client-side emulation of extensions a server lacks. Transports live in `transports`.

Names load on first use; importing the package imports none of its modules."""

import typing as _typing

__all__ = [
    "Cost",
    "ErrorEvent",
    "Event",
    "Generate",
    "InfoEvent",
    "LMTPClient",
    "LMTPError",
    "ModelInfo",
    "Op",
    "Score",
    "TokenEvent",
    "Transport",
    "track_cost",
]

if _typing.TYPE_CHECKING:
    from .client import LMTPClient, LMTPError
    from .cost import Cost, track_cost
    from .messages import ErrorEvent, Event, Generate, InfoEvent, ModelInfo, Op, Score, TokenEvent
    from .transports.base import Transport
else:
    from .._lazy import lazy_exports as _lazy_exports

    __getattr__ = _lazy_exports(
        __name__,
        {
            ".client": ("LMTPClient", "LMTPError"),
            ".cost": ("Cost", "track_cost"),
            ".messages": (
                "ErrorEvent",
                "Event",
                "Generate",
                "InfoEvent",
                "ModelInfo",
                "Op",
                "Score",
                "TokenEvent",
            ),
            ".transports.base": ("Transport",),
        },
    )
