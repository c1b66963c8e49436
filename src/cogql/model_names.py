"""Model names as both sides read them: the embedded default, LMQL's `random` and
`llama.cpp:` spellings, and the error for a name that finds no model.

The client side names models and catches ModelNotFound without loading anything; resolving a
name to weights on disk (GGUF conversion included) and loading them is the engine's work
(engine/models.py), which imports these names from here.
"""

from __future__ import annotations

import os

from .errors import ModelError

__all__ = [
    "EMBEDDED_ALIASES",
    "EMBEDDED_MODEL",
    "LLAMA_CPP_PREFIX",
    "RANDOM_MODEL",
    "ModelNotFound",
    "is_random_model",
    "strip_local",
]

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {"", "default", "smollm2", EMBEDDED_MODEL.lower()}  # names of it, lowercased
RANDOM_MODEL = "random"
LLAMA_CPP_PREFIX = "llama.cpp:"


class ModelNotFound(ModelError):
    """No model under that name; the message lists every place looked at and how to fix it."""


def strip_local(name: str | os.PathLike[str] | None) -> str:
    """The name without LMQL's `local:` prefix (which asks for an in-process model)."""
    raw = "" if name is None else os.fspath(name).strip()
    return raw[len("local:") :].strip() if raw.startswith("local:") else raw


def is_random_model(name: str | os.PathLike[str] | None) -> bool:
    """`random` or `local:random`: LMQL's name for its weightless test model."""
    return strip_local(name) == RANDOM_MODEL
