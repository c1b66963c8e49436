"""What the interpreter does around a hole besides generating it: variable decorators
(`[@f X]`, runtime/variable_decorators.py) and nested-query tactics (`[X: q]`, runtime/nested.py).

`QueryRun.fill` asks `HoleHooks.of` first; a plain hole has no hooks and costs nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .events import TextAppended, VariableFinished
from .nested import Tactic, run_tactic, tactic_of
from .scope import statement_names
from .variable_decorators import DecoratorContext, HoleDecorators, TemplateVariable

if TYPE_CHECKING:
    from ..language.qstrings import Hole
    from .interpreter import QueryRun


class HoleHooks:
    def __init__(
        self,
        run: QueryRun,
        hole: Hole,
        env: dict[str, Any],
        decorators: HoleDecorators | None,
        tactic: Tactic | None,
    ) -> None:
        self.run = run
        self.hole = hole
        self.env = env
        self.decorators = decorators
        self.tactic = tactic
        self._streamed = 0  # tokens the streaming decorators have seen

    @classmethod
    def of(cls, run: QueryRun, hole: Hole, scope: dict[str, Any]) -> HoleHooks | None:
        """The hooks of a hole, or None for a hole without decorators or a tactic."""
        if not hole.decorators and hole.type_expr is None:
            return None
        env = statement_names(run.scope, run.variables, scope)
        decorators = HoleDecorators.of(hole.name, hole.decorators, env)
        tactic = tactic_of(hole, env, run.query.source)
        if decorators is None and tactic is None:
            return None
        return cls(run, hole, env, decorators, tactic)

    def context(self) -> DecoratorContext:
        return DecoratorContext(self.hole.name, self.run.state.text, dict(self.run.variables))

    async def before(self) -> bool:
        """Fill the hole without the interpreter generating it, when a pre decorator fixes its
        value or a nested query produces it; True when it is filled."""
        name = self.hole.name
        fixed = None
        if self.decorators is not None:
            variable = TemplateVariable(name, self.hole.type_expr)
            fixed = self.decorators.pre(variable, self.context())
        if fixed is not None:
            value, prompt_text = fixed
            run = self.run
            run.state.append_encoded(prompt_text)
            run.emit(TextAppended(prompt_text, name, run.index))
            self._finish(value)
            return True
        if self.tactic is None:
            self._start_stream()
            return False
        value = await run_tactic(self.run, self.hole, self.tactic, self.env)
        if self.decorators is not None:  # post decorators see the nested query's value
            value = self._post_tactic(value)
        self._finish(value)
        return True

    def after(self, tokens: list[int], value: Any, prompt_text: str) -> tuple[Any, str]:
        """The value and prompt text of a generated hole (its `tokens`), after its post
        decorators; the streaming decorators see the last of its text first."""
        if self.decorators is None:
            return value, prompt_text
        self._end_stream(tokens)
        return self.decorators.post(value, prompt_text, self.context())

    def _post_tactic(self, value: Any) -> Any:
        """Post decorators on a nested query's value may change its value, not its text (the
        text is already in the prompt)."""
        assert self.decorators is not None
        new, _ = self.decorators.post(value, str(value), self.context())
        return new

    def _finish(self, value: Any) -> None:
        run = self.run
        run.state.end_hole()
        run.variables[self.hole.name] = value
        run.emit(VariableFinished(self.hole.name, value, run.index))

    # LMQL calls a streaming decorator once per decoding step with the hole's text so far (the
    # raw text: a stop phrase that will be cut included): twice with "" as the hole starts,
    # once per token, and once more with the whole text when the hole ends.
    def _start_stream(self) -> None:
        if self.decorators is None or not self.decorators.streams:
            return
        for _ in range(2):
            self.decorators.stream("", self.context())
        self.run.on_tokens = self._stream_tokens

    def _stream_tokens(self, tokens: list[int]) -> None:
        assert self.decorators is not None
        decode = self.run.conn.tokenizer.decode
        for k in range(self._streamed + 1, len(tokens) + 1):
            self.decorators.stream(decode(tokens[:k]), self.context())
        self._streamed = max(self._streamed, len(tokens))

    def _end_stream(self, tokens: list[int]) -> None:
        """The calls the hole's generation did not make itself (a decoder that replays
        tokens, or the slow path), then the final one."""
        if self.run.on_tokens is None:
            return
        self.run.on_tokens = None
        self._stream_tokens(tokens)
        assert self.decorators is not None
        self.decorators.stream(self.run.conn.tokenizer.decode(tokens), self.context())
