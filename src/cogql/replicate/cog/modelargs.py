"""Model arguments: the `config.*` table of a model in config.toml, written to the project's
config.json by the build and turned into `load_model` arguments by the predictor.

LMQL copies this table verbatim into `from_pretrained`, which breaks on current transformers
(`load_in_8bit` is no longer a keyword there, and LMQL passed it next to a quantization_config).
cogql checks the keys it knows at build time, so a typo fails on the user's machine instead of
in a container on Replicate, and translates them in one place at load time.
"""

from __future__ import annotations

from typing import Any

from ...errors import DeployError

DTYPES = ("auto", "float32", "float16", "bfloat16")
DTYPE_KEYS = ("torch_dtype", "dtype")  # LMQL's name and current transformers' name
BOOL_KEYS = (
    "load_in_8bit",
    "load_in_4bit",
    "use_safetensors",
    "trust_remote_code",
    "bnb_4bit_use_double_quant",
)
BNB_KEYS = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant")
BNB_QUANT_TYPES = ("nf4", "fp4")
# keys LMQL's configs may carry that mean nothing (or something else) in cogql
REJECTED = {
    "batch_size": "cogql's engine batches concurrent streams itself; remove this key",
    "revision": "set huggingface.version instead (the build links that revision)",
    "quantization_config": "use config.load_in_8bit = true or config.load_in_4bit = true",
    "device": "cogql loads on the GPU when gpu = true (the default), else on the CPU",
    "cuda": "cogql loads on the GPU when gpu = true (the default), else on the CPU",
}


class ModelArgsIssue(DeployError, ValueError):
    """One bad `config.*` entry: which key, what is wrong, and the fix."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"config.{key}: {problem} (fix: {fix})")
        self.key, self.problem, self.fix = key, problem, fix


def check_model_args(args: dict[str, Any], *, gpu: bool) -> list[ModelArgsIssue]:
    """Every problem with a `config` table; unknown keys pass through to from_pretrained."""
    issues: list[ModelArgsIssue] = []
    for key, value in args.items():
        if key in REJECTED:
            issues.append(ModelArgsIssue(key, "not a cogql model argument", REJECTED[key]))
        elif key in BOOL_KEYS and not isinstance(value, bool):
            issues.append(
                ModelArgsIssue(key, f"must be true or false, not {value!r}", f"{key} = true")
            )
        elif key in (*DTYPE_KEYS, "bnb_4bit_compute_dtype") and value not in (
            DTYPES if key in DTYPE_KEYS else DTYPES[1:]
        ):
            allowed = ", ".join(f'"{d}"' for d in (DTYPES if key in DTYPE_KEYS else DTYPES[1:]))
            issues.append(ModelArgsIssue(key, f"unknown dtype {value!r}", f"use one of {allowed}"))
        elif key == "bnb_4bit_quant_type" and value not in BNB_QUANT_TYPES:
            issues.append(
                ModelArgsIssue(key, f"unknown 4-bit type {value!r}", 'use "nf4" or "fp4"')
            )
    if all(k in args for k in DTYPE_KEYS):
        issues.append(ModelArgsIssue("dtype", "set together with torch_dtype", "keep only one"))
    if args.get("load_in_8bit") is True and args.get("load_in_4bit") is True:
        issues.append(
            ModelArgsIssue(
                "load_in_4bit", "set together with load_in_8bit", "keep only one of them"
            )
        )
    quantized = args.get("load_in_8bit") is True or args.get("load_in_4bit") is True
    if quantized and not gpu:
        issues.append(
            ModelArgsIssue(
                "load_in_8bit" if args.get("load_in_8bit") is True else "load_in_4bit",
                "bitsandbytes quantization needs a GPU, but gpu = false",
                "set gpu = true, or drop the load_in_* key",
            )
        )
    stray = [k for k in BNB_KEYS if k in args and args.get("load_in_4bit") is not True]
    issues += [
        ModelArgsIssue(k, "only used with load_in_4bit = true", "remove it or set load_in_4bit")
        for k in stray
    ]
    return issues


def is_quantized(args: dict[str, Any]) -> bool:
    return args.get("load_in_8bit") is True or args.get("load_in_4bit") is True


def load_arguments(args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """config.json → (dtype for `load_model`, keyword arguments for from_pretrained).

    Quantization becomes a BitsAndBytesConfig and the `load_in_*` keys are dropped (passing
    both is the error that made LMQL's 4-bit models hang on newer transformers)."""
    kwargs = dict(args)
    dtype = str(kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", "auto"))
    kwargs.pop("dtype", None)
    bnb = {k: kwargs.pop(k) for k in BNB_KEYS if k in kwargs}
    in_8bit = bool(kwargs.pop("load_in_8bit", False))
    in_4bit = bool(kwargs.pop("load_in_4bit", False))
    if in_8bit or in_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        if in_4bit:
            compute = bnb.get("bnb_4bit_compute_dtype") or (dtype if dtype != "auto" else "float16")
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_compute_dtype=getattr(torch, compute),
                bnb_4bit_quant_type=bnb.get("bnb_4bit_quant_type", "nf4"),
                bnb_4bit_use_double_quant=bnb.get("bnb_4bit_use_double_quant", True),
            )
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    return dtype, kwargs
