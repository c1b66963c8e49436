"""The scripted transport (lmtp/transports/scripted.py) through an LMTP client: noise that
depends only on the seed and the sequence, replies written as scripted and noise off the
script, `logit_bias` and seeds as an LMQL server applies them, SCORE log-probs that are the
GENERATE's, cancellation, MODEL_INFO, and an error for the extensions it does not have."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cogql.lmtp.client import LMTPClient, LMTPError
from cogql.lmtp.messages import Generate, TokenEvent
from cogql.lmtp.transports.scripted import Continuations, RandomLogits, ScriptedTransport, replies
from cogql.tokenizer import Tokenizer

PROMPT = "Q: Is water wet?\nA:"


def client_for(tokenizer: Tokenizer, script: dict[str, str] | None = None) -> LMTPClient:
    noise = RandomLogits(tokenizer.vocab_size, seed=3)
    logits = noise if script is None else Continuations(tokenizer, replies(script), noise)
    return LMTPClient(ScriptedTransport(tokenizer, logits), model="scripted")


async def generate(client: LMTPClient, op: Generate) -> list[TokenEvent]:
    return [event async for event in client.generate(op)]


def ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_token_id or 0, *tokenizer.encode(text)]


def test_noise_depends_only_on_the_seed_and_the_sequence() -> None:
    a, b = RandomLogits(100, seed=1), RandomLogits(100, seed=2)
    assert np.array_equal(a([5, 6]), RandomLogits(100, seed=1)([5, 6]))
    assert not np.array_equal(a([5, 6]), a([6, 5]))
    assert not np.array_equal(a([5, 6]), b([5, 6]))


def test_replies_continue_the_text_so_far_and_have_no_opinion_off_script() -> None:
    write = replies({"Q:": " one", "Q: two?": " three"})
    assert write("Q:") == " one"
    assert write("Q: o") == "ne"
    assert write("Q: one") == ""  # written out: the model ends here
    assert write("Q: two?") == " three"  # the longest prompt wins
    assert write("Q: x") is None and write("Other") is None


async def test_the_model_writes_its_reply_then_eos(tokenizer: Tokenizer) -> None:
    client = client_for(tokenizer, {PROMPT: " Yes, it is."})
    events = await generate(client, Generate(None, "", ids(tokenizer, PROMPT), max_tokens=20))
    tokens = [e.token for e in events]
    assert tokenizer.decode(tokens[:-1]) == " Yes, it is."
    assert tokens[-1] == tokenizer.eos_token_id and events[-1].finish_reason == "stop"
    assert all(e.logprob > -1e-3 for e in events)  # a scripted token gets all the mass


async def test_max_tokens_ends_with_length(tokenizer: Tokenizer) -> None:
    client = client_for(tokenizer)
    events = await generate(client, Generate(None, "", ids(tokenizer, PROMPT), max_tokens=3))
    assert len(events) == 3 and [e.finish_reason for e in events] == [None, None, "length"]
    [none] = await generate(client, Generate(None, "", ids(tokenizer, PROMPT), max_tokens=0))
    assert (none.token, none.finish_reason) == (tokenizer.eos_token_id, "length")


async def test_logit_bias_masks_as_on_an_lmql_server(tokenizer: Tokenizer) -> None:
    """-100 on the scripted token: the next best is taken; +100 on two ids: one of them."""
    client = client_for(tokenizer, {PROMPT: " Yes"})
    prompt = ids(tokenizer, PROMPT)
    yes = tokenizer.encode(" Yes")[0]
    op = Generate(None, "", prompt, max_tokens=1, logit_bias={yes: -100.0})
    [event] = await generate(client, op)
    assert event.token != yes
    op = Generate(None, "", prompt, max_tokens=4, logit_bias={7: 100.0, 9: 100.0})
    assert {e.token for e in await generate(client, op)} <= {7, 9}


async def test_sampling_with_a_seed_reproduces(tokenizer: Tokenizer) -> None:
    client = client_for(tokenizer)
    prompt = ids(tokenizer, PROMPT)

    async def sample(seed: int) -> list[int]:
        op = Generate(None, "", prompt, max_tokens=6, temperature=1.0, seed=seed)
        return [e.token for e in await generate(client, op)]

    assert await sample(1) == await sample(1)
    assert await sample(1) != await sample(2)


async def test_score_gives_the_log_probs_generate_reported(tokenizer: Tokenizer) -> None:
    client = client_for(tokenizer)
    prompt = ids(tokenizer, PROMPT)
    events = await generate(client, Generate(None, "", prompt, max_tokens=4, top_logprobs=3))
    [scores] = await client.score(prompt, [[e.token for e in events]])
    assert scores == pytest.approx([e.logprob for e in events])
    assert all(len(e.top_logprobs or {}) == 3 for e in events)
    assert all(max((e.top_logprobs or {}).values()) == e.logprob for e in events)  # greedy


async def test_a_cancelled_generate_stops_where_it_is(tokenizer: Tokenizer) -> None:
    transport = ScriptedTransport(tokenizer)
    got: list[TokenEvent] = []
    op = Generate(1, "", ids(tokenizer, PROMPT), max_tokens=10_000)
    [handle] = transport.send([op], lambda event: got.append(event))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    handle.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert 0 < len(got) < 10 and got[-1].finish_reason is None


async def test_model_info_and_the_extensions_it_lacks(tokenizer: Tokenizer) -> None:
    client = client_for(tokenizer)
    info = await client.model_info()
    assert info["model_type"] == "scripted" and info["capabilities"] == ["seed"]
    assert info["eos_token_id"] == tokenizer.eos_token_id
    client.known_capabilities = frozenset({"seed", "stop"})  # as if the server had it
    op = Generate(None, "", ids(tokenizer, PROMPT), max_tokens=3, stop=["."])
    with pytest.raises(LMTPError, match="speaks plain LMTP and got stop"):
        await generate(client, op)
