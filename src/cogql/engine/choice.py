"""Which engine runs a model: cogql's own (the default: CPU, the embedded and random models)
or vLLM (GPUs, big models, many streams). Every host opens its engine here."""

from __future__ import annotations

from typing import Any

from .models import ModelOptionError
from .protocol import LMTPEngine

__all__ = ["DEFAULT_ENGINE", "ENGINES", "open_engine"]

ENGINES = ("cogql", "vllm")
DEFAULT_ENGINE = "cogql"


def open_engine(
    name: str | None,
    *,
    engine: str = DEFAULT_ENGINE,
    dtype: str = "auto",
    device: str = "cpu",
    **options: Any,
) -> LMTPEngine:
    """Load `name` on the chosen engine. `options` are the model's own arguments: for cogql's
    engine `from_pretrained`'s (or the random model's), for vLLM its engine arguments
    (`tensor_parallel_size`, `max_model_len`, ...)."""
    if engine == "cogql":
        from .engine import Engine
        from .models import load_model

        return Engine(lambda: load_model(name, dtype=dtype, device=device, **options))
    if engine == "vllm":
        from ..extras import require

        require("vllm", "the vLLM engine (engine='vllm')")
        from .vllm_engine import VllmEngine

        return VllmEngine(name, dtype=dtype, device=device, options=options)
    raise ModelOptionError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
