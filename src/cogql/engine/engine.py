"""The engine: executes LMTP ops (GENERATE / SCORE / MODEL_INFO) on a loaded model.

Model work runs on one worker thread so the event loop that hosts it (in-process client,
websocket server, Cog predictor) stays free to stream tokens. The thread works in turns: each
turn computes a bounded chunk of the prompts waiting for prefill and one decode step for every
stream already generating (engine/scheduler.py decides which), so a SCORE, a new stream or a
long prompt is served between the tokens of every other stream.

That thread does all of torch's work, loading included: torch's OpenMP pool belongs to the
thread that uses it, and once two threads own pools on a small machine, OpenMP stops spinning
between parallel regions (decode steps measured 1.6x slower on 2 cores). Grammars compile on
their own threads (grammar/matching.py), which run no torch.

A failure fails only the streams it belongs to; the engine serves on. Should the thread itself
die (a bug), `stopped` says why, every pending and later op is answered with that reason at
once, and hosts report the engine as unhealthy.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from importlib.metadata import version
from typing import Any

import torch

from ..extras import installed_version
from ..grammar import GRAMMAR_TIMEOUT_S, MAX_GRAMMAR_BYTES, GrammarCompiler
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
from .checks import generate_error, grammar_too_slow, no_leader, op_problem, room, too_long
from .jobs import GenerateStream, Job, ScoreJob
from .kvcache import PrefixCache
from .models import LoadedModel
from .protocol import EngineStopped, StreamHandle
from .runner import ModelRunner, usable_tokens
from .scheduler import PREFILL_CHUNK, STARVED_TURNS, plan_prefill
from .sink import Sink, tell
from .stepper import TokenStepper

__all__ = ["Engine", "EngineStopped", "StreamHandle", "usable_tokens"]

log = logging.getLogger("cogql.engine")


@dataclass
class _Work:
    ops: list[Op]
    sink: Sink
    handles: list[StreamHandle]


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


_WAKE = object()  # a grammar finished compiling: the thread has work again

Follower = tuple[Score, StreamHandle] | GenerateStream


class Engine:
    """Runs ops for any number of clients; submit() is thread-safe and returns immediately."""

    def __init__(
        self,
        model: LoadedModel | Callable[[], LoadedModel],
        *,
        max_cache_entries: int = 8,
        prefill_chunk: int = PREFILL_CHUNK,
        max_grammar_bytes: int = MAX_GRAMMAR_BYTES,
        grammar_timeout_s: float = GRAMMAR_TIMEOUT_S,
    ) -> None:
        """`model` is a loaded model or a loader, which then runs on the engine's thread; a
        loader's exception is raised here. `prefill_chunk` is the most prompt tokens one turn
        computes; grammars over `max_grammar_bytes` are refused, and a stream whose grammar
        has not compiled within `grammar_timeout_s` fails."""
        self.prefill_chunk = prefill_chunk
        self.max_grammar_bytes = max_grammar_bytes
        self.grammar_timeout_s = grammar_timeout_s
        self._inbox: queue.Queue[_Work | _Call | object | None] = queue.Queue()
        self._streams: list[GenerateStream] = []
        self._scores: list[ScoreJob] = []
        self._lock = threading.RLock()  # orders submit() against the thread's end
        self._stopped: str | None = None
        self._taking: object = None  # the inbox item being accepted
        self._started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(model, max_cache_entries), name="cogql-engine", daemon=True
        )
        self._thread.start()
        self._started.result()
        # a worker still inside torch when the interpreter exits aborts the process
        atexit.register(self.close)

    def _setup(self, loaded: LoadedModel, max_cache_entries: int) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.cache = PrefixCache(max_cache_entries)
        self.runner = ModelRunner(loaded, self.cache)
        self.grammars = GrammarCompiler(loaded.tokenizer)
        self.eos_ids = self._eos_ids()
        self.stepper = TokenStepper(
            self.eos_ids, self.eos_token_id, loaded.tokenizer.all_token_bytes()
        )
        self.vocab_size = usable_tokens(loaded)
        self.context_length: int | None = getattr(
            getattr(loaded.model, "config", None), "max_position_embeddings", None
        )

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        cfg = getattr(self.loaded.model, "generation_config", None)
        eos = getattr(cfg, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos])
        return frozenset(i for i in ids if i is not None)

    @property
    def eos_token_id(self) -> int:
        return (
            self.tokenizer.eos_token_id
            if self.tokenizer.eos_token_id is not None
            else min(self.eos_ids)
        )

    def model_info(self) -> dict[str, Any]:
        return {
            "model": self.loaded.name,
            "model_type": "transformers",
            "constructor": f"AutoModelForCausalLM.from_pretrained('{self.loaded.path}')",
            "transformers": version("transformers"),
            "cogql": installed_version("cogql") or "dev",
            "dtype": str(self.loaded.dtype).removeprefix("torch.")
            + _decode_suffix(self.loaded.decode_dtypes),
            "capabilities": list(ENGINE_CAPABILITIES),
            "bos_token_id": self.tokenizer.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "vocab_size": self.tokenizer.vocab_size,
            **self.loaded.info,
        }

    def submit(self, ops: list[Op], sink: Sink) -> list[StreamHandle]:
        """Queue ops that arrived together (they are batched together); events go to `sink`.
        On a stopped engine every op is answered with an error at once."""
        handles = [StreamHandle() for _ in ops]
        with self._lock:
            if self._stopped is None:
                self._inbox.put(_Work(list(ops), sink, handles))
                return handles
        for op in ops:
            tell(sink, ErrorEvent(op.stream_id, self._stopped))
        return handles

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the engine's thread between steps: for torch work outside the engine
        (benchmark baselines, reference computations) that must not start a second pool."""
        future: Future[Any] = Future()
        with self._lock:
            if self._stopped is None:
                self._inbox.put(_Call(fn, future))
                return future
        future.set_exception(EngineStopped(self._stopped))
        return future

    def describe(self) -> str:
        dtype = str(self.loaded.dtype).removeprefix("torch.")
        return f"cogql engine, {self.loaded.device}, {dtype}"

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs (hosts use it to fail waits on a dead engine)."""
        return self._thread.is_alive() and self._stopped is None

    @property
    def stopped(self) -> str | None:
        """Why the engine no longer runs ops (it was closed, or its thread died); None while
        it runs. Hosts report it as the engine's health."""
        return self._stopped

    def close(self) -> None:
        """Stop the worker thread (pending ops are answered with an error); safe to call twice."""
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout=10)
        atexit.unregister(self.close)

    # ---- worker thread ----------------------------------------------------------------------

    def _run(self, model: LoadedModel | Callable[[], LoadedModel], max_cache: int) -> None:
        try:
            self._setup(model if isinstance(model, LoadedModel) else model(), max_cache)
        except BaseException as e:
            self._started.set_exception(e)
            return
        self._started.set_result(None)
        why = "the engine was closed"
        try:
            with torch.inference_mode():
                self._serve()
        except BaseException as e:
            log.exception("the engine's thread died")
            why = f"the engine stopped after an internal error ({type(e).__name__}: {e})"
        finally:
            self._stop(why)

    def _serve(self) -> None:
        while True:
            try:
                item = self._inbox.get(**self._wait())
                while item is not None:
                    self._taking = item
                    self._take(item)
                    self._taking = None
                    item = self._inbox.get_nowait()
                return  # close() asked to stop
            except queue.Empty:
                pass
            self._turn()

    def _wait(self) -> dict[str, Any]:
        """How long the thread may sleep on its inbox: not at all while a job can run; until
        the nearest grammar deadline while streams only wait for their grammars (a compiled
        grammar wakes it sooner); else until work arrives."""
        if self._scores or any(self._runnable(s) for s in self._streams):
            return {"block": False}
        if self._streams:
            nearest = min(s.grammar_deadline for s in self._streams if s.grammar is not None)
            return {"timeout": max(nearest - time.monotonic(), 0.001)}
        return {}

    def _runnable(self, s: GenerateStream) -> bool:
        return s.grammar is None or s.grammar.done() or s.cancelled or not s.prefilled

    def _take(self, item: object) -> None:
        if isinstance(item, _Work):
            self._accept(item)
        elif isinstance(item, _Call):
            _run_call(item)

    def _stop(self, why: str) -> None:
        """Record why the engine stopped and answer everything it still held or will get."""
        with self._lock:
            self._stopped = why
            self.grammars.close()
            answered = self._fail_held(why)
            left = [self._taking] if self._taking is not None else []  # it died taking this
            while True:
                try:
                    left.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for item in left:
                if isinstance(item, _Work):
                    for op in item.ops:
                        if id(op) not in answered:
                            tell(item.sink, ErrorEvent(op.stream_id, why))
                elif isinstance(item, _Call) and item.future.set_running_or_notify_cancel():
                    item.future.set_exception(EngineStopped(why))

    def _fail_held(self, why: str) -> set[int]:
        """Answer the streams and scores the engine holds; returns the ids of their ops."""
        answered: set[int] = set()
        for s in self._streams:
            answered.add(id(s.op))
            tell(s.sink, ErrorEvent(s.op.stream_id, why))
            for follower in s.then:
                self._refuse(follower, s.sink, why)
                answered.add(
                    id(follower.op if isinstance(follower, GenerateStream) else follower[0])
                )
        for job in self._scores:
            for op, _ in job.ops:
                answered.add(id(op))
                tell(job.sink, ErrorEvent(op.stream_id, why))
        self._streams, self._scores = [], []
        return answered

    # ---- accepting ops ------------------------------------------------------------------

    def _accept(self, work: _Work) -> None:
        scores: dict[tuple[int, ...], ScoreJob] = {}
        generates: dict[Any, GenerateStream] = {}  # so far: an `after` names an earlier one
        for op, handle in zip(work.ops, work.handles, strict=True):
            try:
                self._accept_op(op, handle, work.sink, scores, generates)
            except Exception as e:  # one op's failure, answered to it alone
                log.exception("could not accept an op")
                tell(work.sink, ErrorEvent(op.stream_id, f"failed to accept the op: {e}"))
        self._scores.extend(scores.values())

    def _accept_op(
        self,
        op: Op,
        handle: StreamHandle,
        sink: Sink,
        scores: dict[tuple[int, ...], ScoreJob],
        generates: dict[Any, GenerateStream],
    ) -> None:
        if (problem := self._invalid(op)) is not None:
            sink(ErrorEvent(op.stream_id, problem))
            return
        if isinstance(op, ModelInfo):
            info = self.model_info()
            if op.data.get(TOKENIZER) is True:  # the `tokenizer` extension: hand it out
                info[TOKENIZER] = tokenizer_to_wire(self.tokenizer)
            sink(InfoEvent(op.stream_id, info))
            return
        item: Follower = (op, handle) if isinstance(op, Score) else self._stream(op, sink, handle)
        if op.after is not None:
            if (leader := generates.get(op.after)) is None:
                self._refuse(item, sink, no_leader(op))
                return
            leader.then.append(item)
        elif isinstance(item, tuple):
            key = tuple(op.prompt)
            if key in scores:
                scores[key].ops.append(item)
            else:
                scores[key] = ScoreJob(list(op.prompt), [item], sink)
        else:
            self._streams.append(item)
        if isinstance(item, GenerateStream):
            generates[op.stream_id] = item

    def _stream(self, op: Generate, sink: Sink, handle: StreamHandle) -> GenerateStream:
        """A stream whose grammar starts compiling now, in the background."""
        s = GenerateStream(op, sink, handle)
        if op.grammar and op.after is None:
            self._compile(s, op.grammar)
        return s

    def _compile(self, s: GenerateStream, grammar: str) -> None:
        s.grammar = self.grammars.submit(grammar)
        s.grammar_deadline = time.monotonic() + self.grammar_timeout_s
        s.grammar.add_done_callback(lambda _: self._inbox.put(_WAKE))

    def _refuse(self, follower: Follower, sink: Sink, why: str) -> None:
        """Answer a follower (and whatever follows it) with an error instead of running it."""
        if isinstance(follower, GenerateStream):
            tell(sink, ErrorEvent(follower.op.stream_id, why))
            for then in follower.then:
                self._refuse(then, sink, "the GENERATE it follows did not run")
        else:
            tell(sink, ErrorEvent(follower[0].stream_id, why))

    def _invalid(self, op: Op) -> str | None:
        return op_problem(op, self.vocab_size, self.context_length, self.max_grammar_bytes)

    def _too_long(self, op: Generate | Score) -> str | None:
        return too_long(op, self.context_length)

    # ---- one turn -----------------------------------------------------------------------

    def _turn(self) -> None:
        """Drop what was cancelled, take new jobs' cache entries, compute a chunk of prompts,
        score the SCOREs whose prompt is in, then one decode step for every stream whose
        prompt and grammar are ready."""
        for s in [s for s in self._streams if s.cancelled]:
            self._finish(s)
        self._scores = [job for job in self._scores if not job.cancelled]
        self._admit([j for j in (*self._streams, *self._scores) if j.left is None])
        self._prefill()
        for job in [j for j in self._scores if j.prefilled]:
            self._score(job)
        self._poll_grammars()
        self._decode()

    def _admit(self, jobs: list[Job]) -> None:
        for job, entry in zip(jobs, self.runner.reuse_many([j.prompt for j in jobs]), strict=True):
            job.entry = entry
            job.left = job.prompt[len(entry.ids) :]
            if isinstance(job, GenerateStream):
                job.limit = self._room(job.op)
                self.stepper.start(job)

    def _room(self, op: Generate) -> int:
        return room(op, self.context_length)

    def _prefill(self) -> None:
        jobs: list[Job] = [j for j in (*self._streams, *self._scores) if j.left]
        if not jobs:
            return
        takes = plan_prefill(
            [len(j.left or ()) for j in jobs],
            [j.idle >= STARVED_TURNS for j in jobs],
            self.prefill_chunk,
        )
        chosen = [(j, n) for j, n in zip(jobs, takes, strict=True) if n]
        for job, n in zip(jobs, takes, strict=True):
            job.idle = 0 if n else job.idle + 1
        outcomes = self.runner.extend(
            [j.admitted_entry for j, _ in chosen],
            [(j.left or [])[:n] for j, n in chosen],
        )
        for (job, n), error in zip(chosen, outcomes, strict=True):
            if error is not None:
                self._fail_job(job, f"failed to compute the prompt '{error}'")
                continue
            job.left = (job.left or [])[n:]

    def _poll_grammars(self) -> None:
        """Streams whose grammar compiled get its matcher; those whose grammar failed, or
        did not compile in time, fail (alone: the others go on decoding)."""
        now = time.monotonic()
        for s in [s for s in self._streams if s.grammar is not None]:
            future = s.grammar
            if future is None:  # dropped earlier in this pass
                continue
            if future.done():
                s.grammar = None
                try:
                    s.matcher = future.result()
                except Exception as e:  # a GrammarError, or llguidance's own
                    self._fail_job(s, f"invalid grammar: {e}")
            elif now >= s.grammar_deadline:
                future.cancel()
                s.grammar = None
                self._fail_job(s, grammar_too_slow(self.grammar_timeout_s))

    def _decode(self) -> None:
        """Every ready stream chooses its next token, then all of them are fed at once."""
        for s in [s for s in self._streams if s.prefilled and s.grammar is None]:
            try:
                done = self.stepper.step(s)
            except Exception as e:  # this stream's failure, not the engine's
                log.exception("GENERATE failed")
                self._fail_job(s, generate_error(e))
                continue
            if done:
                self._finish(s)
        fed = [s for s in self._streams if s.feed]
        if not fed:
            return
        outcomes = self.runner.decode([s.admitted_entry for s in fed], [s.feed for s in fed])
        for s, error in zip(fed, outcomes, strict=True):
            s.feed = []
            if error is not None:
                self._fail_job(s, f"failed to generate tokens '{error}'")

    # ---- ends -------------------------------------------------------------------------

    def _score(self, job: ScoreJob) -> None:
        self._scores.remove(job)
        live = [(op, h) for op, h in job.ops if not h.cancelled]
        assert job.entry is not None
        try:
            results = self.runner.score(job.entry, [op.scored for op, _ in live])
        except Exception as e:  # one bad group must not take the engine down
            log.exception("SCORE failed")
            job.entry = None  # its cache may be half-updated
            for op, _ in live:
                tell(job.sink, ErrorEvent(op.stream_id, f"failed to score tokens '{e}'"))
            return
        finally:
            self._release(job)
        for (op, _), logprobs in zip(live, results, strict=True):
            last = len(logprobs) - 1
            for i, (tok, lp) in enumerate(zip(op.scored, logprobs, strict=True)):
                tell(job.sink, TokenEvent(op.stream_id, tok, lp, "stop" if i == last else None))

    def _fail_job(self, job: Job, error: str) -> None:
        """Answer a job with its error; its cache entry may be half-updated, so it is dropped."""
        job.entry = None
        if isinstance(job, GenerateStream):
            tell(job.sink, ErrorEvent(job.op.stream_id, error))
            self._finish(job)
            return
        assert isinstance(job, ScoreJob)
        self._scores.remove(job)
        for op, _ in job.ops:
            tell(job.sink, ErrorEvent(op.stream_id, error))

    def _finish(self, s: GenerateStream) -> None:
        if s not in self._streams:
            return
        self._streams.remove(s)
        self._release(s)
        if s.then:
            self._release_followers(s)

    def _release(self, job: Job) -> None:
        """Give a job's cache entry back to the prefix cache, as a compact copy."""
        entry, job.entry = job.entry, None
        if entry is None:
            return
        try:
            entry.settle()
        except Exception:  # e.g. no memory for the copy: the entry is dropped
            log.exception("could not keep a cache entry")
            return
        self.cache.release(entry)

    def _release_followers(self, s: GenerateStream) -> None:
        """What waits for `s` runs after its prompt and tokens (the cache entry it just
        settled serves them), from the next turn; or is refused when `s` did not end."""
        if not s.ended:
            for follower in s.then:
                self._refuse(follower, s.sink, "the GENERATE it follows did not end")
            return
        prefix = s.op.prompt + s.tokens
        scores: dict[tuple[int, ...], ScoreJob] = {}
        for follower in s.then:
            if isinstance(follower, GenerateStream):
                follower.op = replace(follower.op, prompt=prefix + follower.op.prompt, after=None)
                if (problem := self._too_long(follower.op)) is not None:
                    self._refuse(follower, s.sink, problem)
                    continue
                if follower.op.grammar:
                    self._compile(follower, follower.op.grammar)
                self._streams.append(follower)
            else:
                op, handle = follower
                op = replace(op, prompt=prefix + op.prompt, after=None)
                if (problem := self._too_long(op)) is not None:
                    self._refuse((op, handle), s.sink, problem)
                    continue
                job = scores.setdefault(tuple(op.prompt), ScoreJob(op.prompt, [], s.sink))
                job.ops.append((op, handle))
        self._scores.extend(scores.values())


def _decode_suffix(dtypes: tuple[torch.dtype, ...]) -> str:
    """'+float16,bfloat16-decode': the precisions one-token steps may run at."""
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return f"+{','.join(names)}-decode" if names else ""


def _run_call(call: _Call) -> None:
    if not call.future.set_running_or_notify_cancel():
        return
    try:
        call.future.set_result(call.fn())
    except BaseException as e:
        call.future.set_exception(e)
