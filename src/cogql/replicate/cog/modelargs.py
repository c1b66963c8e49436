"""Model arguments: the `config.*` table of a model in config.toml, written to the project's
config.json by the build and turned into `open_engine` arguments by the predictor.

LMQL copies this table verbatim into `from_pretrained`, which breaks on current transformers
(`load_in_8bit` is no longer a keyword there, and LMQL passed it next to a quantization_config).
cogql checks the keys it knows at build time, so a typo fails on the user's machine instead of
in a container on Replicate, and translates them in one place at load time.

config.json also carries the engine choice, under two keys no model argument may have:
`engine` ("vllm"; absent means cogql's engine, as in projects built before there was a choice)
and `vllm` (vLLM's engine arguments). On vLLM only the dtype and trust_remote_code of `config.*`
mean something; the rest are from_pretrained's and are refused at build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...engine.choice import DEFAULT_ENGINE, ENGINES
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


ENGINE_KEY, VLLM_KEY = "engine", "vllm"  # config.json's engine choice, beside the arguments
VLLM_MODEL_ARGS = ("torch_dtype", "dtype", "trust_remote_code")  # the config.* vLLM reads
QUANTIZATION_KEYS = ("load_in_8bit", "load_in_4bit", *BNB_KEYS)


class ModelArgsIssue(DeployError, ValueError):
    """One bad `config.*` (or `vllm.*`) entry: which key, what is wrong, and the fix."""

    def __init__(self, key: str, problem: str, fix: str, table: str = "config") -> None:
        super().__init__(f"{table}.{key}: {problem} (fix: {fix})")
        self.key, self.problem, self.fix = key, problem, fix


def check_model_args(
    args: dict[str, Any], *, gpu: bool, engine: str = DEFAULT_ENGINE
) -> list[ModelArgsIssue]:
    """Every problem with a `config` table. On cogql's engine unknown keys pass through to
    from_pretrained; on vLLM, which reads no from_pretrained arguments, they are refused."""
    issues = [
        ModelArgsIssue(
            key,
            "the engine choice is not a model argument",
            f"write {key} = ... in the model's table itself, not under config",
        )
        for key in (ENGINE_KEY, VLLM_KEY)
        if key in args
    ]
    if engine == "vllm":
        read = (*VLLM_MODEL_ARGS, *REJECTED)  # REJECTED keys get their own fix
        strays = [k for k in args if k not in (*read, ENGINE_KEY, VLLM_KEY)]
        kept = {k: v for k, v in args.items() if k in read}
        return issues + [_not_for_vllm(k) for k in strays] + _value_issues(kept)
    return issues + _value_issues(args) + _quantization_issues(args, gpu=gpu)


def _not_for_vllm(key: str) -> ModelArgsIssue:
    if key in QUANTIZATION_KEYS:
        return ModelArgsIssue(
            key,
            "bitsandbytes loading is cogql's engine's; vLLM does not read it",
            "remove it; on vLLM use a pre-quantized checkpoint (AWQ, GPTQ, FP8), which vLLM "
            'detects, or vllm.quantization = "fp8"',
        )
    if key == "use_safetensors":
        return ModelArgsIssue(key, "vLLM reads safetensors whenever the checkpoints have them",
                              "remove it")  # fmt: skip
    return ModelArgsIssue(
        key,
        "a from_pretrained argument, which vLLM does not read",
        "vLLM's engine arguments go under vllm.* (e.g. vllm.max_model_len = 4096)",
    )


def _value_issues(args: dict[str, Any]) -> list[ModelArgsIssue]:
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
    return issues


def _quantization_issues(args: dict[str, Any], *, gpu: bool) -> list[ModelArgsIssue]:
    issues: list[ModelArgsIssue] = []
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


@dataclass(frozen=True)
class EngineSpec:
    """How the predictor opens its model: `open_engine(checkpoints, engine=engine,
    dtype=dtype, **options)`, options being from_pretrained's (cogql) or vLLM's engine
    arguments."""

    engine: str
    dtype: str
    options: dict[str, Any]


def engine_spec(args: dict[str, Any]) -> EngineSpec:
    """config.json → the engine and its arguments; a ModelArgsIssue when it names an engine
    this cogql does not have."""
    kwargs = dict(args)
    engine = kwargs.pop(ENGINE_KEY, DEFAULT_ENGINE)
    options = kwargs.pop(VLLM_KEY, {})
    if engine not in ENGINES or not isinstance(options, dict):
        key, value = (ENGINE_KEY, engine) if engine not in ENGINES else (VLLM_KEY, options)
        raise ModelArgsIssue(
            key,
            f"{value!r} is not something this cogql can run",
            f"rebuild the project with `cogql replicate build` (engines: {', '.join(ENGINES)})",
            table="config.json",
        )
    if engine == "vllm":
        dtype = str(kwargs.get("torch_dtype") or kwargs.get("dtype") or "auto")
        trust = {k: kwargs[k] for k in ("trust_remote_code",) if k in kwargs}
        return EngineSpec(engine, dtype, {**options, **trust})
    dtype, from_pretrained = load_arguments(kwargs)
    return EngineSpec(engine, dtype, from_pretrained)
