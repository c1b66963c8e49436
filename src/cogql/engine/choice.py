"""Which engine runs a model: cogql's own (the default: CPU, the embedded and random models),
vLLM (GPUs, big models, many streams) or llama.cpp (a GGUF file as it is, quantised). Every host
opens its engine here.

Left unnamed (`engine=None`), a GGUF file (`llama.cpp:<file>` or a path ending in .gguf) runs on
llama.cpp where llama-cpp-python is installed, and anything else, the embedded model included,
on cogql's engine; `engine="cogql"` runs a GGUF file on cogql's engine, converted to float32."""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

from .models import ModelOptionError, is_random_model, names_gguf_file
from .protocol import LMTPEngine

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "LLAMA_CPP",
    "LOCAL_ENGINES",
    "check_llama_cpp",
    "llama_cpp_argument_names",
    "open_engine",
    "pick_engine",
    "vllm_argument_names",
]

ENGINES = ("cogql", "vllm")  # what a deployment may name (config.toml, the Cog predictor)
LLAMA_CPP = "llama.cpp"
LOCAL_ENGINES = (*ENGINES, LLAMA_CPP)  # what runs in this process or `cogql serve-model`
DEFAULT_ENGINE = "cogql"


def open_engine(
    name: str | None,
    *,
    engine: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    **options: Any,
) -> LMTPEngine:
    """Load `name` on the chosen engine (None: `pick_engine`'s choice). `options` are the
    model's own arguments: for cogql's engine `from_pretrained`'s (or the random model's), for
    vLLM its engine arguments (`tensor_parallel_size`, `max_model_len`, ...), for llama.cpp
    llama-cpp-python's `Llama` arguments (`n_ctx`, `n_threads`, ...)."""
    engine = engine or pick_engine(name)
    if engine == LLAMA_CPP:
        return _open_llama_cpp(name, dtype, device, options)
    if engine == "cogql":
        from .engine import Engine
        from .models import load_model

        return Engine(lambda: load_model(name, dtype=dtype, device=device, **options))
    if engine == "vllm":
        from ..extras import require

        require("vllm", "the vLLM engine (engine='vllm')")
        from .vllm_engine import VllmEngine

        return VllmEngine(name, dtype=dtype, device=device, options=options)
    raise ModelOptionError(f"unknown engine {engine!r}: choose one of {', '.join(LOCAL_ENGINES)}")


def pick_engine(name: str | None) -> str:
    """The engine for a model when none is named: llama.cpp for a GGUF file where it is
    installed, else cogql's."""
    if names_gguf_file(name) and importlib.util.find_spec("llama_cpp") is not None:
        return LLAMA_CPP
    return DEFAULT_ENGINE


def _open_llama_cpp(
    name: str | None, dtype: str, device: str, options: dict[str, Any]
) -> LMTPEngine:
    check_llama_cpp(name, dtype, device)
    from .llama_engine import LlamaCppEngine

    return LlamaCppEngine(name, options=options)


def check_llama_cpp(name: str | None, dtype: str = "auto", device: str = "cpu") -> None:
    """Why `name` cannot run on llama.cpp as asked (raised), before anything loads."""
    from ..extras import require

    require("llamacpp", "the llama.cpp engine (engine='llama.cpp')")
    if is_random_model(name):
        raise ModelOptionError(
            "the random model runs on cogql's engine only: leave engine='llama.cpp' out"
        )
    if dtype not in ("auto", ""):
        raise ModelOptionError(
            f"dtype={dtype!r}: llama.cpp runs a GGUF file in the precision it was quantised "
            "to; leave dtype out (or run it converted on cogql's engine: engine='cogql')"
        )
    if device not in ("cpu", "auto"):
        raise ModelOptionError(
            f"device={device!r}: cogql runs llama.cpp on the CPU (llama-cpp-python's CPU "
            "build); leave device out"
        )


def llama_cpp_argument_names() -> frozenset[str]:
    """The arguments of llama-cpp-python's `Llama` a user may give (n_ctx, n_threads, ...)."""
    from .llama_context import llama_argument_names

    return llama_argument_names()


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
