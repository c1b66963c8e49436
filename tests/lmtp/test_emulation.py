"""LMQL's method for servers without cogql's extensions: the same queries, run with the
extensions emulated client-side (masks as ±100 logit_bias, stop phrases checked by the client,
a new GENERATE when the mask changes), give the same results as with the server enforcing them."""

from __future__ import annotations

import pytest

import cogql
from tests.conftest import FAST_MODEL_SEED

QUERIES = [
    'argmax "Q: Name a fruit.\\nA:[A]" where STOPS_AT(A, ".") and len(TOKENS(A)) < 12',
    'argmax "Q: Name a fruit.\\nA:[A]" where STOPS_BEFORE(A, " ") and len(TOKENS(A)) < 12',
    'argmax "The sky is[A]" where A in [" blue", " green today", " red"]',
    'argmax "Count: 1, 2, 3,[N]" where INT(N) and len(TOKENS(N)) < 4',
    'argmax "Date: [D]" where REGEX(D, r"[0-9]{4}-[0-9]{2}")',
    'argmax "Hello[A]" where len(TOKENS(A)) > 3 and len(TOKENS(A)) < 6',
]


@pytest.fixture(scope="module")
def plain() -> cogql.Model:
    """The default model of the fast tier (the random model), without the extensions."""
    return cogql.model("random", seed=FAST_MODEL_SEED, extensions=False)


@pytest.mark.parametrize("query", QUERIES)
def test_emulated_extensions_give_the_same_result(query: str, plain: cogql.Model) -> None:
    native = cogql.run_sync(query)
    emulated = cogql.run_sync(query, model=plain)
    assert emulated.prompt == native.prompt
    assert emulated.variables == native.variables


def test_a_changing_mask_costs_a_new_request(plain: cogql.Model) -> None:
    """Digits are one token each (SmolLM2's tokenizer): the first request runs under their mask
    until the dash, the only allowed token, is taken locally; the digits after it need a
    second request. The engine enforcing the grammar needs one."""
    query = 'argmax "Date: [D]" where REGEX(D, r"[0-9]{4}-[0-9]{2}")'
    native_ops, emulated_ops = count_ops(query, None), count_ops(query, plain)
    assert native_ops == 1
    assert emulated_ops == 2


def count_ops(query: str, model: cogql.Model | None) -> int:
    from cogql.lmtp.messages import Generate
    from cogql.lmtp.transports.inprocess import InProcessTransport

    sent: list[int] = []
    original = InProcessTransport.send

    def counting(self: InProcessTransport, ops: list, on_event: object) -> list:
        sent.append(sum(isinstance(op, Generate) for op in ops))
        return original(self, ops, on_event)  # type: ignore[arg-type]

    InProcessTransport.send = counting  # type: ignore[method-assign]
    try:
        cogql.run_sync(query, model=model) if model else cogql.run_sync(query)
    finally:
        InProcessTransport.send = original  # type: ignore[method-assign]
    return sum(sent)
