"""Which precision a model loads at, and the lower-precision copies of its weights that
one-token decode steps may run at on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UnknownDtype

if TYPE_CHECKING:
    import torch

__all__ = [
    "BFLOAT16_COPY_MAX_PARAMS",
    "MIXED_PRECISION_MAX_PARAMS",
    "choose_decode_dtypes",
    "copy_at",
    "native_bfloat16",
    "resolve_dtype",
]

MIXED_PRECISION_MAX_PARAMS = 2_000_000_000
BFLOAT16_COPY_MAX_PARAMS = 1_000_000_000


def choose_decode_dtypes(
    model: torch.nn.Module, dtype: str, device: torch.device
) -> tuple[Any, ...]:
    """On CPU, one-token decode steps are memory-bound: an fp16 copy of the weights halves the
    bytes read per token (about 2.7x faster for one stream here), while multi-token passes
    (prompts, scoring) stay in fp32. fp16 matmuls are emulated on most CPUs, though, and lose
    to fp32 once a batch has many rows; where the CPU multiplies bf16 natively (AVX512-BF16,
    AMX) a bf16 copy beats both for batches (1.5x fp32 at 16 rows here). The decode batch
    times the copies and picks per batch size. Only for `auto`, and models small enough."""
    import torch

    if dtype != "auto" or device.type != "cpu":
        return ()
    params = sum(p.numel() for p in model.parameters())
    if params > MIXED_PRECISION_MAX_PARAMS:
        return ()
    if params <= BFLOAT16_COPY_MAX_PARAMS and native_bfloat16():
        return (torch.float16, torch.bfloat16)
    return (torch.float16,)


def copy_at(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    import copy

    import torch

    # the memo hands deepcopy the converted weights directly, so the fp32 weights are never
    # cloned (one Parameter object per tensor keeps tied weights tied)
    converted = {
        id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
        for p in model.parameters()
    }
    decode = copy.deepcopy(model, memo=converted).to(dtype)
    for name, buffer in model.named_buffers():  # rotary frequencies lose precision in 16 bits
        owner, _, attr = name.rpartition(".")
        setattr(decode.get_submodule(owner), attr, buffer)
    return decode


def native_bfloat16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (Linux: from /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' means fp32 on CPU (fp16 matmuls are slow there) and fp16 on CUDA."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise UnknownDtype(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(table)}")
    return table[dtype]
