"""Requests sent ahead (runtime/ahead.py), on the weightless random model in-process: with
`speculate` on (as over Replicate), a prompt statement's later holes and its distribution's
options go in the first hole's message, `after` it; a guess that the run does not take (the
hole before was cut back) is cancelled and sent again on the real prompt. Results equal those
of a run that asks for each in turn."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import cogql
from cogql.engine.engine import Engine
from cogql.lmtp.client import LMTPClient
from cogql.lmtp.messages import ENGINE_CAPABILITIES, Op, op_kind
from cogql.lmtp.transports.base import Cancellable, EventCallback
from cogql.lmtp.transports.inprocess import InProcessTransport
from cogql.runtime.model import ConnectedModel
from cogql.tokenizer import Tokenizer

CHAIN = (
    'argmax "Q:[A] and then[B] so[C]" where len(TOKENS(A)) < 5 and len(TOKENS(B)) < 4{extra}\n'
    'distribution C in [" a", " b c"]'
)


@dataclass
class Messages:
    """The in-process transport, with the kinds of the ops of each message it carried."""

    inner: InProcessTransport
    sent: list[tuple[str, ...]] = field(default_factory=list)

    async def open(self) -> None:
        await self.inner.open()

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Cancellable]:
        self.sent.append(tuple(op_kind(op) for op in ops))
        return self.inner.send(ops, on_event)

    async def close(self) -> None:
        await self.inner.close()


def speculating(engine: Engine, tokenizer: Tokenizer) -> tuple[cogql.Model, Messages]:
    transport = Messages(InProcessTransport(engine))
    client = LMTPClient(transport, model="random", tokenizer=tokenizer)
    client.known_capabilities = frozenset(ENGINE_CAPABILITIES)
    client.speculate = True
    conn = ConnectedModel(client, tokenizer, client.known_capabilities, tokenizer.bos_token_id)
    return cogql.Model("random", _connection=conn), transport


def test_a_statement_goes_in_one_message_with_its_holes_sent_ahead(
    random_engine: Engine, tokenizer: Tokenizer
) -> None:
    model, transport = speculating(random_engine, tokenizer)
    source = CHAIN.format(extra="")
    remote = cogql.run_sync(source, model=model)
    local = cogql.run_sync(source)  # the random model, asked for each hole in turn
    assert remote.prompt == local.prompt
    got = [p for _, p in remote.variables["P(C)"]]
    assert got == pytest.approx([p for _, p in local.variables["P(C)"]], abs=1e-4)
    assert transport.sent == [("GENERATE", "GENERATE", "SCORE", "SCORE")]


def test_a_hole_sent_ahead_is_sent_again_when_the_one_before_was_cut(
    random_engine: Engine, tokenizer: Tokenizer
) -> None:
    """STOPS_BEFORE cuts A's stop phrase off, so B's prompt is not the one it was sent ahead
    with: B and the options after it go again, on the real prompt."""
    model, transport = speculating(random_engine, tokenizer)
    source = CHAIN.format(extra=' and STOPS_BEFORE(A, "e")').replace("< 5", "< 40")
    remote = cogql.run_sync(source, model=model)
    local = cogql.run_sync(source)
    assert "e" not in remote["A"] and remote.prompt == local.prompt
    got = [p for _, p in remote.variables["P(C)"]]
    assert got == pytest.approx([p for _, p in local.variables["P(C)"]], abs=1e-4)
    assert transport.sent == [
        ("GENERATE", "GENERATE", "SCORE", "SCORE"),
        ("GENERATE", "SCORE", "SCORE"),
    ]
