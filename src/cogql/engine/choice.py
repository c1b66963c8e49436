"""Which engine runs a model: cogql's own (the default: CPU, the embedded and random models)
or vLLM (GPUs, big models, many streams). Every host opens its engine here."""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

from .models import ModelOptionError
from .protocol import LMTPEngine

__all__ = ["DEFAULT_ENGINE", "ENGINES", "open_engine", "vllm_argument_names"]

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


@functools.cache
def vllm_argument_names() -> frozenset[str] | None:
    """The engine arguments vLLM takes (`AsyncEngineArgs`' fields), or None where vLLM cannot
    be imported (importing it takes seconds: only those who ask pay them)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # before vLLM is imported
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
    except Exception:  # a broken install: vLLM says what is wrong when an engine starts
        return None
    return frozenset(name for name in AsyncEngineArgs.__dataclass_fields__ if name[0] != "_")
