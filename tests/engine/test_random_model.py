"""The `random` model (LMQL's weightless test model): seeded random logits over a real tokenizer.

Its logits after a token sequence depend only on the seed and that sequence, so every engine
path (prefill alone or padded together, batched decode, scoring with repeated cache rows, the
prefix cache) must give the tokens and log-probs of a plain, cache-free forward pass over the
whole sequence: the reference here. Then: seeds and tokenizers, MODEL_INFO, bad options,
constraints through full queries, LMQL's spellings (`lmql.model("random", seed=...)`, `vocab=`),
a websocket server in front of it, and LMQL's `llama.cpp:` model strings."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import cogql
import cogql.compat as lmql
from cogql.engine.engine import Engine
from cogql.engine.models import (
    ModelNotFound,
    ModelOptionError,
    embedded_gguf,
    load_model,
    resolve_model_path,
)
from cogql.engine.random_model import RandomConfig, RandomModel
from cogql.lmtp.client import LMTPClient
from cogql.lmtp.messages import Generate, TokenEvent
from cogql.lmtp.transports.inprocess import InProcessTransport, local_engine
from cogql.lmtp.transports.websocket import close_connections
from cogql.serve import BackgroundServer
from cogql.tokenizer import TokenizerNotFound

SEED = 123
PROMPT_TEXT = "The capital of France is"
OTHER_TEXTS = ["x", "def fib(n):\n    return", "Once upon a time, in a land far away, there"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return local_engine("random", seed=SEED)


@pytest.fixture
def client(engine: Engine) -> LMTPClient:
    return LMTPClient(InProcessTransport(engine), model="random")


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real byte-level BPE tokenizer of 300 ids, trained here: not the embedded one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator([PROMPT_TEXT, *OTHER_TEXTS] * 20, trainer)
    folder = tmp_path_factory.mktemp("small-bpe")
    tk.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def ids(engine: Engine, text: str) -> list[int]:
    return [engine.tokenizer.bos_token_id, *engine.tokenizer.encode(text)]


async def generate(client: LMTPClient, prompt: list[int], **kw: Any) -> list[TokenEvent]:
    return [e async for e in client.generate(Generate(None, "", prompt, **kw))]


def tokens(events: list[TokenEvent]) -> list[int]:
    return [e.token for e in events]


def reference_logits(engine: Engine, sequence: list[int]) -> torch.Tensor:
    """Next-token logits after `sequence` from one cache-free pass over all of it (on the
    engine's thread, so the test thread starts no torch thread pool of its own)."""
    model = engine.loaded.model

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([sequence]), logits_to_keep=1).logits[0, -1]

    return engine.call(run).result()


def reference_greedy(engine: Engine, prompt: list[int], n: int) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        out.append(int(reference_logits(engine, prompt + out).argmax()))
    return out


