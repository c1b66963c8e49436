"""Constraints on a scripted model, which writes a given reply to a given prompt: each test knows
where the number ends, where the stop phrases fall and when the model would stop by itself, so
it can check exactly what a constraint cut or kept. The client enforces the constraints here
(LMQL's method, as against an LMQL server); the engine-side twins of these tests run on
SmolLM2 in the full tier (test_constraints.py)."""

from __future__ import annotations

from collections.abc import Callable

import cogql
from tests.conftest import Scripted

LIST = "Fruits: apple, banana, cherry,"
REPLY = " pear, plum! fig, kiwi, lime, date."


def run(script: Callable[..., Scripted], prompt: str, reply: str, query: str) -> cogql.LMQLResult:
    result = cogql.run_sync(query, model=script({prompt: reply}).model)
    assert isinstance(result, cogql.LMQLResult)
    return result


def test_int_ends_at_the_first_non_digit(script: Callable[..., Scripted]) -> None:
    r = run(script, "Count: 1, 2, 3,", " 4, 5, 6", 'argmax "Count: 1, 2, 3,[N]" where INT(N)')
    assert r["N"] == 4 and r.prompt == "Count: 1, 2, 3, 4"


def test_an_int_hole_gives_its_value_to_python(script: Callable[..., Scripted]) -> None:
    model = script({"Count: 1, 2, 3,": " 41, 42"}).model
    assert (
        cogql.run_sync('argmax\n    "Count: 1, 2, 3,[N: int]"\n    return N + 1', model=model) == 42
    )


def test_stops_at_keeps_the_phrase_and_generates_nothing_after_it(
    script: Callable[..., Scripted],
) -> None:
    calls: list[int] = []

    def on_event(event: cogql.QueryEvent) -> None:
        if isinstance(event, cogql.ModelCall) and event.kind == "GENERATE":
            calls.append(event.tokens)

    query = f'argmax "{LIST}[A]" where STOPS_AT(A, ",") and len(TOKENS(A)) < 10'
    r = cogql.run_sync(query, model=script({LIST: REPLY}).model, output=on_event)
    assert r["A"] == " pear," and r.prompt == LIST + " pear,"
    assert sum(calls) == len(script().transport.tokenizer.encode(" pear,"))


def test_stops_before_drops_the_phrase(script: Callable[..., Scripted]) -> None:
    r = run(script, LIST, REPLY, f'argmax "{LIST}[A]" where STOPS_BEFORE(A, ",")')
    assert r["A"] == " pear" and r.prompt == LIST + " pear"


def test_the_first_of_several_stop_phrases_wins(script: Callable[..., Scripted]) -> None:
    query = f'argmax "{LIST}[A]" where STOPS_BEFORE(A, "!") and STOPS_BEFORE(A, ",")'
    assert run(script, LIST, REPLY, query)["A"] == " pear"
    query = f'argmax "{LIST}[A]" where STOPS_AT(A, "!") and STOPS_AT(A, "kiwi")'
    assert run(script, LIST, REPLY, query)["A"] == " pear, plum!"


def test_a_stop_phrase_waits_for_its_token_length_sibling(script: Callable[..., Scripted]) -> None:
    """LMQL: a stop phrase is ignored while a sibling `len(TOKENS(X)) > N` is still false."""
    query = f'argmax "{LIST}[A]" where STOPS_AT(A, ",") and len(TOKENS(A)) > 4'
    assert run(script, LIST, REPLY, query)["A"] == " pear, plum! fig,"


def test_a_stop_phrase_waits_for_its_length_sibling(script: Callable[..., Scripted]) -> None:
    """The first "," comes too early for len(A) > 8; the stop fires at the next one."""
    query = f'argmax "{LIST}[A]" where STOPS_AT(A, ",") and len(A) > 8 and len(TOKENS(A)) < 20'
    assert run(script, LIST, REPLY, query)["A"] == " pear, plum! fig,"


def test_a_stop_under_or_is_unconditional(script: Callable[..., Scripted]) -> None:
    query = f'argmax "{LIST}[A]" where len(TOKENS(A)) > 8 or STOPS_AT(A, ",")'
    assert run(script, LIST, REPLY, query)["A"] == " pear,"


def test_the_model_ending_its_reply_ends_the_hole(script: Callable[..., Scripted]) -> None:
    r = run(script, "Q: Is water wet?\nA:", " Yes.", 'argmax "Q: Is water wet?\\nA:[A]"')
    assert r["A"] == " Yes." and r.prompt == "Q: Is water wet?\nA: Yes."


def test_options_follow_the_scripted_choice(script: Callable[..., Scripted]) -> None:
    query = 'argmax "Q: Is water wet?\\nA:[A]" where A in [" yes", " no", " maybe so"]'
    assert run(script, "Q: Is water wet?\nA:", " maybe so", query)["A"] == " maybe so"
    assert run(script, "Q: Is water wet?\nA:", " no thanks", query)["A"] == " no"


def test_a_constraint_overrides_the_script(script: Callable[..., Scripted]) -> None:
    """Off its script (the mask forbids its token) the model writes noise, within the mask."""
    query = 'argmax "Q: Is water wet?\\nA:[A]" where not "e" in A and len(TOKENS(A)) < 4'
    value = run(script, "Q: Is water wet?\nA:", " Yes, very.", query)["A"]
    assert value and "e" not in value
