"""Loading a named model (eval mode, paired with its tokenizer), and LMQL's weightless `random`
model over a real tokenizer (see engine/random_model.py)."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogql.tokenizer import Tokenizer, load_tokenizer

from .errors import ModelOptionError
from .names import (
    EMBEDDED_MODEL,
    RANDOM_MODEL,
    embedded_path,
    is_random_model,
    model_label,
    resolve_model_path,
)
from .precision import choose_decode_dtypes, copy_at, resolve_dtype
from .progress import no_progress_bars

if TYPE_CHECKING:
    import torch

__all__ = ["LoadedModel", "collector_paused", "load_model", "load_random_model"]

# --------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A model ready for inference, with the tokenizer that belongs to it.

    `decode_dtypes` are the lower precisions that one-token decode steps may run at, on copies
    of the weights (see `choose_decode_dtypes`); the first is the fastest for a single stream."""

    name: str
    path: Path
    model: torch.nn.Module
    tokenizer: Tokenizer
    dtype: torch.dtype
    device: torch.device
    decode_dtypes: tuple[torch.dtype, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)  # MODEL_INFO fields the model sets itself
    _copies: dict[Any, Any] = field(default_factory=dict, repr=False)

    def decode_copy(self, dtype: torch.dtype) -> torch.nn.Module:
        """The weights at `dtype`, built on first use: a bf16 copy costs 0.4 s, which a
        process that never batches streams should not pay."""
        copy = self._copies.get(dtype)
        if copy is None:
            copy = self._copies[dtype] = copy_at(self.model, dtype)
        return copy

    @property
    def decode_model(self) -> torch.nn.Module | None:
        return self.decode_copy(self.decode_dtypes[0]) if self.decode_dtypes else None

    @property
    def decode_models(self) -> tuple[torch.nn.Module, ...]:
        return tuple(self.decode_copy(d) for d in self.decode_dtypes)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Loading (and importing torch and transformers) creates hundreds of thousands of
    long-lived objects, modules and parameters; the cyclic collector would rescan them again
    and again and find nothing (~0.9 s of a fresh process's 3.5 s start)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_model(
    name: str | None, *, dtype: str = "auto", device: str = "cpu", **model_kwargs: Any
) -> LoadedModel:
    """Resolve, load (eval mode) and pair a model with its tokenizer; extra keyword arguments go
    to `AutoModelForCausalLM.from_pretrained` (for `random`: see `load_random_model`)."""
    if is_random_model(name):
        return load_random_model(dtype=dtype, device=device, **model_kwargs)
    with collector_paused():
        return _load(name, dtype, device, model_kwargs)


def _load(name: str | None, dtype: str, device: str, model_kwargs: dict[str, Any]) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    target = torch.device(device)
    torch_dtype = resolve_dtype(dtype, target)
    if target.type != "cpu":
        model_kwargs.setdefault("device_map", str(target))
    with no_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **model_kwargs)
    if "device_map" not in model_kwargs:
        model.to(target)  # type: ignore[arg-type]  # transformers types its `to` wrapper wrongly
    model.eval()
    model.requires_grad_(False)
    loaded = LoadedModel(
        name=model_label(name),
        path=path,
        model=model,
        tokenizer=load_tokenizer(path),
        dtype=torch_dtype,
        device=target,
        decode_dtypes=choose_decode_dtypes(model, dtype, target),
    )
    loaded.decode_model  # noqa: B018 - every stream decodes on it: built now, not mid-query
    return loaded


# --------------------------------------------------------------------------- the random model


def _tokenizer_label(tokenizer: str | os.PathLike[str] | None) -> str:
    """How MODEL_INFO names a tokenizer: a hub id as given, a folder by its own name (a local
    absolute path says nothing to a remote client), the embedded one by the model's name."""
    if tokenizer is None:
        return EMBEDDED_MODEL
    path = Path(os.fspath(tokenizer).removeprefix("local:")).expanduser()
    if path.exists():
        resolved = path.resolve()
        return resolved.parent.name if resolved.name == "tokenizer.json" else resolved.name
    return os.fspath(tokenizer)


def load_random_model(
    *,
    seed: int | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    verbose: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    **unknown: Any,
) -> LoadedModel:
    """LMQL's `random` model: logits drawn from (seed, token sequence) over a real tokenizer (a
    folder with tokenizer.json or a cached hub id; `vocab` is LMQL's name for it; the embedded
    model's tokenizer by default). No weights: it loads in the time its tokenizer takes."""
    import torch

    from ..random_model import RandomConfig, RandomModel

    if unknown:
        raise ModelOptionError(
            f"the random model takes seed=, tokenizer= (or vocab=) and verbose=, not "
            f"{', '.join(sorted(unknown))}"
        )
    if seed is None:
        seed = 0  # LMQL's default
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ModelOptionError(f"the random model's seed must be an integer, got {seed!r}")
    if tokenizer is not None and vocab is not None and os.fspath(tokenizer) != os.fspath(vocab):
        raise ModelOptionError(
            f"tokenizer={tokenizer!r} and vocab={vocab!r} disagree (vocab is LMQL's name for "
            "the random model's tokenizer): give one of them"
        )
    if dtype not in ("auto", "float32"):
        raise ModelOptionError(f"the random model computes in float32; dtype={dtype!r} is not")
    source = tokenizer if tokenizer is not None else vocab
    tok = load_tokenizer(source if source is not None else embedded_path())
    label = _tokenizer_label(source)
    if verbose:
        print(f"['random' model using seed {seed} and tokenizer {label}]", file=sys.stderr)
    config = RandomConfig(
        seed=seed,
        vocab_size=tok.vocab_size,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LoadedModel(
        name=RANDOM_MODEL,
        path=Path(tok.name),
        model=RandomModel(config, eos_token_id=tok.eos_token_id),
        tokenizer=tok,
        dtype=torch.float32,
        device=torch.device(device),
        info={
            "model_type": RANDOM_MODEL,
            "constructor": f"random(seed={seed}, tokenizer={label!r})",
            "seed": seed,
            "tokenizer_name": label,
        },
    )