class Forwards:
    """Shapes and masks of the random model's forward passes (a pre-hook: an observer)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        shape = tuple(kwargs["input_ids"].shape)
        self.calls.append((shape, kwargs.get("attention_mask") is not None))


@pytest.fixture
def forwards(engine: Engine) -> Iterator[Forwards]:
    log = Forwards()
    hook = engine.loaded.model.register_forward_pre_hook(log, with_kwargs=True)
    yield log
    hook.remove()


# --------------------------------------------------------------------------- the module itself


def test_logits_depend_only_on_seed_and_sequence(engine: Engine) -> None:
    """One pass over a sequence, one token at a time through a cache, and inside a batch
    whose rows are padded (junk ids under a zero mask, left or right) give the same logits."""
    model = RandomModel(RandomConfig(seed=7, vocab_size=500))
    other_seed = RandomModel(RandomConfig(seed=8, vocab_size=500))
    seq = [3, 14, 15, 92, 65, 35]
    batch = torch.tensor([[9, 9, *seq], [*seq, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]])

    def run() -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        with torch.inference_mode():
            whole = model(input_ids=torch.tensor([seq])).logits[0]
            cache = DynamicCache(config=model.config)
            steps = [model(input_ids=torch.tensor([[t]]), cache=cache).logits[0, 0] for t in seq]
            padded = model(input_ids=batch, attention_mask=mask).logits
            other = other_seed(input_ids=torch.tensor([seq])).logits[0]
        return whole, torch.stack(steps), padded[0, 2:], padded[1, :6], other

    whole, steps, left, right, other = engine.call(run).result()
    assert whole.shape == (6, 500)
    assert torch.equal(whole, steps) and torch.equal(whole, left) and torch.equal(whole, right)
    assert not torch.equal(whole, other)
    assert len({int(row.argmax()) for row in whole}) > 1  # positions differ from one another


# --------------------------------------------------------------------------- engine paths


async def test_generate_matches_the_cache_free_reference(
    client: LMTPClient, engine: Engine
) -> None:
    prompt = ids(engine, PROMPT_TEXT)
    events = await generate(client, prompt, max_tokens=10)
    assert tokens(events) == reference_greedy(engine, prompt, 10)
    first = torch.log_softmax(reference_logits(engine, prompt), -1)
    assert events[0].logprob == pytest.approx(float(first[events[0].token]), abs=1e-6)


async def test_a_stream_batched_with_others_gets_the_same_tokens(
    client: LMTPClient, engine: Engine, forwards: Forwards
) -> None:
    prompt = ids(engine, PROMPT_TEXT)
    alone = await generate(client, prompt, max_tokens=12)
    engine.cache.clear()
    forwards.calls.clear()
    others = [
        generate(client, ids(engine, t), max_tokens=n)
        for t, n in zip(OTHER_TEXTS, (5, 9, 14), strict=True)
    ]
    together = await asyncio.gather(generate(client, prompt, max_tokens=12), *others)
    assert tokens(together[0]) == tokens(alone)
    assert [e.logprob for e in together[0]] == [e.logprob for e in alone]
    for text, events in zip(OTHER_TEXTS, together[1:], strict=True):
        assert tokens(events) == reference_greedy(engine, ids(engine, text), len(events))
    # the prompts were prefilled in one padded pass and decoded in batched steps
    assert ((4, max(len(ids(engine, t)) for t in [PROMPT_TEXT, *OTHER_TEXTS])), True) in (
        forwards.calls
    )
    assert any(shape[0] > 1 and shape[1] == 1 and masked for shape, masked in forwards.calls)


async def test_a_cached_prefix_does_not_change_the_tokens(
    client: LMTPClient, engine: Engine, forwards: Forwards
) -> None:
    prompt = ids(engine, PROMPT_TEXT + " a city that")
    engine.cache.clear()
    cold = await generate(client, prompt, max_tokens=8)
    engine.cache.clear()
    await generate(client, ids(engine, PROMPT_TEXT), max_tokens=3)  # leaves a prefix cached
    forwards.calls.clear()
    warm = await generate(client, prompt, max_tokens=8)
    assert tokens(warm) == tokens(cold) == reference_greedy(engine, prompt, 8)
    assert forwards.calls[0][0][1] < len(prompt)  # only the tail was computed


async def test_score_logprobs_equal_the_generate_logprobs(
    client: LMTPClient, engine: Engine
) -> None:
    prompt = ids(engine, PROMPT_TEXT)
    events = await generate(client, prompt, max_tokens=6)
    generated = tokens(events)
    engine.cache.clear()
    shorter, other = generated[:2], [generated[0], 17, 4242]
    scored = await client.score(prompt, [generated, shorter, other])
    assert scored[0] == pytest.approx([e.logprob for e in events], abs=1e-6)
    assert scored[1] == pytest.approx(scored[0][:2], abs=1e-6)
    assert scored[2][0] == pytest.approx(scored[0][0], abs=1e-6)
    after = torch.log_softmax(reference_logits(engine, [*prompt, generated[0], 17]), -1)
    assert scored[2][2] == pytest.approx(float(after[4242]), abs=1e-5)


async def test_top_logprobs_are_the_reference_distributions_best(
    client: LMTPClient, engine: Engine
) -> None:
    prompt = ids(engine, "Top five:")
    (event,) = await generate(client, prompt, max_tokens=1, top_logprobs=5)
    reference = torch.log_softmax(reference_logits(engine, prompt), -1)
    values, best = torch.topk(reference, 5)
    assert list(event.top_logprobs) == best.tolist()
    assert list(event.top_logprobs.values()) == pytest.approx(values.tolist(), abs=1e-6)
    assert event.token == best[0] and event.logprob < 0


async def test_sampling_with_a_seed_reproduces(client: LMTPClient, engine: Engine) -> None:
    prompt = ids(engine, "Sample:")

    async def sample(seed: int) -> list[int]:
        return tokens(await generate(client, prompt, max_tokens=8, temperature=1.0, seed=seed))

    first, again, other = await sample(1), await sample(1), await sample(2)
    assert first == again and first != other
    assert first != tokens(await generate(client, prompt, max_tokens=8))


async def test_a_grammar_and_a_stop_string_hold(client: LMTPClient, engine: Engine) -> None:
    prompt = ids(engine, "Phone:")
    grammar = "start: VALUE\nVALUE: /[0-9]{3}-[0-9]{4}/"
    text = engine.tokenizer.decode(
        tokens(await generate(client, prompt, max_tokens=20, grammar=grammar))
    )
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", text), text
    free = engine.tokenizer.decode(tokens(await generate(client, prompt, max_tokens=30)))
    stop = free[5:7]  # two characters it generates anyway
    stopped = await generate(client, prompt, max_tokens=30, stop=[stop])
    out = engine.tokenizer.decode(tokens(stopped))
    assert stopped[-1].finish_reason == "stop" and stop in out
    assert free.startswith(out) and out.index(stop) == free.index(stop)


# --------------------------------------------------------------------------- seeds, tokenizers


def test_each_seed_and_tokenizer_gets_its_own_engine(engine: Engine, small_tokenizer: Path) -> None:
    assert local_engine("random", seed=SEED) is engine
    assert local_engine("random", seed=SEED + 1) is not engine
    small = local_engine("random", seed=SEED, tokenizer=str(small_tokenizer))
    assert small is not engine and small.tokenizer.vocab_size == 300
    assert small.loaded.model.get_input_embeddings().num_embeddings == 300


async def test_seeds_give_different_text() -> None:
    query = '"Tell me: [X]" where len(TOKENS(X)) < 8'
    one = await cogql.run(query, model=cogql.model("random", seed=1))
    again = await cogql.run(query, model=cogql.model("random", seed=1))
    two = await cogql.run(query, model=cogql.model("random", seed=2))
    assert one["X"] == again["X"] and one["X"] != two["X"]


async def test_a_trained_tokenizer_through_a_query(small_tokenizer: Path) -> None:
    model = cogql.model("random", seed=4, tokenizer=str(small_tokenizer))
    result = await cogql.run('"Once upon [X]" where len(TOKENS(X)) < 6', model=model)
    conn = await model.connect()
    assert conn.tokenizer.vocab_size == 300
    assert result["X"] and result.prompt == "Once upon " + result["X"]


async def test_model_info_names_seed_and_tokenizer_without_local_paths(
    small_tokenizer: Path,
) -> None:
    engine = local_engine("random", seed=9, tokenizer=str(small_tokenizer))
    info = await LMTPClient(InProcessTransport(engine), model="random").model_info()
    assert (info["model"], info["model_type"], info["seed"]) == ("random", "random", 9)
    assert info["tokenizer_name"] == small_tokenizer.name
    assert info["constructor"] == f"random(seed=9, tokenizer={small_tokenizer.name!r})"
    assert (info["vocab_size"], info["bos_token_id"], info["eos_token_id"]) == (300, 0, 1)
    assert info["dtype"] == "float32" and "grammar" in info["capabilities"]
    assert str(small_tokenizer.parent) not in json.dumps(info)
    default = await LMTPClient(InProcessTransport(local_engine("random")), model="r").model_info()
    assert (default["seed"], default["tokenizer_name"]) == (0, "SmolLM2-135M-Instruct")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"seed": "abc"}, ModelOptionError, "seed must be an integer, got 'abc'"),
        ({"seed": 1.5}, ModelOptionError, "seed must be an integer"),
        ({"temprature": 1}, ModelOptionError, "not temprature"),
        ({"dtype": "float16"}, ModelOptionError, "computes in float32"),
        ({"tokenizer": "a", "vocab": "b"}, ModelOptionError, "disagree"),
        ({"tokenizer": "/nonexistent/tok"}, TokenizerNotFound, "/nonexistent/tok"),
    ],
)
def test_bad_options_are_refused_clearly(kwargs: dict[str, Any], error: type, message: str):
    with pytest.raises(error, match=re.escape(message)):
        load_model("random", **kwargs)


def test_vocab_is_lmqls_name_for_the_tokenizer(small_tokenizer: Path) -> None:
    assert lmql.model("random", vocab=str(small_tokenizer)).tokenizer == str(small_tokenizer)
    loaded = load_model("random", vocab=str(small_tokenizer), verbose=True)
    assert loaded.tokenizer.vocab_size == 300
    with pytest.raises(ValueError, match="disagree"):
        cogql.model("random", tokenizer="a", vocab="b")


# --------------------------------------------------------------------------- full queries


def test_int_constraint_on_random_text() -> None:
    model = cogql.model("random", seed=1)
    result = cogql.run_sync('"Count: [N]" where INT(N) and len(TOKENS(N)) < 6', model=model)
    assert isinstance(result["N"], int)


def test_regex_constraint_on_random_text() -> None:
    model = cogql.model("random", seed=1)
    query = '"Code: [C]" where REGEX(C, r"[a-z]{3}-[0-9]{2}")'
    assert re.fullmatch(r"[a-z]{3}-[0-9]{2}", cogql.run_sync(query, model=model)["C"])


def test_in_constraint_keeps_leading_spaces() -> None:
    options = [" yes", " no", " maybe so"]
    for seed in (1, 2, 3):
        result = cogql.run_sync(
            '"Answer:[A]" where A in OPTIONS',
            OPTIONS=options,
            model=cogql.model("random", seed=seed),
        )
        assert result["A"] in options


async def test_a_stop_phrase_that_straddles_two_tokens() -> None:
    """The first two characters that cross a token boundary of the free text (and occur
    nowhere before) become the stop phrase: the same tokens come out, since they depend only
    on the prompt, up to the phrase."""
    model = cogql.model("random", seed=5)
    query = '"Say:[X]" where len(TOKENS(X)) < 25'
    free = (await cogql.run(query, model=model))["X"]
    conn = await model.connect()
    prompt = [conn.bos_token_id, *conn.tokenizer.encode("Say:")]
    generated = tokens([e async for e in conn.client.generate(Generate(None, "", prompt, 24))])
    assert conn.tokenizer.decode(generated) == free
    ends = [len(conn.tokenizer.decode(generated[: i + 1])) for i in range(len(generated) - 1)]
    end = next(e for e in ends if e > 0 and free.find(free[e - 1 : e + 1]) == e - 1)
    phrase = free[end - 1 : end + 1]
    kept = await cogql.run(query + " and STOPS_AT(X, P)", P=phrase, model=model)
    assert kept["X"] == free[: end + 1]
    cut = await cogql.run(query + " and STOPS_BEFORE(X, P)", P=phrase, model=model)
    assert cut["X"] == free[: end - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lmqls_client_side_method_gives_the_same_values(seed: int) -> None:
    """Without the extensions the client masks with logit_bias and stops on its side (LMQL's
    method); logits that depend only on the sequence must lead to the same values."""
    query = (
        '"Name:[NAME]\\nAge:[AGE]\\nMood:[MOOD]" where len(TOKENS(NAME)) < 6 and '
        'STOPS_AT(NAME, "e") and INT(AGE) and len(TOKENS(AGE)) < 4 and '
        'MOOD in [" happy", " sad", " so-so"]'
    )
    served = cogql.run_sync(query, model=cogql.model("random", seed=seed))
    emulated = cogql.run_sync(query, model=cogql.model("random", seed=seed, extensions=False))
    assert served.variables == emulated.variables
    assert isinstance(served["AGE"], int) and served["MOOD"] in [" happy", " sad", " so-so"]


def test_a_query_from_lmql_model_random() -> None:
    @lmql.query
    def greet(name):
        """lmql
        argmax
            "Hello {name}, [REPLY]"
        from
            lmql.model("random", seed=123)
        where
            len(TOKENS(REPLY)) < 6 and STOPS_AT(REPLY, ".")
        """

    reply = greet("Ada")
    assert isinstance(reply, cogql.LMQLResult)
    text = reply["REPLY"]
    same = cogql.run_sync(
        '"Hello {name}, [REPLY]" where len(TOKENS(REPLY)) < 6 and STOPS_AT(REPLY, ".")',
        name="Ada",
        model=cogql.model("random", seed=123),
    )
    assert text == same["REPLY"] and text
    by_name = cogql.run_sync('argmax "Hi [X]" from "random" where len(TOKENS(X)) < 4')
    as_argument = cogql.run_sync('"Hi [X]" where len(TOKENS(X)) < 4', model="random")
    assert as_argument["X"] == by_name["X"]
    assert (
        by_name["X"]
        == cogql.run_sync('"Hi [X]" where len(TOKENS(X)) < 4', model=cogql.model("random", seed=0))[
            "X"
        ]
    )


# --------------------------------------------------------------------------- behind a server


@pytest.fixture
async def server(engine: Engine) -> AsyncIterator[BackgroundServer]:
    s = await asyncio.to_thread(BackgroundServer(engine).start)
    try:
        yield s
    finally:
        await close_connections()
        await asyncio.to_thread(s.stop)


async def test_the_same_text_behind_a_websocket_server(server: BackgroundServer) -> None:
    query = '"Remote or not: [X]" where len(TOKENS(X)) < 10'
    local = await cogql.run(query, model=cogql.model("random", seed=SEED))
    remote_model = cogql.model("random", endpoint=server.url)
    remote = await cogql.run(query, model=remote_model)
    assert remote["X"] == local["X"]
    info = await (await remote_model.connect()).client.model_info()
    assert (info["model"], info["seed"]) == ("random", SEED)
    scored = await cogql.score("Pick:", [" a", " b c"], model=remote_model)
    here = await cogql.score("Pick:", [" a", " b c"], model=cogql.model("random", seed=SEED))
    assert scored.logprobs() == pytest.approx(here.logprobs(), abs=1e-6)


# --------------------------------------------------------------------------- llama.cpp: names


def test_llama_cpp_names_the_gguf_file() -> None:
    gguf = embedded_gguf()
    folder = resolve_model_path(f"local:llama.cpp:{gguf}")
    assert folder == resolve_model_path(f"llama.cpp:{gguf}") == resolve_model_path(None)


def test_llama_cpp_errors_say_what_is_wrong(tmp_path: Path) -> None:
    missing = tmp_path / "llama-2-7b.Q4_K_M.gguf"
    with pytest.raises(ModelNotFound, match=f"the GGUF file {re.escape(str(missing))} does not"):
        resolve_model_path(f"local:llama.cpp:{missing}")
    old = tmp_path / "ggml-model-q4_0.bin"
    old.write_bytes(b"ggml")
    with pytest.raises(ModelNotFound, match=r"is not a \.gguf file"):
        resolve_model_path(f"llama.cpp:{old}")
    with pytest.raises(ModelNotFound, match="names no file"):
        resolve_model_path("local:llama.cpp:")


@pytest.mark.slow
def test_a_query_on_a_llama_cpp_model(embedded_path: Path) -> None:
    query = '"The capital of France is[X]" where len(TOKENS(X)) < 4'
    spelled = cogql.model(f"local:llama.cpp:{embedded_gguf()}", tokenizer=str(embedded_path))
    assert cogql.run_sync(query, model=spelled)["X"] == cogql.run_sync(query, model=None)["X"]
