"""vLLM's engine arguments from a model's `vllm` table in config.toml, checked at build time.

Names are checked against vLLM's own list (`AsyncEngineArgs`) when vLLM is importable where
the build runs, so a misspelt `max_model_len` fails there rather than in Replicate's container;
without vLLM (a build for GPUs on a laptop) the names go through and vLLM checks them when the
predictor starts. The arguments cogql sets itself are refused whatever vLLM is installed.
"""

from __future__ import annotations

import datetime
import difflib
from typing import Any

from ...engine.choice import vllm_argument_names
from .modelargs import ModelArgsIssue

TABLE = "vllm"
SET_BY_COGQL = {
    "model": "cogql sets it: the project's checkpoints/ folder",
    "tokenizer": "cogql sets it: the tokenizer in checkpoints/ (tokenizer = ... in the model's "
    "table brings one from elsewhere)",
    "dtype": "set config.torch_dtype instead: one dtype setting for both engines",
    "trust_remote_code": "set config.trust_remote_code instead: one setting for both engines",
    "revision": "set huggingface.version instead: the build links that revision",
    "tokenizer_revision": "set huggingface.version instead: the build links that revision",
}


def normalized(options: dict[str, Any]) -> dict[str, Any]:
    """Names as vLLM spells them (`max-model-len`, its CLI's spelling, → `max_model_len`)."""
    return {key.replace("-", "_"): value for key, value in options.items()}


def check_vllm_options(options: dict[str, Any]) -> list[ModelArgsIssue]:
    """Every problem with a `vllm` table, keys as written."""
    issues = []
    known = vllm_argument_names() if options else None
    for key, value in options.items():
        name = key.replace("-", "_")
        if name in SET_BY_COGQL:
            issues.append(ModelArgsIssue(key, "not settable here", SET_BY_COGQL[name], TABLE))
        elif known is not None and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            issues.append(
                ModelArgsIssue(
                    key,
                    "not one of vLLM's engine arguments",
                    f"{hint}see vLLM's engine arguments (AsyncEngineArgs)",
                    TABLE,
                )
            )
        elif not _json_value(value):
            issues.append(
                ModelArgsIssue(
                    key,
                    f"a {type(value).__name__} cannot be passed to vLLM",
                    "use a string, number, true/false, array or table",
                    TABLE,
                )
            )
    return issues


def _json_value(value: Any) -> bool:
    """TOML's dates and times have no JSON form (config.json carries the options)."""
    if isinstance(value, datetime.date | datetime.time):
        return False
    if isinstance(value, list):
        return all(_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(_json_value(v) for v in value.values())
    return True
