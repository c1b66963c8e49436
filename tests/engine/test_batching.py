"""Continuous batching: concurrent GENERATE streams share one forward pass per step, join and
leave the running batch at token boundaries, and get the tokens they would get alone.

A float32 engine is used so that batched and solo steps run in the same precision (the
default CPU engine may pick another precision for batched steps, which can flip near-ties)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from cogql.engine.batch import PrecisionTuner
from cogql.engine.engine import Engine
from cogql.engine.kvcache import CacheEntry
from cogql.engine.models.precision import native_bfloat16
from cogql.lmtp.client import LMTPClient
from cogql.lmtp.messages import ErrorEvent, Generate, TokenEvent
from cogql.lmtp.transports.inprocess import InProcessTransport, local_engine
from cogql.tokenizer import Tokenizer
from tests.conftest import holds_weights

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
]


@pytest.fixture(scope="module")
@holds_weights
def fp32_engine() -> Engine:
    return local_engine(None, dtype="float32")


@pytest.fixture
def fp32_client(fp32_engine: Engine) -> LMTPClient:
    return LMTPClient(InProcessTransport(fp32_engine))


async def tokens(client: LMTPClient, prompt: list[int], n: int) -> list[int]:
    return [e.token async for e in client.generate(Generate(None, "", prompt, max_tokens=n))]


def prompt_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return [1, *tokenizer.encode(text)]


async def test_concurrent_streams_match_solo_runs(
    fp32_client: LMTPClient, fp32_engine: Engine, tokenizer: Tokenizer
) -> None:
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    lengths = [12, 6, 12, 9]  # streams leave the batch at different steps
    solo = [await tokens(fp32_client, p, n) for p, n in zip(prompts, lengths, strict=True)]
    batch = fp32_engine.runner.batch
    steps, rows = batch.steps, batch.rows
    together = await asyncio.gather(
        *(tokens(fp32_client, p, n) for p, n in zip(prompts, lengths, strict=True))
    )
    assert together == solo
    assert batch.steps > steps, "concurrent streams never shared a forward pass"
    assert (batch.rows - rows) / (batch.steps - steps) > 2  # several rows per shared step


async def test_a_stream_joins_a_running_batch(
    fp32_client: LMTPClient, fp32_engine: Engine, tokenizer: Tokenizer
) -> None:
    first, late = prompt_ids(tokenizer, PROMPTS[1]), prompt_ids(tokenizer, PROMPTS[0])
    alone = await tokens(fp32_client, late, 8)

    async def join_later() -> list[int]:
        await asyncio.sleep(0.3)  # the first stream is decoding by now
        return await tokens(fp32_client, late, 8)

    long_run, joined = await asyncio.gather(tokens(fp32_client, first, 30), join_later())
    assert joined == alone
    assert len(long_run) == 30


async def test_cancelling_one_stream_leaves_the_others(
    fp32_client: LMTPClient, tokenizer: Tokenizer
) -> None:
    a, b = prompt_ids(tokenizer, PROMPTS[2]), prompt_ids(tokenizer, PROMPTS[3])
    expected = await tokens(fp32_client, b, 10)

    async def abandon() -> int:
        got = 0
        async for _ in fp32_client.generate(Generate(None, "", a, max_tokens=40)):
            got += 1
            if got == 3:
                break  # the client cancels the stream in the engine
        return got

    stopped, kept = await asyncio.gather(abandon(), tokens(fp32_client, b, 10))
    assert stopped == 3 and kept == expected


def test_tuner_gives_a_clearly_slower_precision_one_trial() -> None:
    tuner = PrecisionTuner(3)
    seconds = {0: 0.150, 1: 0.060, 2: 0.070}  # e.g. fp16, bf16, fp32 at sixteen rows
    picked = []
    for _ in range(12):
        choice = tuner.pick(16)
        picked.append(choice)
        tuner.record(16, choice, seconds[choice])
    trials = 1 + 2 * PrecisionTuner.TRIALS
    timed = picked[:trials]
    assert timed.count(0) == 1
    assert timed.count(1) == timed.count(2) == PrecisionTuner.TRIALS
    assert set(picked[trials:]) == {1}, "once timed, the fastest runs every step"
    assert tuner.pick(3) == 0, "another batch-size class is timed on its own"


def test_cast_rounds_from_the_exact_keys_once() -> None:
    torch.manual_seed(0)
    keys, values = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    entry = CacheEntry(ids=list(range(5)))
    entry.past = DynamicCache(ddp_cache_data=[(keys, values)])
    entry.cast(torch.float16)
    entry.cast(torch.bfloat16)
    layer = entry.past.layers[0]
    twice = keys.to(torch.float16).to(torch.bfloat16)
    assert not torch.equal(twice, keys.to(torch.bfloat16)), "the data shows no double rounding"
    assert torch.equal(layer.keys, keys.to(torch.bfloat16))
    entry.cast(torch.float32)
    assert torch.equal(entry.past.layers[0].keys, keys)
    assert torch.equal(entry.past.layers[0].values, values)


def test_decode_copies_follow_the_cpu(fp32_engine: Engine) -> None:
    loaded = local_engine(None).loaded
    dtypes = [next(m.parameters()).dtype for m in loaded.decode_models]
    assert dtypes == [torch.float16, torch.bfloat16][: len(dtypes)]
    assert len(dtypes) == (2 if native_bfloat16() else 1)
    assert fp32_engine.loaded.decode_dtypes == (), "an explicit dtype gets no decode copies"


def run_together(engine: Engine, ops: list[Generate]) -> dict[int, list[Any]]:
    """Submit ops in one message (as a BATCH frame or a Replicate prediction does)."""
    events: dict[int, list[Any]] = {op.stream_id: [] for op in ops}
    done = threading.Event()

    def sink(event: Any) -> None:
        events[event.stream_id].append(event)
        if all(
            e and (isinstance(e[-1], ErrorEvent) or e[-1].finish_reason) for e in events.values()
        ):
            done.set()

    engine.submit(ops, sink)
    assert done.wait(60)
    return events


def test_streams_arriving_together_share_one_prefill(
    fp32_engine: Engine, tokenizer: Tokenizer
) -> None:
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS[:3]]
    fp32_engine.call(fp32_engine.cache.clear).result()
    cached = prompts[1][:5]  # a prefix in the cache: that row only computes the rest
    solo = {}
    for i, p in enumerate(prompts):
        got = run_together(fp32_engine, [Generate(i, "", p, max_tokens=6)])
        solo[i] = [e.token for e in got[i]]
    fp32_engine.call(fp32_engine.cache.clear).result()
    run_together(fp32_engine, [Generate(9, "", cached, max_tokens=1)])
    shapes: list[tuple[int, ...]] = []
    hook = fp32_engine.loaded.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        ops = [Generate(i, "", p, max_tokens=6) for i, p in enumerate(prompts)]
        together = run_together(fp32_engine, ops)
    finally:
        hook.remove()
    assert {i: [e.token for e in evs] for i, evs in together.items()} == solo
    width = max(len(prompts[0]), len(prompts[1]) - 5, len(prompts[2]))
    assert shapes[0] == (3, width), "the three prompts were not prefilled in one pass"


def test_a_bad_prompt_arriving_with_others_fails_alone(
    fp32_engine: Engine, tokenizer: Tokenizer
) -> None:
    good = prompt_ids(tokenizer, PROMPTS[0])
    ops = [Generate(1, "", good, max_tokens=3), Generate(2, "", [1, 10**9], max_tokens=3)]
    events = run_together(fp32_engine, ops)
    assert [type(e) for e in events[1]] == [TokenEvent] * 3
    assert [type(e) for e in events[2]] == [ErrorEvent]
