"""What goes wrong when a model is named, converted or loaded."""

from __future__ import annotations

from cogql.model_names import ModelNotFound

__all__ = ["ConversionError", "ModelNotFound", "ModelOptionError", "UnknownDtype"]


class ConversionError(Exception):
    """A GGUF file could not be converted (unsupported tokenizer or architecture, bad file)."""


class UnknownDtype(ValueError):
    """`dtype=` named something other than auto / float32 / float16 / bfloat16."""


class ModelOptionError(ValueError):
    """An option the model cannot take (a misspelt name, a value of the wrong kind)."""
