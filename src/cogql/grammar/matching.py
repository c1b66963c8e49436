"""Token masks from llguidance grammars (numpy only: the engine applies them to its logits in
engine/masks.py, the client side turns them into `logit_bias`).

llguidance computes a next-token bitmask in microseconds; this module turns that bitmask into
a boolean array over the vocabulary with numpy bit unpacking (llguidance's own CPU helper loops
in Python and costs more than a forward pass), so no per-token loop over the vocabulary ever
runs in Python.

Compiling a grammar is another matter: its time grows faster than its size (a 325 KB list of
alternatives took 5 s here, 2.6 MB took minutes before llguidance panicked). So grammars are
capped in size (`MAX_GRAMMAR_BYTES`, checked by the engine before anything runs) and compiled
on worker threads (llguidance drops the GIL meanwhile), never on the engine's thread: a stream
waits for its grammar (at most `GRAMMAR_TIMEOUT_S`) while the others keep decoding. Whatever
llguidance raises, a Rust panic included, becomes a `GrammarError` for that one stream.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import Future
from functools import cached_property
from typing import TYPE_CHECKING

import llguidance
import llguidance.numpy
import numpy as np

from ..errors import QueryError

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer


MAX_GRAMMAR_BYTES = 256 * 1024
GRAMMAR_TIMEOUT_S = 60.0
COMPILE_THREADS = 2


class GrammarError(QueryError, ValueError):
    """A grammar that llguidance rejects or fails on; the message is llguidance's own."""


@contextlib.contextmanager
def _llguidance_errors(doing: str) -> Iterator[None]:
    """llguidance reports a Rust panic as pyo3's PanicException, a BaseException that would
    slip past every `except Exception`: it becomes a GrammarError like any other failure."""
    try:
        yield
    except GrammarError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        raise GrammarError(f"llguidance failed {doing}: {type(e).__name__}: {e}") from e


_ll_tokenizers: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = (
    weakref.WeakKeyDictionary()
)
_ll_lock = threading.Lock()


def _ll_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """Built once per tokenizer (a third of a second for 49k ids), not once per engine: the
    random model gives every seed its own engine over the same tokenizer."""
    with _ll_lock:
        found = _ll_tokenizers.get(tokenizer)
        if found is None:  # what llguidance.hf.from_tokenizer builds, without transformers
            found = _ll_tokenizers[tokenizer] = llguidance.LLTokenizer(
                tokenizer.pieces_json(), eos_token=tokenizer.eos_token_id
            )
        return found


class GrammarCompiler:
    """Builds matchers for one tokenizer (the llguidance tokenizer is built once), now with
    `matcher` or in the background with `submit`."""

    def __init__(self, tokenizer: Tokenizer, *, threads: int = COMPILE_THREADS) -> None:
        self.tokenizer = tokenizer
        self._threads = threads
        self._todo: queue.SimpleQueue[tuple[str, Future[GrammarMatcher]] | None] = (
            queue.SimpleQueue()
        )
        self._workers: list[threading.Thread] = []

    @cached_property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        return _ll_tokenizer(self.tokenizer)

    def matcher(self, grammar: str) -> GrammarMatcher:
        text = grammar if "start" in grammar else f"start: {grammar}"
        with _llguidance_errors("to compile the grammar"):
            serialized = llguidance.LLMatcher.grammar_from_lark(text)
            m = llguidance.LLMatcher(self.ll_tokenizer, serialized, log_level=0)
            if m.is_error():
                raise GrammarError(m.get_error())
        return GrammarMatcher(m, self.ll_tokenizer.vocab_size)

    def submit(self, grammar: str) -> Future[GrammarMatcher]:
        """Compile on a worker thread; the future holds the matcher or the GrammarError."""
        future: Future[GrammarMatcher] = Future()
        self._todo.put((grammar, future))
        if len(self._workers) < self._threads:
            # daemon threads: a compile still running must not hold up the interpreter's exit
            worker = threading.Thread(target=self._work, name="cogql-grammar", daemon=True)
            self._workers.append(worker)
            worker.start()
        return future

    def close(self) -> None:
        """Let the worker threads end once they finish what they compile."""
        for _ in self._workers:
            self._todo.put(None)
        self._workers = []

    def _work(self) -> None:
        while (item := self._todo.get()) is not None:
            grammar, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                with _llguidance_errors("to compile the grammar"):
                    matcher = self.matcher(grammar)
            except Exception as e:  # a GrammarError, or a failure to build the tokenizer
                future.set_exception(e)
            else:
                future.set_result(matcher)


class GrammarMatcher:
    """One grammar's progress over one generation."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._m = matcher
        self._vocab = vocab_size
        words = (vocab_size + 31) // 32
        self._bitmask = np.zeros((1, words), dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """Boolean array over the tokenizer's vocabulary, freshly allocated (callers may
        change it)."""
        with _llguidance_errors("to compute the token mask"):
            llguidance.numpy.fill_next_token_bitmask(self._m, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[: self._vocab].view(np.bool_)

    def consume(self, tokens: list[int]) -> None:
        with _llguidance_errors("to advance the grammar"):
            ok = self._m.consume_tokens(tokens)
        if not ok:
            raise GrammarError(self._m.get_error() or f"tokens {tokens} violate the grammar")

    def forced_tokens(self) -> list[int]:
        with _llguidance_errors("to compute forced tokens"):
            return list(self._m.compute_ff_tokens())

    def is_accepting(self) -> bool:
        return self._m.is_accepting()

    def is_stopped(self) -> bool:
        return self._m.is_stopped()
