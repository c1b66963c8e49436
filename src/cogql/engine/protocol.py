"""What a host needs from an engine, whichever runs the model: cogql's own (engine/engine.py)
or vLLM's (engine/vllm_engine.py). The in-process transport, `cogql serve-model` and the Cog
predictor talk to this and nothing else, so every host runs either engine unchanged.

Nothing here imports torch: hosts type against it before any engine is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import TransportError
from .sink import Sink

if TYPE_CHECKING:
    from ..lmtp.messages import Op
    from ..tokenizer import Tokenizer

__all__ = ["EngineStopped", "LMTPEngine", "StreamHandle"]


class EngineStopped(TransportError, RuntimeError):
    """The engine no longer runs ops; the message says why."""


class StreamHandle:
    """Lets the submitter cancel a stream it no longer needs (nothing more is computed).
    `on_cancel`, when an engine sets it, is called once, on the canceller's thread."""

    def __init__(self) -> None:
        self.cancelled = False
        self.on_cancel: Callable[[], None] | None = None

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()


class LMTPEngine(Protocol):
    """Runs LMTP ops for any number of clients. `submit` is thread-safe and returns at once;
    the events of the ops go to the sink (on the engine's own thread)."""

    tokenizer: Tokenizer
    context_length: int | None

    def model_info(self) -> dict[str, Any]:
        """MODEL_INFO's fields, capabilities included (without the tokenizer hand-out)."""
        ...

    def submit(self, ops: list[Op], sink: Sink) -> list[StreamHandle]:
        """Ops that arrived together (batched together, `after` chains resolved among them)."""
        ...

    @property
    def alive(self) -> bool: ...

    @property
    def stopped(self) -> str | None:
        """Why the engine no longer runs ops; None while it runs."""
        ...

    def describe(self) -> str:
        """Where and how it runs, for a log line: 'cogql engine, cpu, float32'."""
        ...

    def close(self) -> None: ...
