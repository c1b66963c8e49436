"""llama.cpp as the engine behind LMTP: a GGUF file runs as it is, quantised, through
llama-cpp-python (`pip install 'cogql[llamacpp]'`), where cogql's engine would first convert
it into float32 safetensors (98 MB → 538 MB for the embedded SmolLM2, tens of GB for a 7B).

One worker thread owns the llama.cpp context (engine/llama_context.py) and runs the ops one at
a time, in the order they came: a batch is run op by op, not decoded together. Each op keeps
the longest prefix it shares with the one before in llama.cpp's KV cache, so the ops of a
query (a prompt, its next hole, the SCOREs of a `distribution`) compute only what is new.

The token rules are cogql's engine's own: each step goes through its `TokenStepper` (logit
bias, no EOS before min_tokens, the grammar's mask from cogql's matcher, forced tokens,
greedy or seeded sampling, log-probs as the log_softmax of the processed logits, stop strings
from min_tokens on), over the logits llama.cpp computed. A SCORE reads llama.cpp's logits for
the scored positions. Between tokens the thread accepts new ops (MODEL_INFO and refusals are
answered at once) and drops a cancelled stream.
"""

from __future__ import annotations

import atexit
import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from ..extras import installed_version
from ..grammar import GRAMMAR_TIMEOUT_S, MAX_GRAMMAR_BYTES, GrammarCompiler, GrammarMatcher
from ..lmtp.messages import (
    ENGINE_CAPABILITIES,
    TOKENIZER,
    ErrorEvent,
    Generate,
    InfoEvent,
    ModelInfo,
    Op,
    Score,
    TokenEvent,
    tokenizer_to_wire,
)
from ..tokenizer import load_tokenizer
from .checks import generate_error, grammar_too_slow, no_leader, op_problem, room, too_long
from .jobs import GenerateStream
from .llama_context import LlamaContext
from .models import gguf_context_length, gguf_file, gguf_tokenizer_path, model_label
from .protocol import EngineStopped, StreamHandle
from .sink import Sink, tell
from .stepper import TokenStepper

__all__ = ["LlamaCppEngine"]

log = logging.getLogger("cogql.engine.llama_cpp")

_GRAMMAR_POLL_S = 0.05  # how often a stream waiting for its grammar looks for a cancel


@dataclass
class _Work:
    ops: list[Op]
    sink: Sink
    handles: list[StreamHandle]


@dataclass(eq=False)
class _ScoreJob:
    op: Score
    sink: Sink
    handle: StreamHandle


Job = GenerateStream | _ScoreJob
Follower = tuple[Score, StreamHandle] | GenerateStream


class _Closing(EngineStopped):
    """close() was called while an op ran."""


