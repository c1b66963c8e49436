"""The engine through an in-process LMTP client, on the embedded model: MODEL_INFO, GENERATE
(greedy equal to plain transformers, max_tokens, stop strings, grammars, logit_bias, seeds,
concurrent streams, cancellation), SCORE against plain transformers, errors that end one stream
and leave the engine serving, and KV prefix reuse across requests."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import pytest

from cogql.engine.engine import Engine
from cogql.lmtp.client import GenerateAfter, LMTPClient, LMTPError, ScoreAfter
from cogql.lmtp.messages import ErrorEvent, Event, Generate, Op, Score, TokenEvent
from cogql.lmtp.transports.inprocess import InProcessTransport
from cogql.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tests.conftest import ForwardLog, HFReference

PROMPTS = ["The capital of France is", "def fib(n):"]


def ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return [1, *tokenizer.encode(text)]  # BOS, as clients send it


async def generate(client: LMTPClient, prompt: list[int], **kw: Any) -> list[TokenEvent]:
    return [e async for e in client.generate(Generate(None, "", prompt, **kw))]


# --------------------------------------------------------------------------- MODEL_INFO


async def test_model_info(client: LMTPClient) -> None:
    info = await client.model_info()
    assert info["model"] == "SmolLM2-135M-Instruct"
    assert info["model_type"] == "transformers"
    assert (info["bos_token_id"], info["eos_token_id"], info["vocab_size"]) == (1, 2, 49152)
    assert {"stop", "grammar", "tokenizer"} <= await client.capabilities()


# --------------------------------------------------------------------------- GENERATE


@pytest.mark.parametrize("text", PROMPTS)
async def test_greedy_matches_plain_transformers(
    client: LMTPClient, tokenizer: Tokenizer, hf_reference: HFReference, text: str
) -> None:
    prompt = ids(tokenizer, text)
    events = await generate(client, prompt, max_tokens=8)
    # the engine decodes in float16 after the prompt (mixed precision on CPU); on these
    # prompts the greedy path is not close to a tie, so all 8 tokens must agree
    assert [e.token for e in events] == hf_reference.greedy(prompt, 8)


async def test_max_tokens(client: LMTPClient, tokenizer: Tokenizer) -> None:
    events = await generate(client, ids(tokenizer, "1, 2, 3, 4,"), max_tokens=5)
    assert len(events) == 5
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]
    assert all(e.logprob <= 0 and e.top_logprobs and e.token in e.top_logprobs for e in events)


async def test_stop_string_ends_the_stream(client: LMTPClient, tokenizer: Tokenizer) -> None:
    prompt = ids(tokenizer, "Q: Name a color.\nA:")
    unstopped = await generate(client, prompt, max_tokens=12)
    stopped = await generate(client, prompt, max_tokens=12, stop=["\n"])
    text = tokenizer.decode([e.token for e in stopped])
    assert "\n" in tokenizer.decode([e.token for e in unstopped])
    assert stopped[-1].finish_reason == "stop" and len(stopped) < 12
    assert "\n" in text and "\n" not in tokenizer.decode([e.token for e in stopped[:-1]])
    assert [e.token for e in stopped] == [e.token for e in unstopped[: len(stopped)]]


async def test_grammar_constrains_the_output(client: LMTPClient, tokenizer: Tokenizer) -> None:
    grammar = "start: VALUE\nVALUE: /[0-9]{3}-[0-9]{4}/"
    events = await generate(
        client, ids(tokenizer, "My phone number is"), max_tokens=20, grammar=grammar
    )
    text = tokenizer.decode([e.token for e in events])
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", text), text
    assert events[-1].finish_reason == "stop"


async def test_logit_bias_forces_a_token(client: LMTPClient, tokenizer: Tokenizer) -> None:
    (banana,) = tokenizer.encode(" banana")
    events = await generate(
        client, ids(tokenizer, "The sky is"), max_tokens=1, logit_bias={banana: 100.0}
    )
    assert [e.token for e in events] == [banana]


async def test_sampling_seed_reproduces(client: LMTPClient, tokenizer: Tokenizer) -> None:
    prompt = ids(tokenizer, "Once upon a time")

    async def sample(seed: int) -> list[int]:
        events = await generate(client, prompt, max_tokens=8, temperature=1.0, seed=seed)
        return [e.token for e in events]

    first, again, other = await sample(7), await sample(7), await sample(8)
    assert first == again and first != other


async def test_concurrent_streams_equal_sequential_ones(
    client: LMTPClient, tokenizer: Tokenizer
) -> None:
    prompts = [ids(tokenizer, t) for t in PROMPTS]
    alone = [await generate(client, p, max_tokens=6) for p in prompts]
    together = await asyncio.gather(*(generate(client, p, max_tokens=6) for p in prompts))
    assert [[e.token for e in s] for s in together] == [[e.token for e in s] for s in alone]


async def test_cancelled_stream_frees_the_engine(
    client: LMTPClient, engine: Engine, tokenizer: Tokenizer
) -> None:
    stream = client.generate(Generate(None, "", ids(tokenizer, "Once upon a time"), 500))
    async for _ in stream:
        break
    await stream.aclose()
    events = await generate(client, ids(tokenizer, "1, 2, 3,"), max_tokens=3)
    assert len(events) == 3
    for _ in range(100):  # the engine thread drops finished streams right after their last event
        if not engine._streams:
            break
        await asyncio.sleep(0.01)
    assert not engine._streams  # the cancelled stream was dropped, not run to 500 tokens


# --------------------------------------------------------------------------- SCORE


def reference_scores(
    hf_reference: HFReference, prompt: list[int], options: list[list[int]]
) -> list[list[float]]:
    return [hf_reference.continuation_logprobs(prompt, option) for option in options]


async def test_score_matches_plain_transformers(
    client: LMTPClient, engine: Engine, tokenizer: Tokenizer, hf_reference: HFReference
) -> None:
    engine.call(engine.cache.clear).result()
    prompt = ids(tokenizer, "The capital of France is")
    options = [tokenizer.encode(" Paris"), tokenizer.encode(" London Bridge station")]
    scores = await client.score(prompt, options)
    assert [len(s) for s in scores] == [len(o) for o in options]
    for got, expected in zip(scores, reference_scores(hf_reference, prompt, options), strict=True):
        assert got == pytest.approx(expected, abs=1e-4)
    assert scores[0][0] > scores[1][0]  # " Paris" is the likelier continuation


async def test_score_after_a_generate_on_the_same_prompt_matches_a_cold_score(
    client: LMTPClient, engine: Engine, tokenizer: Tokenizer, hf_reference: HFReference
) -> None:
    prompt = ids(tokenizer, "The capital of France is")
    options = [tokenizer.encode(" Paris"), tokenizer.encode(" Rome")]
    engine.call(engine.cache.clear).result()
    await generate(client, prompt, max_tokens=3)
    warm = await client.score(prompt, options)
    for got, expected in zip(warm, reference_scores(hf_reference, prompt, options), strict=True):
        assert got == pytest.approx(expected, abs=1e-4)


async def test_a_score_after_a_generate_scores_its_tokens_then_the_suffix(
    client: LMTPClient, tokenizer: Tokenizer, hf_reference: HFReference
) -> None:
    """The `after` extension: options scored in the GENERATE's message, after its prompt, its
    tokens and a suffix, equal to scoring that whole sequence on its own."""
    prompt = ids(tokenizer, "The capital of France is")
    suffix = tokenizer.encode(". So the answer is")
    options = [tokenizer.encode(" Paris"), tokenizer.encode(" London Bridge")]
    then = ScoreAfter(suffix, options)
    events = [e async for e in client.generate(Generate(None, "", prompt, 4), [then])]
    tokens = [e.token for e in events if e.token != tokenizer.eos_token_id]
    scores = await then.result
    assert scores is not None
    expected = reference_scores(hf_reference, prompt + tokens + suffix, options)
    for got, want in zip(scores, expected, strict=True):  # the generated tokens' keys may
        assert got == pytest.approx(want, abs=5e-3)  # come from a reduced-precision decode


async def test_a_generate_after_a_generate_continues_its_tokens(
    client: LMTPClient, tokenizer: Tokenizer
) -> None:
    """A chain in one message: B after A, the options after B, as separate requests would go."""
    prompt = ids(tokenizer, "The capital of France is")
    middle, options = tokenizer.encode(". Italy's is"), [tokenizer.encode(" Rome")]
    b, then = GenerateAfter(Generate(None, "", middle, 3)), ScoreAfter([], options)
    a = [e.token async for e in client.generate(Generate(None, "", prompt, 4), [b, then])]
    got_b = [e.token async for e in b.events()]
    assert b.sent and len(got_b) == 3
    want_b = await generate(client, prompt + a + middle, max_tokens=3)
    assert got_b == [e.token for e in want_b]
    scores = await then.result
    want = await client.score(prompt + a + middle + got_b, options)
    assert scores is not None and scores[0] == pytest.approx(want[0], abs=5e-3)


async def test_what_follows_a_refused_generate_is_refused(
    client: LMTPClient, tokenizer: Tokenizer
) -> None:
    got: dict[Any, list[Event]] = {}
    done = asyncio.Event()

    def on_event(event: Event) -> None:
        got.setdefault(event.stream_id, []).append(event)
        if len(got) == 3:
            done.set()

    ops: list[Op] = [
        Generate(1, "", [], 2, after=2),  # names a GENERATE that comes later: refused
        Generate(2, "", tokenizer.encode(" Rome"), 2, after=1),
        Score(3, "", [], tokenizer.encode(" Paris"), after=2),
    ]
    client.transport.send(ops, on_event)
    await asyncio.wait_for(done.wait(), 5)
    assert "names no GENERATE sent before it" in got[1][0].error  # type: ignore[union-attr]
    for i in (2, 3):  # 2 follows a refused op, so 3 follows nothing that runs
        assert "names no GENERATE sent before it" in got[i][0].error  # type: ignore[union-attr]


async def test_nothing_runs_after_a_generate_that_was_cut(
    client: LMTPClient, engine: Engine, tokenizer: Tokenizer
) -> None:
    b = GenerateAfter(Generate(None, "", [], 3))
    then = ScoreAfter([], [tokenizer.encode(" Paris")])
    stream = client.generate(Generate(None, "", ids(tokenizer, "Once upon a time"), 500), [b, then])
    async for _ in stream:
        break
    await stream.aclose()
    assert await asyncio.wait_for(then.result, 5) is None
    with pytest.raises(LMTPError, match="did not end"):
        await asyncio.wait_for(anext(b.events()), 5)
    assert len(await generate(client, ids(tokenizer, "1, 2, 3,"), max_tokens=3)) == 3


async def test_score_after_without_the_extension_is_not_sent(
    engine: Engine, tokenizer: Tokenizer
) -> None:
    sent: list[Op] = []
    transport = InProcessTransport(engine)
    real = transport.send
    transport.send = lambda ops, on_event: (sent.extend(ops), real(ops, on_event))[1]  # type: ignore[method-assign]
    plain = LMTPClient(transport, model="embedded", use_extensions=False)
    then = ScoreAfter([], [tokenizer.encode(" Paris")])
    events = [e async for e in plain.generate(Generate(None, "", ids(tokenizer, "Hi"), 2), [then])]
    assert len(events) == 2 and then.result.result() is None
    assert [type(op) for op in sent] == [Generate]


async def test_a_score_after_an_unknown_stream_is_an_error(
    client: LMTPClient, tokenizer: Tokenizer
) -> None:
    got: list[Event] = []
    done = asyncio.Event()

    def on_event(event: Event) -> None:
        got.append(event)
        done.set()

    client.transport.send([Score(5, "", [], tokenizer.encode(" Paris"), after=4)], on_event)
    await asyncio.wait_for(done.wait(), 5)
    assert isinstance(got[0], ErrorEvent) and got[0].stream_id == 5
    assert "names no GENERATE sent before it" in got[0].error


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("prompt", "options", "message"),
    [
        ([1, 10**6], {}, "outside the vocabulary"),
        ([], {}, "prompt is empty"),
        ([1, 504], {"grammar": "start: ("}, "invalid grammar"),
        ([1, 504], {"logit_bias": {10**6: 5.0}}, "outside the vocabulary"),
    ],
)
async def test_bad_generate_is_an_error_event(
    client: LMTPClient, tokenizer: Tokenizer, prompt: list[int], options: Any, message: str
) -> None:
    with pytest.raises(LMTPError, match=message):
        await generate(client, prompt, max_tokens=3, **options)
    assert len(await generate(client, ids(tokenizer, "Hello"), max_tokens=2)) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [([[10**6]], "outside the vocabulary"), ([[]], "at least one token")],
)
async def test_bad_score_is_an_error(
    client: LMTPClient, tokenizer: Tokenizer, options: list[list[int]], message: str
) -> None:
    with pytest.raises(LMTPError, match=message):
        await client.score(ids(tokenizer, "Hello"), options)
    assert len((await client.score(ids(tokenizer, "Hello"), [[28]]))[0]) == 1


async def test_a_bad_stream_does_not_disturb_a_good_one(
    client: LMTPClient, tokenizer: Tokenizer
) -> None:
    prompt = ids(tokenizer, "1, 2, 3,")
    alone = await generate(client, prompt, max_tokens=6)
    good, bad = await asyncio.gather(
        generate(client, prompt, max_tokens=6),
        generate(client, [1, 10**6], max_tokens=6),
        return_exceptions=True,
    )
    assert isinstance(bad, LMTPError)
    assert [e.token for e in good] == [e.token for e in alone]


# --------------------------------------------------------------------------- KV prefix cache


async def test_a_longer_prompt_reuses_the_cached_prefix(
    client: LMTPClient, engine: Engine, tokenizer: Tokenizer, forwards: ForwardLog
) -> None:
    engine.call(engine.cache.clear).result()
    prompt = ids(tokenizer, "Q: What is the capital of France?\nA:")
    first = [e.token for e in await generate(client, prompt, max_tokens=4)]
    extension = tokenizer.encode("\nQ: And of Italy?\nA:")
    longer = prompt + first + extension
    n_before = len(forwards.shapes)
    reused = [e.token for e in await generate(client, longer, max_tokens=4)]
    second_prompt_pass = forwards.shapes[n_before]
    # the cache held the prompt and the first 3 generated tokens (the 4th was never fed back),
    # so only that 4th token and the extension go through the model
    assert second_prompt_pass == (1, 1 + len(extension))
    engine.call(engine.cache.clear).result()
    assert [e.token for e in await generate(client, longer, max_tokens=4)] == reused
