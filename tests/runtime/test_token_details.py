"""Details for a listener that asks (`token_details`): per-token events with alternatives and
the count the constraints allowed, the beam decoders' search tree, calls sent ahead used or
cancelled. Without the block, none of it is reported."""

from __future__ import annotations

import pytest

import cogql
from cogql.engine.engine import Engine
from cogql.runtime.events import (
    HypothesisGrown,
    ModelCall,
    QueryEvent,
    SearchStep,
    TokenGenerated,
    token_details,
)
from cogql.tokenizer import Tokenizer
from tests.runtime.test_ahead import CHAIN, speculating

DETAIL_EVENTS = (TokenGenerated, HypothesisGrown, SearchStep)


async def events_of(source: str, top: int | None = 3, **kwargs: object) -> list[QueryEvent]:
    events: list[QueryEvent] = []
    if top is None:
        await cogql.run(source, output=events.append, **kwargs)
    else:
        with token_details(top):
            await cogql.run(source, output=events.append, **kwargs)
    return events


async def test_without_details_no_detail_event_is_reported() -> None:
    events = await events_of('argmax "Say:[X]" where len(TOKENS(X)) < 5', top=None)
    assert not [e for e in events if isinstance(e, DETAIL_EVENTS)]
    calls = [e for e in events if isinstance(e, ModelCall)]
    assert len(calls) == 1 and calls[0].id > 0 and calls[0].status == "done"


async def test_each_token_is_reported_with_its_alternatives() -> None:
    events = await events_of('argmax "Say:[X]" where len(TOKENS(X)) < 5', top=3)
    tokens = [e for e in events if isinstance(e, TokenGenerated)]
    (call,) = [e for e in events if isinstance(e, ModelCall)]
    (value,) = [e.value for e in events if isinstance(e, cogql.VariableFinished)]
    assert len(tokens) == 4 and "".join(t.text for t in tokens) == value
    assert [t.start for t in tokens] == [sum(len(u.text) for u in tokens[:i]) for i in range(4)]
    for t in tokens:
        assert t.call == call.id and t.variable == "X"
        logprobs = [a.logprob for a in t.alternatives]
        assert len(t.alternatives) == 3 and logprobs == sorted(logprobs, reverse=True)
        assert t.alternatives[0].token == t.token  # argmax takes the most likely
        assert t.allowed == 49152  # no grammar: the whole vocabulary


async def test_the_count_allowed_follows_the_grammar() -> None:
    source = 'argmax "Pick:[X]" where X in [" red", " green", " blue"]'
    events = await events_of(source, top=5)
    tokens = [e for e in events if isinstance(e, TokenGenerated)]
    assert tokens and 1 <= tokens[0].allowed <= 3  # ' red' / ' green' / ' blue' (or prefixes)
    first = tokens[0]
    assert next(a for a in first.alternatives if a.token == first.token).allowed is True


async def test_beam_reports_its_search_tree() -> None:
    events = await events_of('beam(n=3) "Say:[X]" where len(TOKENS(X)) < 3', top=3)
    grown = {e.id: e for e in events if isinstance(e, HypothesisGrown)}
    steps = [e for e in events if isinstance(e, SearchStep)]
    (root,) = [g for g in grown.values() if g.parent is None]
    assert all(g.parent in grown for g in grown.values() if g is not root)
    final = steps[-1]
    assert final.final and len(final.finished) == 3
    assert all(grown[i].complete for i in final.finished)
    scores = [grown[i].logprob for i in final.finished]
    assert scores == sorted(scores, reverse=True)
    for step in steps[:-1]:
        assert all(i in grown for i in (*step.kept, *step.finished))


async def test_requests_sent_ahead_are_marked_used_or_cancelled(
    random_engine: Engine, tokenizer: Tokenizer
) -> None:
    """As in test_ahead: B and the options are sent ahead with A; STOPS_BEFORE cuts A, so
    they are cancelled and sent again; the second ones go ahead with B and are used."""
    model, _ = speculating(random_engine, tokenizer)
    source = CHAIN.format(extra=' and STOPS_BEFORE(A, "e")').replace("< 5", "< 40")
    events = await events_of(source, top=2, model=model)
    calls = [(c.kind, c.ahead, c.status) for c in events if isinstance(c, ModelCall)]
    assert ("GENERATE", True, "cancelled") in calls
    assert ("SCORE", True, "cancelled") in calls
    assert ("SCORE", True, "done") in calls  # the options scored after B, in B's message
    assert calls[0] == ("GENERATE", False, "done")


def test_token_details_takes_a_positive_count() -> None:
    with pytest.raises(ValueError, match="positive"), token_details(0):
        pass


def test_a_call_on_replicate_names_the_prediction_it_went_in() -> None:
    from cogql.lmtp.cost import PredictionCost, track_cost
    from cogql.runtime.calls import model_call

    assert model_call("GENERATE", 3, 1, None).prediction is None  # not on Replicate
    with track_cost() as cost:
        cost.add_prediction(PredictionCost("p1", ("GENERATE", "SCORE")))
        cost.add_prediction(PredictionCost("p2", ("GENERATE",)))
        call = model_call("GENERATE", 3, 1, None, ahead=True)
    assert (call.prediction, call.predictions, call.ahead) == (2, 2, True)


def no_e(text: str) -> bool:
    return "e" not in text


async def test_a_hole_decoded_token_by_token_reports_the_tokens_it_kept() -> None:
    """A Python-only constraint: one GENERATE per token and backtracking. The tokens kept are
    reported once the search settles, each with the call that ranked it, the model's ranking
    there and the count the grammar part allowed; no rejected token is among them."""
    source = 'argmax "Name a fruit:[X]" where len(TOKENS(X)) < 5 and no_e(X)'
    events = await events_of(source, top=4, no_e=no_e)
    tokens = [e for e in events if isinstance(e, TokenGenerated)]
    calls = {e.id for e in events if isinstance(e, ModelCall)}
    (value,) = [e.value for e in events if isinstance(e, cogql.VariableFinished)]
    assert tokens and "".join(t.text for t in tokens) == value and "e" not in value
    assert [t.start for t in tokens] == [
        sum(len(u.text) for u in tokens[:i]) for i in range(len(tokens))
    ]
    for t in tokens:
        assert t.variable == "X" and t.call in calls
        assert 1 <= len(t.alternatives) <= 4 and t.allowed == 49152
        assert t.token in {a.token for a in t.alternatives}
        ranked = [a.logprob for a in t.alternatives]
        assert ranked == sorted(ranked, reverse=True)
        assert next(a for a in t.alternatives if a.token == t.token).logprob == t.logprob
