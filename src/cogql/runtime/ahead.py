"""Sending the rest of a prompt statement ahead, in the message of the hole being generated.

When only program text stands between a hole and the next ones (or the `distribution`
variable), the client can know their requests before the hole's value: each next hole is a
GENERATE and the options a SCORE, sent `after` the hole's GENERATE (the `after` extension), so
that over Replicate a whole prompt statement costs one prediction. They are guesses: a request
sent ahead is used only if it is exactly the request the run makes when it gets there (same
prompt, hence the hole before it ended as generated and was not cut back; same grammar, stops,
limits and seed). Otherwise it is cancelled and the run sends its own.

Holes ahead are sent only where round trips are what costs (`LMTPClient.speculate`, set for
Replicate): in-process, a wrong guess would only waste compute. Options ahead are cheap (one
batched SCORE) and are sent wherever the server has the extension.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..language.expressions import evaluate
from ..language.qstrings import Hole, Interpolation, Text
from ..lmtp.client import Followup, GenerateAfter, ScoreAfter
from ..lmtp.messages import Generate
from .scope import statement_names

if TYPE_CHECKING:
    from ..language.compiler import PromptStatement
    from .interpreter import QueryRun

Plan = list[tuple[str, Hole | None]]
"""What follows a hole in its statement: (text before it, the next hole), the last one None
when it is the distribution variable."""


def plan_after(segments: list[Any], distribution: str | None, values: list[Any]) -> Plan:
    """The holes after a hole with only text (or interpolated values) between them, up to
    the distribution variable when it ends the statement."""
    plan: Plan = []
    text: list[str] = []
    pending = iter(values)
    for i, seg in enumerate(segments):
        if isinstance(seg, Text):
            text.append(seg.text)
        elif isinstance(seg, Interpolation):
            text.append(str(next(pending)))
        elif not isinstance(seg, Hole):
            break
        elif seg.name == distribution:
            if i == len(segments) - 1:
                plan.append(("".join(text), None))
            break
        else:
            plan.append(("".join(text), seg))
            text = []
    return plan


@dataclass
class _Read:
    """The last GENERATE the run read: what the server generated after (`ended`: to its end)."""

    prompt: list[int]
    tokens: list[int]
    ended: bool


@dataclass
class _ScoresAhead:
    ids: list[int]  # the prompt they were scored after
    request: ScoreAfter


@dataclass
class Ahead:
    """A run's requests in flight ahead of it, in the order the run will reach them."""

    chain: list[Followup] = field(default_factory=list)
    last: _Read | None = None
    scores: _ScoresAhead | None = None
    # told (kind, prompt tokens) of each request sent ahead and then not used (details only)
    on_cancel: Callable[[str, int], None] | None = None

    def followups(
        self, run: QueryRun, stmt: PromptStatement, plan: Plan, scope: dict[str, Any]
    ) -> list[Followup]:
        """The requests to send with the hole about to be generated, as far as they can be
        known now."""
        out: list[Followup] = []
        encode = run.conn.tokenizer.encode
        for k, (text, hole) in enumerate(plan, 1):
            if hole is None:
                options = _known_values(run, scope)
                if options:
                    out.append(ScoreAfter(encode(text), [encode(o) for o in options]))
                break
            if not run.conn.client.speculate:
                break
            op = _hole_ahead(run, stmt, hole, scope, k, encode(text))
            if op is None:
                break
            out.append(GenerateAfter(op))
        return out

    def take(self, op: Generate) -> GenerateAfter | None:
        """The GENERATE sent ahead for `op`, if it is `op` exactly; else nothing ahead holds
        any more, and it is all cancelled."""
        head = self.chain[0] if self.chain else None
        last = self.last
        if isinstance(head, GenerateAfter) and head.sent and last is not None and last.ended:
            guessed = replace(head.op, prompt=last.prompt + last.tokens + head.op.prompt)
            if _request(guessed) == _request(op):
                self.chain.pop(0)
                return head
        self.drop()
        return None

    def read(self, op: Generate, tokens: list[int], ended: bool, sent: Sequence[Followup]) -> None:
        """`op`'s stream was read (to its end or not); `sent` went with it."""
        self.last = _Read(list(op.prompt), list(tokens), ended)
        if sent:
            self.drop()
            self.chain = list(sent) if all(f.sent for f in sent) else []
        head = self.chain[0] if self.chain else None
        if isinstance(head, ScoreAfter):
            self.chain.pop(0)
            if ended:
                self.scores = _ScoresAhead(op.prompt + tokens + head.suffix, head)

    async def scored(self, ids: list[int], options: list[list[int]]) -> list[list[float]] | None:
        """The options' scores sent ahead, if they were scored after `ids`."""
        ahead, self.scores = self.scores, None
        if ahead is None:
            return None
        if ahead.ids != ids or ahead.request.options != options:
            self._cancelled(ahead.request)
            return None
        return await ahead.request.result

    def drop(self) -> None:
        """Cancel whatever is still ahead (the run went another way, or ended)."""
        for followup in self.chain:
            if isinstance(followup, GenerateAfter):
                followup.cancel()
            else:
                followup.settle(None)
            self._cancelled(followup)
        self.chain = []

    def _cancelled(self, followup: Followup) -> None:
        if self.on_cancel is not None and followup.sent:
            if isinstance(followup, GenerateAfter):
                self.on_cancel("GENERATE", len(followup.op.prompt))
            else:
                self.on_cancel("SCORE", len(followup.suffix))


def _request(op: Generate) -> Generate:
    """What makes two GENERATEs the same request, whatever their ids and position."""
    return replace(op, stream_id=None, model="", after=None)


def _hole_ahead(
    run: QueryRun, stmt: PromptStatement, hole: Hole, scope: dict, k: int, prompt: list[int]
) -> Generate | None:
    """The GENERATE the run will send for `hole`, k holes from now, with `prompt` (the text
    before it) to follow the hole before, if it can be known."""
    if hole.decorators or hole.type_expr not in (None, "int", "str"):
        return None  # a decorator or a nested query may fill it some other way
    try:
        spec = run.hole_spec(stmt, hole, scope)
    except Exception:  # it depends on what is not generated yet; the run will say
        return None
    if spec.check is not None or spec.max_tokens is None:
        return None  # the slow path, or a limit that depends on the prompt's final length
    return run.hole_op(spec, spec.max_tokens, prompt, run.hole_seed(k))


def _known_values(run: QueryRun, scope: dict[str, Any]) -> list[str] | None:
    """The distribution's options if they can be known before its hole (no calls, nothing
    that is not defined yet)."""
    dist = run.query.distribution
    if dist is None or any(isinstance(node, ast.Call) for node in ast.walk(dist.values)):
        return None
    env = statement_names(run.scope, run.variables, scope)
    try:
        found = evaluate(dist.values, {}, "<distribution>", env)
        options = [str(v) for v in found]
    except Exception:
        return None
    return options if all(options) else None
