"""The engine under faults and uneven load: a failing pass fails only its streams, a dead
engine says why and answers at once, long prompts are prefilled in chunks between other
streams' tokens, long contexts decode apart from short ones, the context length bounds
prompts and generations, and grammars are capped, compiled off the engine's thread and turned
into clear per-stream errors when llguidance fails.

Engines here are the random model's (logits depend only on the token sequence, so chunking,
grouping and retries must not change a single token) or tiny random-weight llamas, each test's
own, since faults are injected into them. Faults are forward pre-hooks that raise on a chosen
token, or a stand-in for llguidance's Rust panic: the only ways to reach those paths."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llguidance
import llguidance.numpy
import pytest
import torch

from cogql.engine import scheduler
from cogql.engine.engine import Engine, EngineStopped
from cogql.engine.models import load_model
from cogql.lmtp.messages import ErrorEvent, Event, Generate, Score, TokenEvent, is_terminal

SEED = 11
POISON = 4242  # the token id a fault is injected on
SHORT = [1, 504, 3437, 28]


def make_engine(**kwargs: Any) -> Engine:
    return Engine(lambda: load_model("random", seed=SEED), **kwargs)


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = make_engine()
    yield e
    e.close()


def long_prompt(n: int) -> list[int]:
    return [1, *((i * 7919) % 40000 + 100 for i in range(n - 1))]


class Recorder:
    """A sink that keeps each stream's events, and one log, in the engine thread's order, of
    events and forward passes (see `watch`)."""

    def __init__(self) -> None:
        self.events: dict[Any, list[Event]] = {}
        self.log: list[tuple[str, Any]] = []
        self.ended: set[Any] = set()
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.setdefault(event.stream_id, []).append(event)
            self.log.append(("event", event))
            if is_terminal(event):
                self.ended.add(event.stream_id)
            self._cond.notify_all()

    def wait(self, *sids: Any, timeout: float = 60) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: set(sids) <= self.ended, timeout), (
                f"streams {set(sids) - self.ended} never ended"
            )

    def tokens(self, sid: Any) -> list[int]:
        return [e.token for e in self.events[sid] if isinstance(e, TokenEvent)]

    def error(self, sid: Any) -> str:
        last = self.events[sid][-1]
        assert isinstance(last, ErrorEvent), f"stream {sid} ended without an error: {last}"
        return last.error

    def first_token_at(self, sid: Any) -> int:
        return next(
            i
            for i, (kind, e) in enumerate(self.log)
            if kind == "event" and e.stream_id == sid and isinstance(e, TokenEvent)
        )

    def passes_before(self, index: int) -> list[tuple[int, ...]]:
        return [shape for kind, shape in self.log[:index] if kind == "forward"]


def watch(engine: Engine, rec: Recorder) -> Callable[[], None]:
    """Log every forward pass's input shape into `rec`; returns the remover."""

    def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        rec.log.append(("forward", tuple(kwargs["input_ids"].shape)))

    return engine.loaded.model.register_forward_pre_hook(hook, with_kwargs=True).remove


def inject(engine: Engine, fault: Callable[[torch.Tensor], bool]) -> Callable[[], None]:
    """Make every forward pass whose input ids satisfy `fault` raise; returns the remover."""

    def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if fault(kwargs["input_ids"]):
            raise RuntimeError(f"injected fault on token {POISON}")

    return engine.loaded.model.register_forward_pre_hook(hook, with_kwargs=True).remove


def run(engine: Engine, ops: list[Any]) -> Recorder:
    rec = Recorder()
    engine.submit(ops, rec)
    rec.wait(*(op.stream_id for op in ops))
    return rec


def solo(engine: Engine, prompt: list[int], **kw: Any) -> list[int]:
    return run(engine, [Generate(0, "", prompt, **kw)]).tokens(0)


# --------------------------------------------------------------------------- failures


def test_a_failing_prefill_fails_only_its_stream(engine: Engine) -> None:
    good = [long_prompt(40), SHORT]
    alone = [solo(engine, p, max_tokens=5) for p in good]
    engine.call(engine.cache.clear).result()
    remove = inject(engine, lambda ids: bool((ids == POISON).any()))
    try:  # arriving together, the three prompts would share one padded prefill
        ops = [
            Generate(1, "", good[0], max_tokens=5),
            Generate(2, "", [1, 28, POISON, 28], max_tokens=5),
            Generate(3, "", good[1], max_tokens=5),
        ]
        rec = run(engine, ops)
    finally:
        remove()
    assert "injected fault" in rec.error(2)
    assert [rec.tokens(1), rec.tokens(3)] == alone
    assert engine.alive and solo(engine, SHORT, max_tokens=5) == alone[1]


