"""llama.cpp as the engine (llama-cpp-python, `make llamacpp`): the embedded GGUF run as it
is, quantised (Q4_1), named LMQL's way (`local:llama.cpp:<file>`). Its numbers are compared
with cogql's engine on the same file loosely: cogql's engine runs the weights dequantised to
float32 and llama.cpp multiplies the 4-bit blocks with activations quantised to 8 bits, so
log-probs differ in the second decimal (see the SCORE test). One llama.cpp engine serves the
module: the process-wide in-process one that the queries use too."""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cogql
from cogql.engine.choice import open_engine, pick_engine
from cogql.engine.models import ModelOptionError, embedded_gguf
from cogql.engine.protocol import LMTPEngine
from cogql.lmtp.messages import ErrorEvent, Event, Generate, InfoEvent, ModelInfo, Op, Score
from cogql.lmtp.transports.inprocess import close_local_engine, local_engine
from cogql.tokenizer import Tokenizer
from tests.engine.ops import logprobs, run, tokens

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (make llamacpp builds and installs it)"
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROMPT = "Review: I loved this movie, the actors were great. Sentiment:"

pytestmark = pytest.mark.slow


def gguf_name() -> str:
    return f"local:llama.cpp:{embedded_gguf()}"


@pytest.fixture(scope="module")
def engine() -> Iterator[LMTPEngine]:
    opened = local_engine(gguf_name().removeprefix("local:"))
    yield opened
    close_local_engine(opened)


@pytest.fixture(scope="module")
def tok(engine: LMTPEngine) -> Tokenizer:
    return engine.tokenizer


# ---- choosing the engine ----------------------------------------------------------------


def test_a_gguf_name_runs_on_llama_cpp_and_the_embedded_model_stays_on_cogqls(engine) -> None:
    assert pick_engine(gguf_name()) == "llama.cpp"
    assert pick_engine(str(embedded_gguf())) == "llama.cpp"
    assert pick_engine(None) == pick_engine("default") == "cogql"
    assert engine.describe().startswith("llama.cpp") and engine.describe().endswith("Q4_1")


def test_llama_cpp_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ModelOptionError, match="precision it was quantised"):
        open_engine(gguf_name(), engine="llama.cpp", dtype="float32")
    with pytest.raises(ModelOptionError, match="not arguments of llama-cpp-python's Llama"):
        open_engine(gguf_name(), engine="llama.cpp", n_ctxx=512)
    with pytest.raises(ModelOptionError, match="random model runs on cogql's engine"):
        open_engine("random", engine="llama.cpp")


# ---- the ops ----------------------------------------------------------------------------


def test_model_info_hands_out_the_gguf_tokenizer(engine) -> None:
    out = run(engine, [ModelInfo(0, "m", {"tokenizer": True})])
    (event,) = out[0]
    assert isinstance(event, InfoEvent)
    info = event.model_info
    assert info["engine"] == "llama.cpp" and info["dtype"] == "Q4_1"
    assert set(info["capabilities"]) >= {"grammar", "stop", "min_tokens", "seed", "after"}
    assert "tokenizer" in info
    cogqls = local_engine(None).tokenizer  # the converted folder's, as cogql's engine has it
    assert engine.tokenizer.encode(PROMPT) == cogqls.encode(PROMPT)
    assert engine.tokenizer.vocab_size == cogqls.vocab_size


def test_greedy_tokens_come_with_the_log_softmax_of_their_logits(engine, tok) -> None:
    op = Generate(0, "m", tok.encode(PROMPT), max_tokens=8, top_logprobs=5)
    out = run(engine, [op])[0]
    assert len(out) == 8 and out[-1].finish_reason == "length"
    for event in out:
        top = list(event.top_logprobs.items())
        assert top[0][0] == event.token and len(top) == 5  # greedy: the chosen is the top one
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert all(lp <= 0 for _, lp in top)
    again = run(engine, [op])[0]  # from llama.cpp's cache this time: the same
    assert tokens(again) == tokens(out)
    assert logprobs(again) == pytest.approx(logprobs(out), abs=1e-4)


