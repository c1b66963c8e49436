"""The in-process engine (torch): offers the hosts (in-process transport, LMTP server, Cog
predictor) `Engine`, which runs LMTP ops (GENERATE, SCORE, MODEL_INFO) in batches on one
model, and `load_model`, which resolves a name to weights and tokenizer. It knows nothing of
queries.

Names load on first use: importing the package imports neither its modules nor torch."""

import typing as _typing

__all__ = [
    "CausalLM",
    "Engine",
    "EngineStopped",
    "LoadedModel",
    "LoopSink",
    "ModelNotFound",
    "StreamHandle",
    "load_model",
]

if _typing.TYPE_CHECKING:
    from .engine import Engine, EngineStopped, StreamHandle
    from .lm import CausalLM
    from .models import LoadedModel, ModelNotFound, load_model
    from .sink import LoopSink
else:
    from .._lazy import lazy_exports as _lazy_exports

    __getattr__ = _lazy_exports(
        __name__,
        {
            ".engine": ("Engine", "EngineStopped", "StreamHandle"),
            ".models": ("LoadedModel", "ModelNotFound", "load_model"),
            ".lm": ("CausalLM",),
            ".sink": ("LoopSink",),
        },
    )
