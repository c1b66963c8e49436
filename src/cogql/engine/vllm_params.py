"""vLLM's parameters for cogql's ops: the engine's arguments (cogql's defaults for a CPU or
GPUs, then the user's), a GENERATE's sampling parameters, a SCORE's prompt log-probs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..lmtp.messages import Generate
from .choice import vllm_argument_names
from .models import ModelOptionError

__all__ = [
    "MAX_LOGPROBS",
    "VLLM_CPU_DEFAULTS",
    "engine_arguments",
    "on_cpu",
    "sampling_params",
    "score_params",
]

# On a CPU, vLLM's default compile costs 60-80 s of start-up for no faster decode, and its
# default reserves a core for itself; the KV cache gets a fixed size instead of a fraction of
# RAM (which also skips the memory profiling pass).
VLLM_CPU_DEFAULTS: dict[str, Any] = {"enforce_eager": True, "kv_cache_memory_bytes": 2 << 30}
MAX_LOGPROBS = 20


def engine_arguments(path: Path, *, dtype: str, device: str, options: dict[str, Any]) -> Any:
    """vLLM's `AsyncEngineArgs` for a model folder: cogql's defaults, then the user's vLLM
    options (any `AsyncEngineArgs` field; an unknown one is a clear error)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # before vLLM is imported
    from vllm.engine.arg_utils import AsyncEngineArgs

    cpu = on_cpu(device)
    if cpu:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    base: dict[str, Any] = {
        "model": str(path),
        "dtype": dtype,
        "seed": 0,
        "enable_prefix_caching": True,
        "structured_outputs_config": {"backend": "guidance"},
        "logprobs_mode": "processed_logprobs",
        "max_logprobs": MAX_LOGPROBS,
        "disable_log_stats": True,
        **(VLLM_CPU_DEFAULTS if cpu else {"tensor_parallel_size": _gpus_for(path)}),
    }
    merged = {**base, **{k.replace("-", "_"): v for k, v in options.items()}}
    unknown = sorted(set(merged) - (vllm_argument_names() or set(merged)))
    if unknown:
        raise ModelOptionError(
            f"not vLLM engine arguments: {', '.join(unknown)} (see vLLM's engine arguments; "
            "cogql passes any AsyncEngineArgs field through)"
        )
    return AsyncEngineArgs(**merged)


def sampling_params(op: Generate, limit: int) -> Any:
    """vLLM's sampling parameters for a GENERATE of at most `limit` tokens. Stop strings are
    left to the engine (see the module's docstring); no text is decoded."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    extra: dict[str, Any] = {k: op.extra[k] for k in ("top_k", "top_p") if k in op.extra}
    if op.temperature > 0 and op.seed is not None:
        extra["seed"] = op.seed
    if op.grammar:
        extra["structured_outputs"] = StructuredOutputsParams(grammar=op.grammar)
    return SamplingParams(
        max_tokens=limit,
        temperature=op.temperature,
        logprobs=op.top_logprobs,
        min_tokens=min(op.min_tokens, limit),
        logit_bias=op.logit_bias or None,
        output_kind=RequestOutputKind.DELTA,
        detokenize=False,
        skip_special_tokens=False,
        **extra,
    )


def score_params(*, use_cache: bool) -> Any:
    """Prompt log-probs only. vLLM turns the prefix cache off for them unless told; with it
    on, entries for cached positions are garbage that must not be decoded (detokenize off)."""
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        prompt_logprobs=0,
        detokenize=False,
        skip_reading_prefix_cache=not use_cache,
    )


def on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return False


def _gpus_for(path: Path) -> int:
    """Tensor parallelism over every GPU of the machine that the model's heads divide by:
    a model too large for one GPU then fits, and a small one still runs."""
    import torch
    from transformers import AutoConfig

    gpus = max(torch.cuda.device_count(), 1)
    heads = getattr(AutoConfig.from_pretrained(str(path)), "num_attention_heads", 1) or 1
    return max(n for n in range(1, gpus + 1) if heads % n == 0 and gpus % n == 0)