def test_a_grammar_holds_and_ends_the_stream(engine, tok) -> None:
    grammar = 'start: " " ("positive" | "negative" | "mixed") "." /[0-9]/'
    op = Generate(0, "m", tok.encode(PROMPT), max_tokens=20, grammar=grammar, top_logprobs=2)
    out = run(engine, [op])[0]
    text = tok.decode(tokens(out))
    assert re.fullmatch(r" (positive|negative|mixed)\.[0-9]", text), text
    assert out[-1].finish_reason == "stop"


def test_stop_strings_and_min_tokens(engine, tok) -> None:
    prompt = tok.encode("A list of fruits, one per line:\n-")
    ops: list[Op] = [
        Generate(0, "m", prompt, max_tokens=40, stop=["\n"]),
        Generate(1, "m", prompt, max_tokens=40, stop=["\n"], min_tokens=6),
        Generate(2, "m", prompt, max_tokens=40, min_tokens=40),  # EOS never before 40
    ]
    out = run(engine, ops)
    assert tok.decode(tokens(out[0])).endswith("\n") and out[0][-1].finish_reason == "stop"
    assert len(tokens(out[1])) >= 6
    assert len(tokens(out[2])) == 40


def test_logit_bias_and_seeded_sampling(engine, tok) -> None:
    prompt = tok.encode(PROMPT)
    first = tokens(run(engine, [Generate(0, "m", prompt, max_tokens=1)])[0])[0]
    biased = run(engine, [Generate(0, "m", prompt, max_tokens=1, logit_bias={first: -100})])
    assert tokens(biased[0])[0] != first
    sampled = [tokens(run(engine, [Generate(i, "m", prompt, 8, 1.0, seed=7)])[i]) for i in (1, 2)]
    assert sampled[0] == sampled[1]  # the same seed, the same tokens
    other = [tokens(run(engine, [Generate(3, "m", prompt, 8, 1.0, seed=s)])[3]) for s in (8, 9)]
    assert sampled[0] != other[0] or sampled[0] != other[1]


def test_scores_are_close_to_cogqls_engine_on_the_same_file(engine, tok) -> None:
    """Loosely: the same GGUF, dequantised to float32 on one side and run in 4 bits with
    8-bit activations on the other."""
    prompt = tok.encode("Here is a review of a film. The plot was slow but fine. Verdict:")
    options = [tok.encode(" good"), tok.encode(" bad"), tok.encode(" mixed feelings")]
    ops: list[Op] = [Score(i, "m", prompt, o) for i, o in enumerate(options)]
    theirs = run(engine, ops)
    ours = run(local_engine(None), ops)
    for i in range(len(options)):
        assert theirs[i][-1].finish_reason == "stop"
        assert len(logprobs(theirs[i])) == len(options[i])
        assert logprobs(theirs[i]) == pytest.approx(logprobs(ours[i]), abs=0.35)
    order = sorted(range(3), key=lambda i: sum(logprobs(theirs[i])))
    assert order == sorted(range(3), key=lambda i: sum(logprobs(ours[i])))
    again = run(engine, ops)  # the prompt kept in llama.cpp's cache: the same figures
    for i in range(len(options)):
        assert logprobs(again[i]) == pytest.approx(logprobs(theirs[i]), abs=1e-4)


def test_after_chains_run_on_the_generated_tokens(engine, tok) -> None:
    prompt = tok.encode(PROMPT)
    ops: list[Op] = [
        Generate(0, "m", prompt, max_tokens=5),
        Score(1, "m", tok.encode(" Overall:"), tok.encode(" good"), after=0),
        Generate(2, "m", tok.encode(" So"), max_tokens=3, after=0),
    ]
    out = run(engine, ops)
    generated = tokens(out[0])
    direct = run(
        engine, [Score(1, "m", prompt + generated + tok.encode(" Overall:"), tok.encode(" good"))]
    )
    assert logprobs(out[1]) == pytest.approx(logprobs(direct[1]), abs=1e-4)
    alone = run(engine, [Generate(2, "m", prompt + generated + tok.encode(" So"), max_tokens=3)])
    assert tokens(out[2]) == tokens(alone[2])


def test_cancel_stops_the_stream_and_the_engine_serves_on(engine, tok) -> None:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    (handle,) = engine.submit(
        [Generate(0, "m", tok.encode(PROMPT), 400, min_tokens=400)], events.put
    )
    events.get(timeout=60)  # it runs
    handle.cancel()
    time.sleep(1.0)
    seen = events.qsize()
    time.sleep(1.0)
    assert events.qsize() == seen  # nothing more after the cancel took effect
    assert seen < 399
    assert tokens(run(engine, [Generate(1, "m", tok.encode(PROMPT), 2)])[1])


