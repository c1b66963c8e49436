"""One op a client sent through the transport: its wire id, where its events go, and whether
the client still reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ...cost import Cost
from ...messages import ErrorEvent, Event, Op, is_terminal, op_kind
from ..base import EventCallback

__all__ = ["OpState", "SentWith"]


class SentWith(Protocol):
    """The prediction an op travels in, as the op sees it."""

    def op_cancelled(self) -> None: ...


@dataclass(eq=False)
class OpState:
    """One op the client sent: how to reach the client, and where the op is."""

    op: Op  # with its wire id
    client_id: Any
    on_event: EventCallback
    cost: Cost | None
    cache_key: str | None = None
    group: int | None = None  # ops that must share one prediction
    closed: bool = False  # the client has its terminal event
    cancelled: bool = False  # the client stopped reading before that
    prediction: SentWith | None = None

    @property
    def kind(self) -> str:
        return op_kind(self.op)

    @property
    def settled(self) -> bool:
        return self.closed or self.cancelled

    def deliver(self, event: Event) -> None:
        if self.settled:
            return
        event.stream_id = self.client_id
        if is_terminal(event):
            self.closed = True
        self.on_event(event)

    def fail(self, message: str, retryable: bool = False) -> None:
        self.deliver(ErrorEvent(None, message, as_msg=False, retryable=retryable))
