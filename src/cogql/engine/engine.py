"""The engine: executes LMTP ops (GENERATE / SCORE / MODEL_INFO) on a loaded model.

Model work runs on one worker thread so the event loop that hosts it (in-process client,
websocket server, Cog predictor) stays free to stream tokens. Streams advance one token per
turn, so a SCORE or a new stream is served between the tokens of a long GENERATE.

That thread does all of torch's work, loading included: torch's OpenMP pool belongs to the
thread that uses it, and once two threads own pools on a small machine, OpenMP stops spinning
between parallel regions (decode steps measured 1.6x slower on 2 cores).
"""

from __future__ import annotations

import atexit
import functools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from typing import Any

import torch

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
    op_kind,
    tokenizer_to_wire,
)
from .batch import DecodeBatch
from .kvcache import (
    CacheEntry,
    PrefixCache,
    common_prefix,
    full_cache,
    has_sliding_layers,
    left_padded,
)
from .masks import GrammarCompiler, GrammarError, GrammarMatcher
from .models import LoadedModel
from .sampling import apply_bias, choose
from .sink import Sink

log = logging.getLogger("cogql.engine")


class StreamHandle:
    """Lets the submitter cancel a stream it no longer needs (nothing more is computed)."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Work:
    ops: list[Op]
    sink: Sink
    handles: list[StreamHandle]


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


class _ModelRunner:
    """Forward passes over cache entries; the only code that calls the model."""

    def __init__(self, loaded: LoadedModel, cache: PrefixCache) -> None:
        self.model = loaded.model
        self.decode_model = loaded.decode_model
        self.device = loaded.device
        self.cache = cache
        self.tokens = usable_tokens(loaded)
        copies = [functools.partial(loaded.decode_copy, d) for d in loaded.decode_dtypes]
        self.batch = DecodeBatch([*copies, lambda: loaded.model], self.tokens)

    def feed(self, entries: list[CacheEntry], tokens: list[list[int]]) -> None:
        """Advance every entry by its tokens: one-token steps share one batched pass."""
        singles = [i for i, t in enumerate(tokens) if len(t) == 1]
        for i, entry in enumerate(entries):
            if len(tokens[i]) != 1 or len(singles) == 1:
                self.forward(entry, tokens[i], decoding=True)
        if len(singles) > 1:
            self.batch.step([entries[i] for i in singles], [tokens[i][0] for i in singles])

    def forward(
        self, entry: CacheEntry, new_ids: list[int], keep: int = 1, *, decoding: bool = False
    ) -> torch.Tensor:
        """Feed `new_ids` after `entry.ids`; returns logits of the last `keep` positions.
        Only decode steps (`decoding`, one token) may use the faster, less exact decode copy:
        a prompt's logits must not depend on whether its last token was cached."""
        fast = decoding and len(new_ids) == 1 and self.decode_model is not None
        model = self.decode_model if fast else self.model
        if entry.past is None:
            entry.past = full_cache(model.config)
        else:
            entry.cast(model.dtype)
        ids = torch.tensor([new_ids], dtype=torch.long, device=self.device)
        out = model(input_ids=ids, cache=entry.past, use_cache=True, logits_to_keep=keep)
        entry.ids.extend(new_ids)
        logits = out.logits[0, :, : self.tokens].float()
        entry.logits = logits[-1]
        return logits

    def prepare(self, prompt: list[int]) -> CacheEntry:
        """An entry holding exactly `prompt`, with next-token logits, reusing the best prefix."""
        if not prompt:
            raise ValueError("the prompt is empty: send at least one token (e.g. BOS)")
        entry = self._reuse(prompt)
        if len(entry.ids) < len(prompt):
            self.forward(entry, prompt[len(entry.ids) :])
        return entry

    def _reuse(self, prompt: list[int]) -> CacheEntry:
        """The cache's best entry for `prompt`, cut to the part it shares; at least the last
        token is left to compute, unless the entry holds exactly `prompt` and its logits."""
        entry = self.cache.acquire(prompt)
        shared = common_prefix(entry.ids, prompt)
        if not (shared == len(prompt) == len(entry.ids) and entry.logits is not None):
            entry.crop(min(shared, len(prompt) - 1))
        return entry

    def prepare_many(self, prompts: list[list[int]]) -> list[CacheEntry] | None:
        """`prepare` for several prompts, the tokens the cache lacks computed in one padded
        pass (the exact model, as for one prompt); None, with the cache untouched, when a
        prompt is empty or holds an id the model does not have (`prepare` each, to fail it)."""
        vocab = self.model.get_input_embeddings().num_embeddings
        if not all(p and min(p) >= 0 and max(p) < vocab for p in prompts):
            return None
        # the prompts that the cache serves best choose first, so a short shared start (BOS)
        # does not take the entry another prompt shares much more with
        order = sorted(range(len(prompts)), key=lambda i: -self.cache.longest_prefix(prompts[i]))
        reused = {i: self._reuse(prompts[i]) for i in order}
        entries = [reused[i] for i in range(len(prompts))]
        tails = [p[len(e.ids) :] for p, e in zip(prompts, entries, strict=True)]
        todo = [i for i, tail in enumerate(tails) if tail]
        if len(todo) == 1 or (has_sliding_layers(self.model.config) and _ragged(tails, todo)):
            # a padded pass puts pads between a short tail and its entry, and a sliding
            # window counts them as positions: such models extend each entry on its own
            for i in todo:
                self.forward(entries[i], tails[i])
        elif todo:
            self._extend_together([entries[i] for i in todo], [tails[i] for i in todo])
        return entries

    def _extend_together(self, entries: list[CacheEntry], tails: list[list[int]]) -> None:
        """Feed each entry its tail in one pass: row i is [pad, entry i's keys/values, pad,
        tail i], so every tail ends in the last column and its logits are the last ones."""
        for entry in entries:
            entry.cast(self.model.dtype)
        width, k = max(len(e.ids) for e in entries), max(len(t) for t in tails)
        rows = len(entries)
        mask = torch.zeros(rows, width + k, dtype=torch.long)
        ids = torch.zeros(rows, k, dtype=torch.long)
        positions = torch.zeros(rows, k, dtype=torch.long)
        for i, (entry, tail) in enumerate(zip(entries, tails, strict=True)):
            held = len(entry.ids)
            mask[i, width - held : width] = 1
            mask[i, width + k - len(tail) :] = 1
            ids[i, k - len(tail) :] = torch.tensor(tail)
            positions[i, k - len(tail) :] = torch.arange(held, held + len(tail))
        past = full_cache(self.model.config, left_padded(entries, width))
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            cache=past,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, : self.tokens].float()
        keeps = mask.bool().to(self.device)
        for i, (entry, tail) in enumerate(zip(entries, tails, strict=True)):
            keep = keeps[i]
            kv = [(x.keys[i : i + 1, :, keep], x.values[i : i + 1, :, keep]) for x in past.layers]
            entry.past = full_cache(self.model.config, kv)
            entry.ids.extend(tail)
            entry.logits = logits[i]

    def score_group(self, prompt: list[int], options: list[list[int]]) -> list[list[float]]:
        """Log-probs of each option's tokens after one shared prompt, in one batched pass."""
        entry = self.prepare(prompt)
        try:
            first = torch.log_softmax(entry.logits, -1)
            results = [[float(first[opt[0]])] for opt in options]
            longer = [i for i, opt in enumerate(options) if len(opt) > 1]
            if longer:
                self._score_tails(entry, [options[i] for i in longer], [results[i] for i in longer])
            return results
        finally:
            self.cache.release(entry)

    def _score_tails(self, entry: CacheEntry, options: list[list[int]], out: list[list[float]]):
        width = max(len(o) - 1 for o in options)
        rows = torch.tensor([o[:-1] + [0] * (width - len(o) + 1) for o in options])
        entry.cast(self.model.dtype)
        n = len(options)
        rows_kv = [
            (_repeat(layer.keys, n), _repeat(layer.values, n)) for layer in entry.past.layers
        ]
        past = full_cache(self.model.config, rows_kv)
        logits = self.model(input_ids=rows.to(self.device), cache=past, use_cache=True)
        logprobs = torch.log_softmax(logits.logits[..., : self.tokens].float(), -1)
        for r, opt in enumerate(options):
            for j, tok in enumerate(opt[1:]):
                out[r].append(float(logprobs[r, j, tok]))