def test_a_failing_decode_step_fails_only_its_stream(engine: Engine) -> None:
    prompts = [SHORT, [1, 28, 29, 30]]
    alone = [solo(engine, p, max_tokens=6) for p in prompts]
    remove = inject(engine, lambda ids: ids.shape[1] == 1 and bool((ids == POISON).any()))
    try:  # stream 2 is made to choose POISON; feeding it back fails the shared decode step
        ops = [
            Generate(1, "", prompts[0], max_tokens=6),
            Generate(2, "", [1, 28, 28], max_tokens=6, logit_bias={POISON: 100.0}),
            Generate(3, "", prompts[1], max_tokens=6),
        ]
        rec = run(engine, ops)
    finally:
        remove()
    assert rec.tokens(2) == [POISON] and "injected fault" in rec.error(2)
    assert [rec.tokens(1), rec.tokens(3)] == alone
    assert engine.runner.batch.steps > 0, "the streams never shared a decode step"
    assert engine.alive and solo(engine, prompts[1], max_tokens=6) == alone[1]


def test_a_dead_engine_says_why_and_answers_at_once(engine: Engine) -> None:
    def broken_loop() -> None:
        raise RuntimeError("injected: the loop broke")

    engine._turn = broken_loop  # type: ignore[method-assign] - a bug escaping the loop
    pending = run(engine, [Generate(1, "", SHORT, max_tokens=3)])
    assert "injected: the loop broke" in pending.error(1)
    assert not engine.alive
    assert engine.stopped is not None and "injected: the loop broke" in engine.stopped
    later = Recorder()
    engine.submit([Generate(2, "", SHORT, max_tokens=3), Score(3, "", SHORT, [28])], later)
    assert later.ended == {2, 3}, "ops sent to a dead engine were not answered at once"
    assert "injected: the loop broke" in later.error(3)
    with pytest.raises(EngineStopped, match="the loop broke"):
        engine.call(lambda: None).result(timeout=5)


# --------------------------------------------------------------------------- chunked prefill


def test_a_long_prompt_is_prefilled_in_chunks_after_a_short_ones_first_token() -> None:
    engine = make_engine(prefill_chunk=32)
    try:
        long, short = long_prompt(320), SHORT
        alone = {1: solo(engine, long, max_tokens=2), 2: solo(engine, short, max_tokens=3)}
        engine.call(engine.cache.clear).result()
        rec = Recorder()
        remove = watch(engine, rec)
        try:
            engine.submit([Generate(1, "", long, 2), Generate(2, "", short, 3)], rec)
            rec.wait(1, 2)
        finally:
            remove()
        first_short, first_long = rec.first_token_at(2), rec.first_token_at(1)
        assert first_short < first_long
        assert len(rec.passes_before(first_short)) == 1, "the short prompt waited for the long"
        prefill = [s for s in rec.passes_before(first_long) if s[1] > 1]
        assert max(width for _, width in prefill) <= 32
        assert sum(width for _, width in prefill) >= 320 - 32  # ten chunks, each its own pass
        assert {1: rec.tokens(1), 2: rec.tokens(2)} == alone
    finally:
        engine.close()


def test_a_prompt_arriving_mid_prefill_waits_about_one_chunk() -> None:
    engine = make_engine(prefill_chunk=32)
    try:
        long = long_prompt(320)
        alone = solo(engine, SHORT, max_tokens=3)
        engine.call(engine.cache.clear).result()
        rec = Recorder()
        sent = threading.Event()

        def send_short_once_prefill_runs(_m: Any, _a: Any, kwargs: dict[str, Any]) -> None:
            rec.log.append(("forward", tuple(kwargs["input_ids"].shape)))
            if kwargs["input_ids"].shape[1] > 1 and not sent.is_set():
                sent.set()  # on the engine's thread, while the long prompt is in progress
                engine.submit([Generate(2, "", SHORT, 3)], rec)

        model = engine.loaded.model
        hook = model.register_forward_pre_hook(send_short_once_prefill_runs, with_kwargs=True)
        try:
            engine.submit([Generate(1, "", long, 2)], rec)
            rec.wait(1, 2)
        finally:
            hook.remove()
        first_short = rec.first_token_at(2)
        assert first_short < rec.first_token_at(1), "the short prompt waited for the whole long one"
        chunks = [s for s in rec.passes_before(first_short) if s[1] > 1]
        assert len(chunks) <= 2  # the chunk in progress when it arrived, then its own
        assert rec.tokens(2) == alone
    finally:
        engine.close()