def test_bad_ops_fail_alone(engine, tok) -> None:
    prompt = tok.encode(PROMPT)
    ops: list[Op] = [
        Generate(0, "m", [10**7], max_tokens=2),
        Generate(1, "m", prompt, max_tokens=2, grammar="start: (("),
        Score(2, "m", prompt, []),
        Generate(3, "m", prompt, max_tokens=2),
        Score(4, "m", prompt, tok.encode(" x"), after="nobody"),
        Generate(5, "m", prompt * 400, max_tokens=2),  # over the context (4096 tokens)
        Score(6, "m", tok.encode(" x"), tok.encode(" y"), after=1),  # after a failed one
    ]
    out = run(engine, ops)
    assert "outside the vocabulary" in out[0][0].error
    assert out[1][0].error.startswith("invalid grammar:")
    assert "at least one token" in out[2][0].error
    assert len(tokens(out[3])) == 2
    assert isinstance(out[4][0], ErrorEvent) and "names no GENERATE" in out[4][0].error
    assert "exceed the model's context" in out[5][0].error
    assert "did not end" in out[6][0].error


def test_no_room_left_ends_at_once(engine, tok) -> None:
    out = run(engine, [Generate(0, "m", tok.encode(PROMPT), max_tokens=0)])
    assert [e.finish_reason for e in out[0]] == ["length"]


# ---- queries ----------------------------------------------------------------------------


def test_the_sentiment_query_keeps_its_constraints(engine) -> None:
    source = (EXAMPLES / "sentiment.lmql").read_text(encoding="utf-8")
    result = cogql.run_sync(source, model=cogql.model(gguf_name()))
    analysis = result["ANALYSIS"]
    assert "\n" not in analysis.rstrip("\n") and len(engine.tokenizer.encode(analysis)) < 200
    assert result["CLASSIFICATION"] in (" positive", " negative", " neutral")
    distribution = dict(result.variables["P(CLASSIFICATION)"])
    assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-3)


def _things(result: Any) -> list[str]:
    return [line[2:].strip() for line in result.prompt.splitlines()[2:] if line.startswith("- ")]


def _token_count(result: Any, name: str) -> int:
    return len(local_engine(gguf_name().removeprefix("local:")).tokenizer.encode(str(result[name])))


CHECKS: dict[str, Callable[[Any], bool]] = {
    "constraints_combined.lmql": lambda r: _token_count(r, "STORY") > 40,
    "constraints_int.lmql": lambda r: isinstance(r["N"], int) and len(str(r["N"])) < 16,
    "constraints_length.lmql": lambda r: len(r["NAME"]) < 10,
    "constraints_python.lmql": lambda r: (
        not any(c.isdigit() for c in r["NAME"]) and len(r["NAME"]) + len(r["OTHER"]) < 30
    ),
    "constraints_regex.lmql": lambda r: re.fullmatch(r"[0-9]{2}/[0-9]{2}", r["DATE"]) is not None,
    "constraints_set.lmql": lambda r: (
        len(_things(r)) == 4 and set(_things(r)) <= {"Volleyball", "Sunscreen", "Bathing Suit"}
    ),
    "constraints_stops.lmql": lambda r: r["THING"].endswith("\n") or _token_count(r, "THING") == 14,
    "constraints_token_length.lmql": lambda r: _token_count(r, "GREETINGS") < 10,
    "constraints_types.lmql": lambda r: (
        isinstance(r["AGE"], int)
        and re.fullmatch("[a-z]+", r["NAME"]) is not None
        and r["PET"] != r["NAME"]
    ),
}


def test_every_constraint_example_is_checked() -> None:
    assert sorted(CHECKS) == sorted(p.name for p in EXAMPLES.glob("constraints_*.lmql"))


@pytest.mark.parametrize("example", sorted(CHECKS))
def test_every_constraint_example_holds(engine, example: str) -> None:
    source = (EXAMPLES / example).read_text(encoding="utf-8")
    result = cogql.run_sync(source, model=cogql.model(gguf_name()))
    assert CHECKS[example](result), (example, result.variables)