@dataclass
class _GenerateStream:
    op: Generate
    sink: Sink
    handle: StreamHandle
    entry: CacheEntry | None = None
    matcher: GrammarMatcher | None = None
    generator: torch.Generator | None = None
    produced: int = 0
    text: bytearray = field(default_factory=bytearray)
    stops: list[bytes] = field(default_factory=list)
    feed: list[int] = field(default_factory=list)  # chosen tokens the model has not seen yet
    started: bool = False
    tokens: list[int] = field(default_factory=list)  # generated, a final EOS left out
    ended: bool = False  # reached a finish reason (not cancelled, not failed)
    then: list[tuple[Score, StreamHandle] | _GenerateStream] = field(default_factory=list)


class Engine:
    """Runs ops for any number of clients; submit() is thread-safe and returns immediately."""

    def __init__(
        self, model: LoadedModel | Callable[[], LoadedModel], *, max_cache_entries: int = 8
    ) -> None:
        """`model` is a loaded model or a loader, which then runs on the engine's thread; a
        loader's exception is raised here."""
        self._inbox: queue.Queue[_Work | _Call | None] = queue.Queue()
        self._streams: list[_GenerateStream] = []
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
        self.runner = _ModelRunner(loaded, self.cache)
        self.grammars = GrammarCompiler(loaded.tokenizer)
        self.eos_ids = self._eos_ids()
        self._token_bytes = loaded.tokenizer.all_token_bytes()
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
            "cogql": version("cogql") if _installed("cogql") else "dev",
            "dtype": str(self.loaded.dtype).removeprefix("torch.")
            + _decode_suffix(self.loaded.decode_dtypes),
            "capabilities": list(ENGINE_CAPABILITIES),
            "bos_token_id": self.tokenizer.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "vocab_size": self.tokenizer.vocab_size,
            **self.loaded.info,
        }

    def submit(self, ops: list[Op], sink: Sink) -> list[StreamHandle]:
        """Queue ops that arrived together (they are batched together); events go to `sink`."""
        handles = [StreamHandle() for _ in ops]
        self._inbox.put(_Work(list(ops), sink, handles))
        return handles

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the engine's thread between steps: for torch work outside the engine
        (benchmark baselines, reference computations) that must not start a second pool."""
        future: Future[Any] = Future()
        self._inbox.put(_Call(fn, future))
        return future

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs (hosts use it to fail waits on a dead engine)."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the worker thread (pending streams are dropped); safe to call twice."""
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
        with torch.inference_mode():
            while True:
                block = not self._streams
                try:
                    work = self._inbox.get(block=block)
                except queue.Empty:
                    work = False
                if work is None:
                    return
                if isinstance(work, _Call):
                    _run_call(work)
                elif work:
                    self._accept(work)
                else:
                    self._step_all()

    def _accept(self, work: _Work) -> None:
        scores: list[tuple[Score, StreamHandle]] = []
        generates: dict[Any, _GenerateStream] = {}  # so far: an `after` names an earlier one
        for op, handle in zip(work.ops, work.handles, strict=True):
            if (problem := self._invalid(op)) is not None:
                work.sink(ErrorEvent(op.stream_id, problem))
                continue
            if isinstance(op, ModelInfo):
                info = self.model_info()
                if op.data.get(TOKENIZER) is True:  # the `tokenizer` extension: hand it out
                    info[TOKENIZER] = tokenizer_to_wire(self.tokenizer)
                work.sink(InfoEvent(op.stream_id, info))
                continue
            item = (op, handle) if isinstance(op, Score) else _GenerateStream(op, work.sink, handle)
            if op.after is None and isinstance(item, tuple):
                scores.append(item)
            elif op.after is None:
                self._streams.append(item)
            elif (leader := generates.get(op.after)) is not None:
                leader.then.append(item)
            else:
                error = f"{op_kind(op)} after={op.after!r} names no GENERATE sent before it"
                self._refuse(item, work.sink, error)
                continue
            if isinstance(item, _GenerateStream):
                generates[op.stream_id] = item
        if scores:
            self._run_scores(scores, work.sink)

    def _refuse(self, follower: tuple[Score, StreamHandle] | _GenerateStream, sink: Sink, why: str):
        """Answer a follower (and whatever follows it) with an error instead of running it."""
        if isinstance(follower, _GenerateStream):
            sink(ErrorEvent(follower.op.stream_id, why))
            for then in follower.then:
                self._refuse(then, sink, "the GENERATE it follows did not run")
        else:
            sink(ErrorEvent(follower[0].stream_id, why))

    def _invalid(self, op: Op) -> str | None:
        """Why the model cannot run `op`, said plainly (the model would raise a bare
        IndexError); every host, in-process, websocket or Cog, answers with it."""
        if isinstance(op, ModelInfo):
            return None
        ids = op.prompt + op.scored if isinstance(op, Score) else op.prompt
        bad = sorted({t for t in ids if t >= self.vocab_size})
        if isinstance(op, Generate):
            bad += sorted(t for t in op.logit_bias if not 0 <= t < self.vocab_size)
        if bad:
            return f"token ids outside the vocabulary (size {self.vocab_size}): {bad[:5]}"
        limit = self.context_length
        if limit is not None and len(ids) > limit:
            return f"{len(ids)} tokens exceed the model's context of {limit} tokens"
        return None

    def _run_scores(self, scores: list[tuple[Score, StreamHandle]], sink: Sink) -> None:
        groups: dict[tuple[int, ...], list[Score]] = {}
        for op, handle in scores:
            if handle.cancelled:
                continue
            if not op.scored:
                sink(ErrorEvent(op.stream_id, "SCORE needs at least one token in 'scored'"))
                continue
            groups.setdefault(tuple(op.prompt), []).append(op)
        for prompt, ops in groups.items():
            try:
                results = self.runner.score_group(list(prompt), [op.scored for op in ops])
            except Exception as e:  # one bad group must not take the engine down
                log.exception("SCORE failed")
                for op in ops:
                    sink(ErrorEvent(op.stream_id, f"failed to score tokens '{e}'"))
                continue
            for op, logprobs in zip(ops, results, strict=True):
                last = len(logprobs) - 1
                for i, (tok, lp) in enumerate(zip(op.scored, logprobs, strict=True)):
                    sink(TokenEvent(op.stream_id, tok, lp, "stop" if i == last else None))

    def _step_all(self) -> None:
        """One turn: every stream chooses its next token, then all of them are fed at once."""
        self._start_together([s for s in self._streams if s.entry is None])
        for stream in list(self._streams):
            done = True
            try:
                done = stream.handle.cancelled or self._step(stream)
            except Exception as e:
                self._fail(stream, e)
            if done:
                self._finish(stream)
        fed = [s for s in self._streams if s.feed]
        if not fed:
            return
        try:
            self.runner.feed([s.entry for s in fed], [s.feed for s in fed])  # type: ignore[misc]
        except Exception as e:
            for stream in fed:
                self._fail(stream, e)
                self._finish(stream)
        for stream in fed:
            stream.feed = []

    def _fail(self, stream: _GenerateStream, e: Exception) -> None:
        log.exception("GENERATE failed")
        stream.sink(ErrorEvent(stream.op.stream_id, f"failed to generate tokens '{e}'"))

    def _finish(self, stream: _GenerateStream) -> None:
        if stream not in self._streams:
            return
        self._streams.remove(stream)
        if stream.entry is not None:
            stream.entry.settle()
            self.cache.release(stream.entry)
            stream.entry = None
        if stream.then:
            self._release_followers(stream)

    def _release_followers(self, stream: _GenerateStream) -> None:
        """What waits for `stream` runs after its prompt and tokens (the cache entry it just
        settled serves them): SCOREs now, GENERATEs from the next step; or is refused when
        `stream` did not end."""
        if not stream.ended:
            for follower in stream.then:
                self._refuse(follower, stream.sink, "the GENERATE it follows did not end")
            return
        prefix = stream.op.prompt + stream.tokens
        scores = []
        for follower in stream.then:
            if isinstance(follower, _GenerateStream):
                follower.op = replace(follower.op, prompt=prefix + follower.op.prompt, after=None)
                self._streams.append(follower)
            else:
                op, handle = follower
                scores.append((replace(op, prompt=prefix + op.prompt, after=None), handle))
        if scores:
            self._run_scores(scores, stream.sink)

    def _start_together(self, new: list[_GenerateStream]) -> None:
        """Streams that arrived together get their prompts prefilled in one pass (a stream
        left without an entry starts on its own in `_step`)."""
        new = [s for s in new if not s.handle.cancelled and s.op.max_tokens > 0]
        if len(new) < 2:
            return
        entries = self.runner.prepare_many([s.op.prompt for s in new])
        for s, entry in zip(new, entries or (), strict=False):
            s.entry = entry

    def _start(self, s: _GenerateStream) -> None:
        op = s.op
        if op.grammar:
            try:
                s.matcher = self.grammars.matcher(op.grammar)
            except GrammarError as e:
                raise ValueError(f"invalid grammar: {e}") from None
        if op.temperature > 0:
            s.generator = torch.Generator()
            s.generator.manual_seed(op.seed if op.seed is not None else torch.seed())
        s.stops = [x.encode() for x in op.stop]
        if s.entry is None:
            s.entry = self.runner.prepare(op.prompt)

    def _step(self, s: _GenerateStream) -> bool:
        """Advance one stream by one token (or a run of grammar-forced tokens); True when done."""
        if not s.started:
            s.started = True
            self._start(s)
            if s.op.max_tokens == 0:
                s.ended = True
                s.sink(TokenEvent(s.op.stream_id, self.eos_token_id, 0.0, "length", {}))
                return True
        assert s.entry is not None and s.entry.logits is not None
        forced = s.matcher.forced_tokens() if s.matcher else []
        if forced:
            return self._emit_forced(s, forced)
        logits = s.entry.logits.clone()
        allowed = self._mask(s, logits)
        if allowed is not None and allowed.sum() == 1 and allowed[self.eos_token_id]:
            return self._emit(s, self.eos_token_id, 0.0, {self.eos_token_id: 0.0}, forward=False)
        op = s.op
        c = choose(
            logits,
            temperature=op.temperature,
            top_logprobs=op.top_logprobs,
            generator=s.generator,
            top_k=op.extra.get("top_k"),
            top_p=op.extra.get("top_p"),
        )
        return self._emit(s, c.token, c.logprob, c.top_logprobs, forward=True)

    def _mask(self, s: _GenerateStream, logits: torch.Tensor):
        apply_bias(logits, s.op.logit_bias)
        if s.produced < s.op.min_tokens:
            for eos in self.eos_ids:
                logits[eos] = float("-inf")
        if s.matcher is None:
            return None
        return s.matcher.mask_logits(logits)

    def _finish_reason(self, s: _GenerateStream, token: int) -> str | None:
        if token in self.eos_ids:
            return "stop"
        if s.stops and s.produced >= s.op.min_tokens:
            # only an occurrence that ends inside this token counts: one that ended earlier
            # was generated while the stops were inactive (before min_tokens)
            end = len(s.text) - len(self._token_bytes[token])
            if any(x in s.text[max(end - len(x) + 1, 0) :] for x in s.stops):
                return "stop"
        if s.matcher is not None and s.matcher.is_stopped():
            return "stop"
        if s.produced >= s.op.max_tokens:
            return "length"
        return None

    def _emit(self, s, token: int, logprob: float, top: dict[int, float], *, forward: bool) -> bool:
        s.produced += 1
        s.text += self._token_bytes[token]
        if s.matcher is not None and token not in self.eos_ids:
            s.matcher.consume([token])
        reason = self._finish_reason(s, token)
        if reason is None or token not in self.eos_ids:
            s.tokens.append(token)
        s.ended = reason is not None
        s.sink(TokenEvent(s.op.stream_id, token, logprob, reason, top))
        if reason is None and forward:
            s.feed = [token]
        return reason is not None

    def _emit_forced(self, s: _GenerateStream, forced: list[int]) -> bool:
        forced = forced[: max(s.op.max_tokens - s.produced, 0)]
        fed: list[int] = []
        for token in forced:
            if self._emit(s, token, 0.0, {token: 0.0}, forward=False):
                return True
            fed.append(token)
        s.feed = fed
        return False


