"""In-process transport: ops go straight to an Engine in this process, no serialisation."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ...engine.models import collector_paused, load_model
from ...engine.sink import LoopSink
from ..messages import Op
from .base import Cancellable, EventCallback

with collector_paused():  # the engine brings in torch and transformers
    from ...engine.engine import Engine

_engines: dict[tuple[Any, ...], Engine] = {}
_lock = threading.Lock()


def local_engine(
    name: str | None, *, dtype: str = "auto", device: str = "cpu", **model_kwargs: Any
) -> Engine:
    """The process-wide engine for a model: it is loaded once and shared by all queries that
    name it with the same options (`model_kwargs`, e.g. the random model's seed and tokenizer,
    are part of what the model is)."""
    key = (name or "", dtype, device, *sorted(model_kwargs.items()))
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = Engine(lambda: load_model(name, dtype=dtype, device=device, **model_kwargs))
            _engines[key] = engine
        return engine


class InProcessTransport:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def open(self) -> None:
        return None

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Cancellable]:
        sink = LoopSink(asyncio.get_running_loop(), on_event)
        return list(self.engine.submit(ops, sink))

    async def close(self) -> None:
        return None