def test_chunked_prefill_scores_like_one_pass(tiny_model_path: Path) -> None:
    """On a real architecture (positions, attention over the cache), a prompt computed in
    chunks of 8 gives the log-probs of one whole pass."""
    prompt = long_prompt(45)
    options = [[28, 29, 30], [504]]
    scores = {}
    for chunk in (8, 512):
        engine = Engine(
            lambda: load_model(str(tiny_model_path), dtype="float32"), prefill_chunk=chunk
        )
        try:
            ops = [Score(i, "", prompt, o) for i, o in enumerate(options)]
            rec = run(engine, ops)
            scores[chunk] = [[e.logprob for e in rec.events[i]] for i in range(len(options))]
        finally:
            engine.close()
    for chunked, whole in zip(scores[8], scores[512], strict=True):
        assert chunked == pytest.approx(whole, abs=1e-4)


# --------------------------------------------------------------------------- decode groups


def test_length_groups_bound_padding() -> None:
    lengths = [3500] + [100 + 10 * i for i in range(16)]
    groups = scheduler.length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(17))
    assert groups[0] == [0], "the long context pads no short row"
    assert max(len(g) for g in groups) >= 15, "the short rows still share one pass"
    for g in groups:
        width = max(lengths[i] for i in g)
        assert all(
            width <= max(scheduler.PADDING_FLOOR, scheduler.MAX_PADDING * lengths[i]) for i in g
        )
    assert scheduler.length_groups([10, 200, 250]) == [[0, 1, 2]]  # all within the floor
    assert scheduler.length_groups([456, 6]) == [[0], [1]]


def test_plan_prefill_serves_short_prompts_first_and_starved_ones_eventually() -> None:
    assert scheduler.plan_prefill([3500, 5, 40], [False] * 3, 512) == [467, 5, 40]
    assert scheduler.plan_prefill([3500, 5, 600], [False] * 3, 512) == [0, 5, 507]
    assert scheduler.plan_prefill([3500, 5], [True, False], 512) == [512, 0]


