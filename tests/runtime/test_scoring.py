"""`cogql.score` (LMQL's `lmql.score`, §7.3): LMQL's shapes, numbers checked against plain
transformers, the aggregations and the softmax over values, every value in one SCORE message,
agreement with the log-probs the decoders report, and errors that cost no model call."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

import cogql
from cogql.engine.engine import Engine
from cogql.lmtp.client import LMTPClient
from cogql.lmtp.messages import Op
from cogql.lmtp.transports.base import Cancellable, EventCallback
from cogql.lmtp.transports.inprocess import InProcessTransport
from cogql.runtime.model import ConnectedModel
from cogql.runtime.scoring import ScoringError
from cogql.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tests.conftest import HFReference

PROMPT = "Q: Is the sky blue?\nA:"
VALUES = [" yes", " no", " maybe so"]


def test_shapes_as_lmql() -> None:
    """LMQL's own check: one value, one value token, and prompt + value in the full scores."""
    result = cogql.score_sync("Test", "Test")
    assert len(result.seqs) == 1
    assert result.token_scores[0].shape == (1,)
    assert len(result.full_token_scores[0]) == 2
    assert result.continuations == ["Test"]


def test_scores_match_plain_transformers(tokenizer: Tokenizer, hf_reference: HFReference) -> None:
    result = cogql.score_sync(PROMPT, VALUES)
    prompt_ids = tokenizer.encode(PROMPT)
    for value, seq, full in zip(VALUES, result.seqs, result.full_token_scores, strict=True):
        ids = prompt_ids + tokenizer.encode(value)
        assert seq.value == value and seq.input_ids.tolist() == ids
        expected = hf_reference.continuation_logprobs([tokenizer.bos_token_id], ids)
        np.testing.assert_allclose(full, expected, atol=2e-3)
    for tokens, full in zip(result.token_scores, result.full_token_scores, strict=True):
        assert tokens.tolist() == full[len(prompt_ids) :].tolist()


def test_aggregations_softmax_and_argmax() -> None:
    result = cogql.score_sync(PROMPT, VALUES)
    sums = np.array([t.sum() for t in result.token_scores])
    lengths = np.array([len(t) for t in result.token_scores])
    assert lengths.tolist() == [1, 1, 2]
    np.testing.assert_allclose(result.scores(), sums)
    np.testing.assert_allclose(result.scores("mean"), sums / lengths)
    np.testing.assert_allclose(result.scores("normalized"), sums / lengths**0.7)
    np.testing.assert_allclose(result.scores("normalized", alpha=1.0), sums / lengths)
    for agg in ("sum", "mean", "normalized"):
        probs = result.probs(agg)
        assert probs.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(np.exp(result.logprobs(agg)), probs)
        assert result.argmax(agg) == VALUES[int(np.argmax(result.scores(agg)))]
    # the softmax keeps the scores' differences
    lp = result.logprobs()
    assert lp[0] - lp[1] == pytest.approx(sums[0] - sums[1])
    with pytest.raises(ScoringError, match="unknown aggregation 'max'"):
        result.scores("max")
    assert repr(result).splitlines()[1].startswith("-' yes': ")


class CountingTransport(InProcessTransport):
    """The in-process transport, recording what each message carried."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.messages: list[list[str]] = []

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Cancellable]:
        self.messages.append([type(op).__name__ for op in ops])
        return super().send(ops, on_event)


async def test_all_values_go_in_one_score_message(
    random_engine: Engine, tokenizer: Tokenizer
) -> None:
    transport = CountingTransport(random_engine)
    client = LMTPClient(transport, model="counted", tokenizer=tokenizer)
    caps = await client.capabilities()
    transport.messages.clear()
    model = cogql.Model(
        "counted", _connection=ConnectedModel(client, tokenizer, caps, tokenizer.bos_token_id)
    )
    result = await model.score(PROMPT, VALUES)
    assert transport.messages == [["Score"] * len(VALUES)]
    assert result.model_identifier == "counted"
    assert len(result.seqs) == len(VALUES)


def test_scores_agree_with_the_log_probs_decoders_report(tokenizer: Tokenizer) -> None:
    """An unconstrained argmax hole that ran to its token limit: its log-prob is its tokens'
    log-probs, which score() computes for the same text."""
    prompt = "Once upon a time"
    result = cogql.run_sync(f'argmax\n    "{prompt}[X]"\nwhere len(TOKENS(X)) < 4')
    assert len(tokenizer.encode(result["X"])) == 3  # ended by the limit, not by EOS
    scored = cogql.score_sync(prompt, result["X"])
    assert scored.scores()[0] == pytest.approx(result.logprob, abs=0.02)


def test_beam_over_single_token_options_ranks_them_as_score_does(tokenizer: Tokenizer) -> None:
    """With `in` options of one token each, a hypothesis' masked log-prob is the softmax of the
    option scores, so beam and best_k give score()'s ranking and its log-probs."""
    options = [" red", " blue", " green", " yellow", " black"]
    assert all(len(tokenizer.encode(o)) == 1 for o in options)
    prompt = "My favourite colour is"
    scored = cogql.score_sync(prompt, options)
    order = np.argsort(-scored.scores(), kind="stable")
    for decoder in ("beam(n=3)", "best_k(n=3)"):
        results = cogql.run_sync(f'{decoder}\n    "{prompt}[X]"\nwhere X in {options!r}')
        assert [r["X"] for r in results] == [options[i] for i in order[:3]]
        expected = [scored.logprobs()[i] for i in order[:3]]
        assert [r.logprob for r in results] == pytest.approx(expected, abs=0.02)


async def test_model_score_on_a_random_model(random_model: cogql.Model) -> None:
    result = await random_model.score("Hello", [" world", " there", " everyone"])
    assert result.model_identifier == random_model.model_identifier
    assert result.probs().sum() == pytest.approx(1.0)
    assert all(math.isfinite(s) for s in result.scores())
    assert result.argmax() == result.continuations[int(np.argmax(result.scores()))]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "at least one value"),
        ([" ok", ""], "non-empty strings, got ''"),
        ([" ok", 3], "non-empty strings, got 3"),
    ],
)
def test_bad_values_are_rejected_before_any_model_call(values: Any, message: str) -> None:
    unusable = cogql.model("local:/nonexistent/model")  # never loaded: the check comes first
    with pytest.raises(ScoringError, match=message):
        cogql.score_sync(PROMPT, values, model=unusable)


async def test_score_sync_inside_a_running_loop_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="cannot be called synchronously"):
        cogql.score_sync(PROMPT, VALUES)
