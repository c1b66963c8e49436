"""What the engine calls on a model: the part of Hugging Face's causal-LM interface that the
runner and the decode batch use. The transformers models and `RandomModel` both have it."""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch


class Embeddings(Protocol):
    num_embeddings: int  # rows: ids the model can read


class CausalLM(Protocol):
    config: Any

    @property
    def dtype(self) -> torch.dtype: ...

    def get_input_embeddings(self) -> Embeddings: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def as_causal_lm(model: torch.nn.Module) -> CausalLM:
    """`model` as the causal LM it is. `LoadedModel` types its models as plain Modules, whose
    attributes a type checker sees as `Tensor | Module`; once it types them as `CausalLM`,
    mypy reports this cast as redundant and the helper can go."""
    return cast(CausalLM, model)
