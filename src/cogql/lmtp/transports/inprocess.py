"""In-process transport: ops go straight to an engine in this process, no serialisation."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from ...engine.models import collector_paused, model_label
from ...engine.sink import LoopSink
from ..messages import Op
from .base import Cancellable, EventCallback

if TYPE_CHECKING:
    from ...engine.protocol import LMTPEngine

_engines: dict[tuple[Any, ...], LMTPEngine] = {}
_lock = threading.Lock()


def local_engine(
    name: str | None,
    *,
    engine: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    **model_kwargs: Any,
) -> LMTPEngine:
    """The process-wide engine for a model: it is loaded once and shared by all queries that
    name it with the same engine and options (`model_kwargs`, e.g. the random model's seed and
    tokenizer or vLLM's engine arguments, are part of what the model is). No engine named:
    the one `open_engine` picks for the name (llama.cpp for a GGUF file where installed)."""
    from ...engine.choice import pick_engine

    engine = engine or pick_engine(name)
    key = (model_label(name), engine, dtype, device, repr(sorted(model_kwargs.items())))
    with _lock:
        found = _engines.get(key)
        if found is None:
            with collector_paused():  # the engine brings in torch and transformers
                from ...engine.choice import open_engine

                found = open_engine(name, engine=engine, dtype=dtype, device=device, **model_kwargs)
            _engines[key] = found
        return found


def close_local_engine(engine: LMTPEngine) -> None:
    """Close an in-process engine and forget it (its memory, vLLM's process): the next model
    made with `cogql.model(...)` that names it loads it again, while models already connected
    to it get errors."""
    with _lock:
        for key in [k for k, v in _engines.items() if v is engine]:
            del _engines[key]
    engine.close()


class InProcessTransport:
    def __init__(self, engine: LMTPEngine) -> None:
        self.engine = engine

    async def open(self) -> None:
        return None

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Cancellable]:
        sink = LoopSink(asyncio.get_running_loop(), on_event)
        return list(self.engine.submit(ops, sink))

    async def close(self) -> None:
        return None
