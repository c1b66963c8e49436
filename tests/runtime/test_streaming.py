"""Streaming and observability: `cogql.stream` as an async iterator of a query's events ending in
QueryFinished, the same events as the `output=` callback, cancellation when the consumer stops,
errors raised by the iterator, and `cogql run --trace` printing each model call with its token
counts and time."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

import cogql
from cogql.cli import main
from cogql.runtime.query import InputError
from tests.conftest import Scripted

QUERY = (
    '"Q: Name a color.\\nA:[A]\\nQ: And a fruit?\\nA:[B]" '
    "where len(TOKENS(A)) < 3 and len(TOKENS(B)) < 3"
)


async def collect(stream: cogql.QueryStream) -> list[Any]:
    return [event async for event in stream]


async def test_stream_yields_the_events_in_order_and_then_the_result() -> None:
    events = await collect(cogql.stream(QUERY))
    *running, last = events
    assert isinstance(last, cogql.QueryFinished)
    result = last.result
    assert isinstance(result, cogql.LMQLResult)
    text = "".join(e.text for e in running if isinstance(e, cogql.TextAppended))
    assert text == result.prompt  # the prompt, piece by piece
    finished = [(e.name, e.value) for e in running if isinstance(e, cogql.VariableFinished)]
    assert finished == [("A", result["A"]), ("B", result["B"])]
    calls = [e for e in running if isinstance(e, cogql.ModelCall)]
    assert [c.kind for c in calls] == ["GENERATE", "GENERATE"]
    assert all(c.prompt_tokens > 0 and 1 <= c.tokens <= 2 and c.seconds > 0 for c in calls)
    # a hole's text arrives before its VariableFinished, and its call after its tokens
    kinds = [type(e).__name__ for e in running if not isinstance(e, cogql.TextAppended)]
    assert kinds == ["ModelCall", "VariableFinished", "ModelCall", "VariableFinished"]


async def test_stream_matches_the_output_callback_and_feeds_it_too() -> None:
    seen: list[Any] = []
    streamed = await collect(cogql.stream(QUERY, output=seen.append))
    called: list[Any] = []
    result = await cogql.run(QUERY, output=called.append)
    strip = [_no_time(e) for e in streamed[:-1]]
    assert strip == [_no_time(e) for e in called] == [_no_time(e) for e in seen]
    assert streamed[-1].result == result


def _no_time(event: Any) -> Any:
    return (
        (type(event).__name__, event.kind, event.tokens)
        if isinstance(event, cogql.ModelCall)
        else event
    )


async def test_stream_of_a_query_function_with_arguments() -> None:
    @cogql.query
    async def ask(thing: str):
        """lmql
        "Name a {thing}:[X]" where len(TOKENS(X)) < 3
        return X.strip()
        """

    events = await collect(cogql.stream(ask, "fruit"))
    program_text = [e.text for e in events if isinstance(e, cogql.TextAppended) and not e.variable]
    assert "".join(program_text) == "Name a fruit:"
    assert events[-1] == cogql.QueryFinished(await ask("fruit"))


async def test_leaving_the_loop_early_cancels_the_query() -> None:
    stream = cogql.stream('"Count to ten: 1, 2,[X]" where len(TOKENS(X)) < 40')
    async with stream:
        async for event in stream:
            if isinstance(event, cogql.TextAppended) and event.variable == "X":
                break
    assert stream._task is not None and stream._task.cancelled()
    # the engine is free again: the next query runs normally
    assert (await cogql.run('"Hi[X]" where len(TOKENS(X)) < 2'))["X"]


async def test_an_error_in_the_query_is_raised_by_the_iterator() -> None:
    stream = cogql.stream('"Hello {name}[X]"')
    with pytest.raises(InputError, match="name"):
        await collect(stream)


async def test_events_of_several_results_carry_their_run_index(random_model: cogql.Model) -> None:
    events = await collect(
        cogql.stream('sample(n=2, seed=5) "Q:[X]" where len(TOKENS(X)) < 3', model=random_model)
    )
    finished = [e for e in events if isinstance(e, cogql.VariableFinished)]
    assert sorted(e.run for e in finished) == [0, 1]
    results = events[-1].result
    assert [r["X"] for r in results] == [
        next(e.value for e in finished if e.run == i) for i in range(2)
    ]


def test_cli_trace_prints_each_model_call_with_tokens_and_time(tmp_path: Any) -> None:
    path = tmp_path / "two.lmql"
    path.write_text(QUERY)
    out = CliRunner().invoke(main, ["run", str(path), "--trace"])
    assert out.exit_code == 0, out.output
    lines = re.findall(r"model call GENERATE run=0 prompt=(\d+) tokens=(\d+) (\d+) ms", out.output)
    assert len(lines) == 2
    first, second = ((int(p), int(t)) for p, t, _ in lines)
    assert 1 <= first[1] <= 2 and 1 <= second[1] <= 2
    assert second[0] > first[0] + first[1]  # the second prompt holds the first answer and more


def test_asyncio_queue_is_not_bound_before_iteration() -> None:
    # a stream can be made outside a running loop and iterated inside one
    stream = cogql.stream('"Hi[X]" where len(TOKENS(X)) < 2')
    events = asyncio.run(collect(stream))
    assert isinstance(events[-1], cogql.QueryFinished)


@pytest.mark.parametrize(
    ("query", "prompt", "reply", "value", "text", "cut"),
    [
        # STOPS_BEFORE drops the "." and what follows
        ('"Q: Name three colours, one per line.\\nA:[X]" where STOPS_BEFORE(X, ".") '
         "and len(TOKENS(X)) < 30", "Q: Name three colours, one per line.\nA:",
         " 1. Red, 2. Blue", " 1", " 1", "."),
        # INT ends at the character after the number, which the value loses
        ('"Q: 2+2=? Answer with a number then a full stop.\\nA:[X:int]"',
         "Q: 2+2=? Answer with a number then a full stop.\nA:", " 2. That is all.", 2, " 2", "."),
    ],
)  # fmt: skip
async def test_streamed_text_never_shows_what_the_value_loses(
    script: Callable[..., Scripted],
    query: str,
    prompt: str,
    reply: str,
    value: Any,
    text: str,
    cut: str,
) -> None:
    """On a model scripted to write `reply` after the prompt."""
    model = script({prompt: reply}).model
    events = await collect(cogql.stream(query, model=model))
    pieces = [e.text for e in events if isinstance(e, cogql.TextAppended) and e.variable == "X"]
    result = events[-1].result
    assert result["X"] == value
    assert "".join(pieces) == result.prompt.split("A:")[-1] == text
    assert not any(cut in piece for piece in pieces)
