"""The transport interface every LMTP client talks through."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..messages import Event, Op

EventCallback = Callable[[Event], None]


class Cancellable(Protocol):
    """Anything that stops one op it stands for (a transport `Handle`, an engine stream)."""

    def cancel(self) -> None: ...


@dataclass(frozen=True)
class Handle:
    """A transport's handle on one op it sent: `cancel` stops that op alone."""

    cancel: Callable[[], None]


class Transport(Protocol):
    """Carries ops to a server and events back; events are delivered on the event loop."""

    async def open(self) -> None: ...

    def send(self, ops: list[Op], on_event: EventCallback) -> Sequence[Cancellable]:
        """Send ops that belong together (one message / one batch); returns one handle per op."""
        ...

    async def close(self) -> None: ...