def test_a_long_stream_decodes_apart_from_short_ones(engine: Engine) -> None:
    long = long_prompt(600)
    shorts = [[1, 28 + i, 504, 3437, 28] for i in range(6)]
    alone = [solo(engine, p, max_tokens=4) for p in [long, *shorts]]
    engine.call(engine.cache.clear).result()
    decode_passes: list[tuple[int, int, int]] = []

    def record(_m: Any, _a: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if kwargs["input_ids"].shape[1] == 1 and mask is not None:
            decode_passes.append((mask.shape[0], mask.shape[1], int(mask.sum())))

    hook = engine.loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        ops = [Generate(i, "", p, max_tokens=4) for i, p in enumerate([long, *shorts])]
        rec = run(engine, ops)
    finally:
        hook.remove()
    assert [rec.tokens(i) for i in range(7)] == alone
    assert any(rows == 6 for rows, _, _ in decode_passes), "the short streams never batched"
    for rows, width, real in decode_passes:
        assert width <= scheduler.PADDING_FLOOR + 1 or rows * width <= 2 * real, (
            f"a decode pass of {rows} rows padded to {width} holds only {real} positions"
        )
    assert all(rows == 1 for rows, width, _ in decode_passes if width > 600), (
        "the long stream shared a decode pass with short ones"
    )


# --------------------------------------------------------------------------- context length


@pytest.fixture(scope="module")
def small_context_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    """A one-layer random llama whose context is 32 tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=49152,
        max_position_embeddings=32,
        bos_token_id=1,
        eos_token_id=2,
    )
    folder = tmp_path_factory.mktemp("small-context")
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((tiny_model_path / name).read_bytes())
    return folder


def test_the_context_bounds_prompts_and_generations(small_context_path: Path) -> None:
    engine = Engine(lambda: load_model(str(small_context_path), dtype="float32"))
    try:
        ops = [
            Generate(1, "", long_prompt(32), max_tokens=5),
            Generate(2, "", long_prompt(28), max_tokens=10, logit_bias={2: -100.0}),
            Generate(3, "", long_prompt(20), max_tokens=3),
        ]
        rec = run(engine, ops)
        assert "fills the model's context of 32 tokens, which leaves no room" in rec.error(1)
        capped = rec.events[2]
        assert len(capped) == 4 and capped[-1].finish_reason == "length"  # type: ignore[union-attr]
        assert len(rec.tokens(3)) == 3
    finally:
        engine.close()


# --------------------------------------------------------------------------- grammars


class PanicException(BaseException):
    """Stands in for pyo3's PanicException, a BaseException, which llguidance raises when its
    Rust code panics."""


def test_an_oversized_grammar_is_refused_before_compiling(engine: Engine) -> None:
    grammar = "start: " + " | ".join(f'"w{i:06d}"' for i in range(30_000))  # ~330 KB
    rec = run(engine, [Generate(1, "", SHORT, 3, grammar=grammar)])
    assert f"over this engine's limit of {256 * 1024} bytes" in rec.error(1)


def gate_compiles(engine: Engine) -> threading.Event:
    """Hold every grammar compile until the returned event is set."""
    gate, compile_now = threading.Event(), engine.grammars.matcher

    def gated(grammar: str) -> Any:
        gate.wait(20)
        return compile_now(grammar)

    engine.grammars.matcher = gated  # type: ignore[method-assign]
    return gate


def test_a_slow_grammar_compile_does_not_stall_other_streams(engine: Engine) -> None:
    alone = solo(engine, SHORT, max_tokens=5)
    gate = gate_compiles(engine)

    def sink(event: Event) -> None:
        rec(event)
        if event.stream_id == 2 and is_terminal(event):
            gate.set()  # the plain stream is done: let the grammar compile

    rec = Recorder()
    ops = [Generate(1, "", SHORT, 4, grammar='start: /[0-9]+/ "."'), Generate(2, "", SHORT, 5)]
    engine.submit(ops, sink)
    rec.wait(1, 2)
    assert rec.tokens(2) == alone
    assert rec.log.index(("event", rec.events[2][-1])) < rec.first_token_at(1)
    text = engine.tokenizer.decode(rec.tokens(1))
    assert text[:1].isdigit() and set(text) <= set("0123456789.")


def test_a_grammar_that_does_not_compile_in_time_fails_alone() -> None:
    engine = make_engine(grammar_timeout_s=0.5)
    gate = gate_compiles(engine)
    try:
        ops = [Generate(1, "", SHORT, 4, grammar="start: /[0-9]+/"), Generate(2, "", SHORT, 5)]
        rec = run(engine, ops)
        assert "did not compile within 0.5 s" in rec.error(1)
        assert len(rec.tokens(2)) == 5
    finally:
        gate.set()
        engine.close()


def test_an_llguidance_panic_while_compiling_fails_only_its_stream(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Panicking:
        @staticmethod
        def grammar_from_lark(_text: str) -> str:
            raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(llguidance, "LLMatcher", Panicking)
    ops = [Generate(1, "", SHORT, 4, grammar="start: /[0-9]+/"), Generate(2, "", SHORT, 5)]
    rec = run(engine, ops)
    assert "invalid grammar" in rec.error(1) and "PanicException" in rec.error(1)
    assert len(rec.tokens(2)) == 5 and engine.alive


def test_an_llguidance_panic_while_masking_fails_only_its_stream(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def panic(*_args: Any) -> None:
        raise PanicException("index out of bounds")

    monkeypatch.setattr(llguidance.numpy, "fill_next_token_bitmask", panic)
    ops = [Generate(1, "", SHORT, 4, grammar="start: /[a-z]+/ /[0-9]+/"), Generate(2, "", SHORT, 5)]
    rec = run(engine, ops)
    assert "invalid grammar" in rec.error(1) and "token mask" in rec.error(1)
    assert len(rec.tokens(2)) == 5 and engine.alive
