"""What goes wrong when a model is named, converted or loaded."""

from __future__ import annotations

from cogql.errors import ModelError
from cogql.model_names import ModelNotFound

__all__ = ["ConversionError", "ModelNotFound", "ModelOptionError", "UnknownDtype"]


class ConversionError(ModelError):
    """A GGUF file could not be converted (unsupported tokenizer or architecture, bad file)."""


class UnknownDtype(ModelError, ValueError):
    """`dtype=` named something other than auto / float32 / float16 / bfloat16."""


class ModelOptionError(ModelError, ValueError):
    """An option the model cannot take (a misspelt name, a value of the wrong kind)."""
