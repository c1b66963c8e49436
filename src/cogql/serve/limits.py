"""The bounds a server keeps (`Limits`) and the counts that show they hold (`Stats`): shared by
the server and its sessions, below both."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Limits", "Stats"]

S = TypeVar("S")  # the session type, so the counts need not import the sessions


@dataclass(frozen=True)
class Limits:
    """Per-server bounds (README, "Serving a model over LMTP", lists them with their flags).

    A frame above `max_frame_bytes` closes its connection (code 1009): it cannot be answered
    per stream without reading it whole. Past `max_connections`, handshakes get HTTP 503. A
    connection holds up to `max_streams_per_connection` streams running; more ops wait in a
    queue of `max_queued_ops` ops / `max_queued_tokens` prompt tokens, and past that get an
    error. Unsent replies past `max_backlog_bytes` close the connection (code 1008)."""

    max_frame_bytes: int = 8 * 2**20
    max_connections: int = 256
    idle_timeout: float = 600.0  # seconds without streams or frames; 0 disables
    max_streams_per_connection: int = 128
    max_queued_ops: int = 1024
    max_queued_tokens: int = 2**21
    max_batch_ops: int = 256
    max_backlog_bytes: int = 16 * 2**20
    max_top_logprobs: int = 20
    max_tokens_without_context: int = 2**16  # max_tokens cap for a model with no context size

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int | float) or value != value or value < 0:
                raise ValueError(f"limit {name} must be a number >= 0, got {value!r}")


@dataclass
class Stats(Generic[S]):
    """Counts and high-water marks, so operators and tests can check that the bounds hold."""

    connections: int = 0
    streams_high: int = 0
    queued_high: int = 0
    backlog_high: int = 0  # bytes
    busy: int = 0  # ops refused because the queue was full
    frames: Counter[str] = field(default_factory=Counter)  # received, by message type
    refused: Counter[int] = field(default_factory=Counter)  # handshakes, by HTTP status
    closed: Counter[str] = field(default_factory=Counter)  # connections closed by the server
    sessions: set[S] = field(default_factory=set)  # the open connections