def _ragged(tails: list[list[int]], todo: list[int]) -> bool:
    return len({len(tails[i]) for i in todo}) > 1


def usable_tokens(loaded: LoadedModel) -> int:
    """How many ids the engine may choose: those both the model and its tokenizer have. Models
    pad their embeddings past the tokenizer (Gemma 3: 262,208 rows for 262,145 tokens, Qwen 3:
    151,936 for 151,669); those rows have no text, so they must never be generated."""
    config = getattr(loaded.model, "config", None)
    rows = getattr(config, "vocab_size", None) or loaded.tokenizer.vocab_size
    return min(rows, loaded.tokenizer.vocab_size)


def _installed(dist: str) -> bool:
    try:
        version(dist)
        return True
    except Exception:
        return False


def _decode_suffix(dtypes: tuple[torch.dtype, ...]) -> str:
    """'+float16,bfloat16-decode': the precisions one-token steps may run at."""
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return f"+{','.join(names)}-decode" if names else ""


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    """One copy of a batch-1 cache tensor per option row."""
    return t.expand(n, -1, -1, -1).contiguous()


def _run_call(call: _Call) -> None:
    if not call.future.set_running_or_notify_cancel():
        return
    try:
        call.future.set_result(call.fn())
    except BaseException as e:
        call.future.set_exception(e)
