"""One llama.cpp context over a GGUF file, as llama.cpp's engine (engine/llama_engine.py) uses
it: the tokens its KV cache holds, and more tokens decoded after the longest prefix it shares
with what is asked, with logits read for the positions the caller needs and no others.

llama-cpp-python's `Llama` loads the model and makes the context; decoding goes through its
low-level binding of llama.h (`llama_decode`, `llama_get_logits_ith`, `llama_memory_seq_rm`),
because `Llama.eval` keeps logits either for every position of the context (`logits_all`, a
float32 row of the vocabulary per position: 200 KB each for SmolLM2) or for none at all.
Only the engine's thread touches a context.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..grammar import common_prefix
from .models import ModelOptionError

__all__ = ["DEFAULT_N_CTX", "LlamaContext", "LlamaDecodeError", "llama_argument_names"]

# the context's default size, below a model's trained one when that is larger: llama.cpp
# allocates the whole KV cache up front (a 7B model's 32k context would take 16 GiB)
DEFAULT_N_CTX = 4096
_OURS = {"model_path", "logits_all", "verbose"}  # what the engine sets itself


class LlamaDecodeError(ModelError, RuntimeError):
    """llama.cpp could not compute a batch (its KV cache is full, or it failed)."""


def llama_argument_names() -> frozenset[str]:
    """The arguments of llama-cpp-python's `Llama` a user may give (n_ctx, n_threads, ...)."""
    from llama_cpp import Llama

    names = inspect.signature(Llama.__init__).parameters
    return frozenset(n for n in names if n not in _OURS | {"self", "kwargs"})


class LlamaContext:
    """A loaded GGUF and its one context (sequence 0)."""

    def __init__(self, path: Path, *, trained_context: int | None, options: dict[str, Any]):
        from llama_cpp import Llama

        unknown = sorted(set(options) - llama_argument_names())
        if unknown:
            raise ModelOptionError(
                f"not arguments of llama-cpp-python's Llama: {', '.join(unknown)} (cogql passes "
                "Llama's own arguments through, e.g. n_ctx, n_threads, n_batch)"
            )
        # llama-cpp-python's default for decoding, for prompts too: ggml's threads spin while
        # they wait, and one per core of a 2-core machine ran 3-7x slower beside other work
        threads = max(len(os.sched_getaffinity(0)) // 2, 1)
        settings: dict[str, Any] = {
            "n_ctx": min(trained_context or DEFAULT_N_CTX, DEFAULT_N_CTX),
            "n_threads": threads,
            "n_threads_batch": threads,
            **options,
        }
        self.llama = Llama(model_path=str(path), logits_all=False, verbose=False, **settings)
        self.n_ctx: int = self.llama.n_ctx()
        self.n_batch: int = self.llama.n_batch
        self.n_vocab: int = self.llama.n_vocab()
        self.ids: list[int] = []  # what the KV cache holds, position by position
        self._lib = _binding()
        self._batch = self._lib.llama_batch_init(self.n_batch, 0, 1)
        self._memory = self._lib.llama_get_memory(self.llama.ctx)

    def logits(self, ids: list[int], first: int) -> np.ndarray:
        """The logits (float32 rows) after each of ids[first:], each given what precedes it;
        the common prefix with what the context holds is kept, not computed again."""
        if not 0 <= first < len(ids):
            raise ValueError(f"no position {first} among {len(ids)} tokens")
        keep = min(common_prefix(self.ids, ids), first)
        self._forget_from(keep)
        return self._decode(ids[keep:], want_from=first)

    def extend(self, tokens: list[int]) -> np.ndarray:
        """The logits after `tokens`, appended to what the context holds."""
        return self._decode(tokens, want_from=len(self.ids) + len(tokens) - 1)[-1]

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self.llama.close()

    def _forget_from(self, position: int) -> None:
        if position < len(self.ids):
            self._lib.llama_memory_seq_rm(self._memory, 0, position, -1)
            del self.ids[position:]

    def _decode(self, tokens: list[int], want_from: int) -> np.ndarray:
        """Decode `tokens` after what the context holds, n_batch at a time; the logits of the
        positions from `want_from` on."""
        if len(self.ids) + len(tokens) > self.n_ctx:
            raise LlamaDecodeError(
                f"{len(self.ids) + len(tokens)} tokens exceed llama.cpp's context of "
                f"{self.n_ctx} (raise it with the n_ctx option)"
            )
        rows: list[np.ndarray] = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            base = len(self.ids)
            wanted = self._fill(chunk, base, want_from)
            rc = self._lib.llama_decode(self.llama.ctx, self._batch)
            if rc != 0:
                self._lib.llama_memory_seq_rm(self._memory, 0, base, -1)
                raise LlamaDecodeError(f"llama_decode failed (status {rc})")
            self.ids.extend(chunk)
            for i in wanted:
                pointer = self._lib.llama_get_logits_ith(self.llama.ctx, i)
                rows.append(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())
        return np.stack(rows) if rows else np.empty((0, self.n_vocab), dtype=np.float32)

    def _fill(self, chunk: list[int], base: int, want_from: int) -> list[int]:
        """Put `chunk` (at positions from `base`) into the batch; the indices whose logits
        llama.cpp is to keep."""
        batch = self._batch
        batch.n_tokens = len(chunk)
        wanted = []
        for i, token in enumerate(chunk):
            batch.token[i] = token
            batch.pos[i] = base + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            keep = base + i >= want_from
            batch.logits[i] = keep
            if keep:
                wanted.append(i)
        return wanted


def _binding() -> Any:
    import llama_cpp

    return llama_cpp