class LlamaCppEngine:
    """An `LMTPEngine` on llama.cpp for one GGUF file. `options` are llama-cpp-python's `Llama`
    arguments (n_ctx, n_threads, ...); loading happens on the engine's thread and its
    exceptions are raised here."""

    def __init__(
        self,
        name: str | None,
        *,
        options: dict[str, Any] | None = None,
        max_grammar_bytes: int = MAX_GRAMMAR_BYTES,
        grammar_timeout_s: float = GRAMMAR_TIMEOUT_S,
    ) -> None:
        self.path = gguf_file(name)
        self.name = model_label(name)
        self.tokenizer = load_tokenizer(gguf_tokenizer_path(self.path))
        self.max_grammar_bytes = max_grammar_bytes
        self.grammar_timeout_s = grammar_timeout_s
        self.grammars = GrammarCompiler(self.tokenizer)
        self._inbox: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._ready: collections.deque[Job] = collections.deque()
        self._current: Job | None = None
        self._closing = False
        self._lock = threading.Lock()  # orders submit() against the thread's end
        self._stopped: str | None = None
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(options or {}, started), name="cogql-llama.cpp", daemon=True
        )
        self._thread.start()
        started.result()
        atexit.register(self.close)

    def _setup(self, options: dict[str, Any]) -> None:
        self.context = LlamaContext(
            self.path, trained_context=gguf_context_length(self.path), options=options
        )
        self.context_length: int | None = self.context.n_ctx
        self.vocab_size = min(self.context.n_vocab, self.tokenizer.vocab_size)
        self.eos_ids = self._eos_ids()
        self.eos_token_id = (
            self.tokenizer.eos_token_id
            if self.tokenizer.eos_token_id is not None
            else min(self.eos_ids, default=0)
        )
        self.stepper = TokenStepper(
            self.eos_ids, self.eos_token_id, self.tokenizer.all_token_bytes()
        )

    def _eos_ids(self) -> frozenset[int]:
        """The tokenizer's EOS and the GGUF's end-of-sequence and end-of-turn tokens."""
        meta = self.context.llama.metadata
        ids = {self.tokenizer.eos_token_id}
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
            if key in meta:
                ids.add(int(meta[key]))
        return frozenset(i for i in ids if i is not None)

    # ---- the LMTPEngine surface ---------------------------------------------------------

    def model_info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "model_type": "llama.cpp",
            "constructor": f"llama_cpp.Llama(model_path='{self.path.name}')",  # no server paths
            "llama_cpp_python": version("llama-cpp-python"),
            "cogql": installed_version("cogql") or "dev",
            "engine": "llama.cpp",
            "dtype": self.quantisation,
            "capabilities": list(ENGINE_CAPABILITIES),
            "bos_token_id": self.tokenizer.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "vocab_size": self.tokenizer.vocab_size,
        }

    @property
    def quantisation(self) -> str:
        """The GGUF's weight type as llama.cpp names it ('Q4_1', 'Q8_0', 'F16')."""
        return _model_description(self.context).rsplit(" ", 1)[-1]

    def describe(self) -> str:
        return (
            f"llama.cpp (llama-cpp-python {version('llama-cpp-python')}), cpu, {self.quantisation}"
        )

    def submit(self, ops: list[Op], sink: Sink) -> list[StreamHandle]:
        handles = [StreamHandle() for _ in ops]
        with self._lock:
            if self._stopped is None:
                self._inbox.put(_Work(list(ops), sink, handles))
                return handles
        for op in ops:
            tell(sink, ErrorEvent(op.stream_id, self._stopped))
        return handles

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._stopped is None

    @property
    def stopped(self) -> str | None:
        return self._stopped

    def close(self) -> None:
        """Stop the thread (ops it holds are answered with an error) and free llama.cpp's
        memory; safe to call twice."""
        atexit.unregister(self.close)
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout=30)

    # ---- the thread ---------------------------------------------------------------------

    def _run(self, options: dict[str, Any], started: Future[None]) -> None:
        try:
            self._setup(options)
        except BaseException as e:
            started.set_exception(e)
            return
        started.set_result(None)
        why = "the engine was closed"
        try:
            self._serve()
        except _Closing:
            pass
        except BaseException as e:
            log.exception("the llama.cpp engine's thread died")
            why = f"the engine stopped after an internal error ({type(e).__name__}: {e})"
        finally:
            self._stop(why)

    def _serve(self) -> None:
        while True:
            self._take(block=not self._ready)
            if self._ready:
                self._current = self._ready.popleft()
                self._run_job(self._current)
                self._current = None

    def _take(self, *, block: bool) -> None:
        """Accept what was submitted (waiting for it when `block`); close() raises _Closing."""
        try:
            work = self._inbox.get(block=block)
        except queue.Empty:
            return
        while True:
            if work is None:
                self._closing = True
                raise _Closing
            self._accept(work)
            try:
                work = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _stop(self, why: str) -> None:
        with self._lock:
            self._stopped = why
        held = [self._current] if self._current is not None else []
        for job in [*held, *self._ready]:
            self._refuse(job, why)
        while True:
            try:
                work = self._inbox.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                for op in work.ops:
                    tell(work.sink, ErrorEvent(op.stream_id, why))
        self.grammars.close()
        if hasattr(self, "context"):
            self.context.close()

    # ---- accepting ops ------------------------------------------------------------------

    def _accept(self, work: _Work) -> None:
        generates: dict[Any, GenerateStream] = {}
        for op, handle in zip(work.ops, work.handles, strict=True):
            try:
                self._accept_op(op, handle, work.sink, generates)
            except Exception as e:  # one op's failure, answered to it alone
                log.exception("could not accept an op")
                tell(work.sink, ErrorEvent(op.stream_id, f"failed to accept the op: {e}"))

    def _accept_op(
        self, op: Op, handle: StreamHandle, sink: Sink, generates: dict[Any, GenerateStream]
    ) -> None:
        problem = op_problem(op, self.vocab_size, self.context_length, self.max_grammar_bytes)
        if problem is not None:
            tell(sink, ErrorEvent(op.stream_id, problem))
            return
        if isinstance(op, ModelInfo):
            info = self.model_info()
            if op.data.get(TOKENIZER) is True:
                info[TOKENIZER] = tokenizer_to_wire(self.tokenizer)
            tell(sink, InfoEvent(op.stream_id, info))
            return
        if isinstance(op, Score):
            job: Job = _ScoreJob(op, sink, handle)
        else:
            job = generates[op.stream_id] = self._stream(op, sink, handle)
        if op.after is None:
            self._ready.append(job)
        elif (leader := generates.get(op.after)) is not None and leader is not job:
            leader.then.append(job if isinstance(job, GenerateStream) else (job.op, handle))
        else:
            self._refuse(job, no_leader(op))

    def _stream(self, op: Generate, sink: Sink, handle: StreamHandle) -> GenerateStream:
        s = GenerateStream(op, sink, handle)
        if op.grammar and op.after is None:
            self._compile(s)
        return s

    def _compile(self, s: GenerateStream) -> None:
        assert s.op.grammar is not None
        s.grammar = self.grammars.submit(s.op.grammar)
        s.grammar_deadline = time.monotonic() + self.grammar_timeout_s

    def _refuse(self, job: Job, why: str) -> None:
        """Answer a job (and whatever follows it) with an error instead of running it."""
        tell(job.sink, ErrorEvent(job.op.stream_id, why))
        if isinstance(job, GenerateStream):
            for then in job.then:
                self._refuse(self._job(then, job.sink), "the GENERATE it follows did not run")

    @staticmethod
    def _job(follower: Follower, sink: Sink) -> Job:
        """A follower as a job: a SCORE waits as (op, handle) and answers to its leader's sink."""
        if isinstance(follower, GenerateStream):
            return follower
        op, handle = follower
        return _ScoreJob(op, sink, handle)

    # ---- running one op -----------------------------------------------------------------

    def _run_job(self, job: Job) -> None:
        if job.handle.cancelled:
            if isinstance(job, GenerateStream):
                self._release_followers(job)
            return
        if isinstance(job, _ScoreJob):
            self._score(job)
            return
        try:
            self._generate(job)
        except _Closing:
            raise
        except Exception as e:  # this stream's failure, not the engine's
            log.exception("GENERATE failed")
            tell(job.sink, ErrorEvent(job.op.stream_id, generate_error(e)))
            job.ended = False
        self._release_followers(job)

    def _generate(self, s: GenerateStream) -> None:
        s.limit = room(s.op, self.context_length)
        self.stepper.start(s)
        if s.grammar is not None:
            if (matcher := self._matcher(s)) is None:
                return
            s.matcher, s.grammar = matcher, None
        logits = None
        if s.limit > 0:
            logits = self._row(self.context.logits(s.op.prompt, len(s.op.prompt) - 1)[-1])
        while True:
            if self.stepper.step_on(s, logits):
                return
            self._take(block=False)  # new ops wait in order; close() ends this stream
            if s.handle.cancelled:
                return
            if s.feed:
                logits = self._row(self.context.extend(s.feed))
                s.feed = []

    def _matcher(self, s: GenerateStream) -> GrammarMatcher | None:
        """The stream's compiled grammar, waited for until its deadline; None (and the stream
        answered) when it is invalid, too slow, or the stream was cancelled meanwhile."""
        future = s.grammar
        assert future is not None
        while not future.done():
            if s.handle.cancelled:
                future.cancel()
                return None
            if time.monotonic() >= s.grammar_deadline:
                future.cancel()
                tell(s.sink, ErrorEvent(s.op.stream_id, grammar_too_slow(self.grammar_timeout_s)))
                return None
            try:
                future.result(timeout=_GRAMMAR_POLL_S)
            except Exception:
                break  # a failed compile: reported below; a timeout: looped
        try:
            return future.result()
        except Exception as e:
            tell(s.sink, ErrorEvent(s.op.stream_id, f"invalid grammar: {e}"))
            return None

    def _row(self, logits: np.ndarray) -> torch.Tensor:
        """One row of llama.cpp's logits as the stepper takes it (the vocabulary that the
        tokenizer and the model share)."""
        return torch.from_numpy(np.ascontiguousarray(logits[: self.vocab_size]))

    def _release_followers(self, s: GenerateStream) -> None:
        """Run what follows `s` next (its prompt then starts with `s`'s, which llama.cpp still
        holds), or refuse it when `s` did not end."""
        if not s.then:
            return
        if not s.ended:
            for then in s.then:
                self._refuse(self._job(then, s.sink), "the GENERATE it follows did not end")
            return
        prefix = s.op.prompt + s.tokens
        chained: list[Job] = []
        for follower in [self._job(then, s.sink) for then in s.then]:
            follower.op = replace(follower.op, prompt=prefix + follower.op.prompt, after=None)
            if (problem := too_long(follower.op, self.context_length)) is not None:
                self._refuse(follower, problem)
                continue
            if isinstance(follower, GenerateStream) and follower.op.grammar:
                self._compile(follower)
            chained.append(follower)
        self._ready.extendleft(reversed(chained))

    def _score(self, job: _ScoreJob) -> None:
        op = job.op
        try:
            rows = self.context.logits(op.prompt + op.scored, len(op.prompt) - 1)
            logprobs = _log_softmax(rows[:, : self.vocab_size])
        except Exception as e:
            log.exception("SCORE failed")
            tell(job.sink, ErrorEvent(op.stream_id, f"failed to score tokens '{e}'"))
            return
        last = len(op.scored) - 1
        for i, token in enumerate(op.scored):
            lp = float(logprobs[i, token])
            tell(job.sink, TokenEvent(op.stream_id, token, lp, "stop" if i == last else None))


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    top = rows.max(axis=-1, keepdims=True)
    return rows - top - np.log(np.exp(rows - top).sum(axis=-1, keepdims=True))


def _model_description(context: LlamaContext) -> str:
    import ctypes

    import llama_cpp

    buffer = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(context.llama.model, buffer, len(buffer))
    return buffer.value.decode("utf-8", "replace")
