"""The `distribution` clause on the embedded model: P(VAR) / log P(VAR) in the result, the
chosen value, values equal to LMQL's method (mean token log-prob per option, normalised)
recomputed here with plain transformers, and all options scored in one batched SCORE op and one
batched forward pass that reuses the KV cache of the prompt."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pytest

import cogql
from cogql.engine.engine import Engine
from cogql.language.errors import QueryCompileError
from cogql.lmtp.messages import Generate, ModelInfo, Op, Score
from cogql.runtime.events import ModelCall, QueryEvent
from cogql.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tests.conftest import ForwardLog, HFReference

OPTIONS = [" red", " dark blue", " light green"]  # one single-token and two multi-token options
PROMPT = "Q: What color is the sky?\\nA:"
PROMPT_TEXT = "Q: What color is the sky?\nA:"
QUERY = f'argmax\n    "{PROMPT}[C]"\ndistribution C in {OPTIONS!r}'


@pytest.fixture(scope="module")
def result(engine: Engine) -> cogql.LMQLResult:
    engine.call(
        engine.cache.clear
    ).result()  # a cold cache: the prompt is encoded in float32 (see test_engine.py)
    return cogql.run_sync(QUERY)


@pytest.fixture
def submitted(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[list[Op]]:
    """Every batch of ops the engine receives (the real submit still runs)."""
    batches: list[list[Op]] = []
    real = engine.submit

    def submit(ops: list[Op], sink: Any) -> Any:
        batches.append(list(ops))
        return real(ops, sink)

    monkeypatch.setattr(engine, "submit", submit)
    return batches


def test_result_fields(result: cogql.LMQLResult) -> None:
    assert result.distribution_variable == "C"
    assert result.distribution_values == OPTIONS
    probs = result.variables["P(C)"]
    logps = result.variables["log P(C)"]
    assert [o for o, _ in probs] == OPTIONS == [o for o, _ in logps]
    assert math.isclose(sum(p for _, p in probs), 1.0, abs_tol=1e-9)
    for (_, p), (_, lp) in zip(probs, logps, strict=True):
        assert 0 < p < 1 and math.isclose(p, math.exp(lp), rel_tol=1e-9)


def test_chosen_value_is_the_most_likely_option(result: cogql.LMQLResult) -> None:
    best = max(result.variables["P(C)"], key=lambda item: item[1])[0]
    assert result["C"] == best
    assert result.prompt == PROMPT_TEXT + best


def test_values_follow_lmqls_method(result: cogql.LMQLResult, hf_reference: HFReference) -> None:
    prompt = [1, *hf_reference.encode(PROMPT_TEXT)]  # BOS, then the prompt text
    means = []
    for option in OPTIONS:
        logprobs = hf_reference.continuation_logprobs(prompt, hf_reference.encode(option))
        means.append(sum(logprobs) / len(logprobs))
    norm = math.log(sum(math.exp(m) for m in means))
    expected = [m - norm for m in means]
    got = [lp for _, lp in result.variables["log P(C)"]]
    assert got == pytest.approx(expected, abs=1e-4)


def test_options_are_scored_in_one_batched_op_and_pass(
    engine: Engine, submitted: list[list[Op]], forwards: ForwardLog
) -> None:
    engine.call(engine.cache.clear).result()
    events: list[QueryEvent] = []
    cogql.run_sync(QUERY, output=events.append)
    scores = [batch for batch in submitted if any(isinstance(op, Score) for op in batch)]
    assert len(scores) == 1 and len(scores[0]) == len(OPTIONS)
    assert all(isinstance(op, Score) for op in scores[0])
    assert len({tuple(op.prompt) for op in scores[0]}) == 1
    assert [e.kind for e in events if isinstance(e, ModelCall)] == ["SCORE"]
    # one pass for the prompt, one batched pass for the tails of the two multi-token options
    assert forwards.shapes == [(1, len(scores[0][0].prompt)), (2, 1)]


def test_score_after_a_hole_reuses_the_prompts_kv_cache(
    engine: Engine, submitted: list[list[Op]], forwards: ForwardLog, tokenizer: Tokenizer
) -> None:
    engine.call(engine.cache.clear).result()
    q = (
        f'argmax\n    "{PROMPT}[X]\\nSo the colour is[C]"\n'
        f"where len(TOKENS(X)) < 4\ndistribution C in {OPTIONS!r}"
    )
    result = cogql.run_sync(q)
    (batch,) = [b for b in submitted if any(isinstance(op, Generate) for op in b)]
    generate, *scores = batch  # the options travel with the hole's GENERATE, `after` it
    assert isinstance(generate, Generate) and len(scores) == len(OPTIONS)
    assert all(isinstance(op, Score) and op.after == generate.stream_id for op in scores)
    assert len(submitted) == 1  # no SCORE of its own
    suffix = scores[0].prompt  # the text between X and C
    assert tokenizer.decode(suffix) == "\nSo the colour is"
    assert result.cost is not None
    full = len(generate.prompt) + result.cost.tokens_received + len(suffix)
    *passes, tails = forwards.shapes
    assert passes[0] == (1, len(generate.prompt))
    assert tails == (2, 1)
    # every token of the SCORE prompt went through the model exactly once, across the GENERATE
    # and the SCORE: nothing was re-encoded
    assert all(b == 1 for b, _ in passes)
    assert sum(n for _, n in passes) == full


def test_options_from_an_input() -> None:
    q = f'argmax\n    "{PROMPT}[C]"\ndistribution C in colours'
    result = cogql.run_sync(q, colours=[" blue", " green"])
    assert result.distribution_values == [" blue", " green"]
    assert result["C"] in (" blue", " green")


def test_empty_options_are_an_error() -> None:
    with pytest.raises(QueryCompileError, match="no values"):
        cogql.run_sync(f'argmax\n    "{PROMPT}[C]"\ndistribution C in opts', opts=[])


def test_options_scored_ahead_are_dropped_when_the_hole_was_cut(
    engine: Engine, submitted: list[list[Op]], tokenizer: Tokenizer
) -> None:
    """The options go out with X's GENERATE, but STOPS_BEFORE cuts the newline off X, so the
    final prompt is not the one they were scored after: they are scored again, on it."""
    q = (
        'argmax\n    "Colours:\\n1. Red\\n2. Blue\\n3.[X] So:[C]"\n'
        'where STOPS_BEFORE(X, "\\n") and len(TOKENS(X)) < 20\n'
        f"distribution C in {OPTIONS!r}"
    )
    result = cogql.run_sync(q)
    first, second = [b for b in submitted if not isinstance(b[0], ModelInfo)]
    generate, *ahead = first
    assert isinstance(generate, Generate) and generate.stop == ["\n"]
    assert all(isinstance(op, Score) and op.after == generate.stream_id for op in ahead)
    assert all(isinstance(op, Score) and op.after is None for op in second)
    text = tokenizer.decode(second[0].prompt)
    assert text.endswith(result["X"] + " So:") and "\n" not in result["X"]
    assert len(result.variables["P(C)"]) == len(OPTIONS)
