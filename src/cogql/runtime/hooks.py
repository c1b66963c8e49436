"""What the interpreter does around a hole besides generating it: variable decorators
(`[@f X]`, runtime/decorators.py) and nested-query tactics (`[X: q]`, runtime/nested.py).

`QueryRun.fill` asks `HoleHooks.of` first; a plain hole has no hooks and costs nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .decorators import DecoratorContext, HoleDecorators, TemplateVariable
from .events import OnEvent, QueryEvent, TextAppended, VariableFinished
from .nested import Tactic, run_tactic, tactic_of

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
        self._on_event: OnEvent | None = None

    @classmethod
    def of(cls, run: QueryRun, hole: Hole, scope: dict[str, Any]) -> HoleHooks | None:
        """The hooks of a hole, or None for a hole without decorators or a tactic."""
        if not hole.decorators and hole.type_expr is None:
            return None
        env = {**run.scope, **run.variables, **scope}
        decorators = HoleDecorators.of(hole.name, hole.decorators, env)
        tactic = tactic_of(hole, env, run.query.source)
        if decorators is None and tactic is None:
            return None
        return cls(run, hole, env, decorators, tactic)

    def context(self) -> DecoratorContext:
        return DecoratorContext(self.hole.name, self.run.text, dict(self.run.variables))

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
            run.prompt_ids()
            run.ids.extend(run.conn.tokenizer.encode(prompt_text))
            run.text += prompt_text
            run.emit(TextAppended(prompt_text, name, run.index))
            self._finish(value)
            return True
        self._stream_to_decorators()
        if self.tactic is None:
            return False
        value = await run_tactic(self.run, self.hole, self.tactic, self.env)
        if self.decorators is not None:  # post decorators see the nested query's value
            self.run.on_event = self._on_event
            value = self._post_tactic(value)
        self._finish(value)
        return True

    def after(self, value: Any, prompt_text: str) -> tuple[Any, str]:
        """The value and prompt text of a generated hole, after its post decorators."""
        if self.decorators is None:
            return value, prompt_text
        self.run.on_event = self._on_event
        return self.decorators.post(value, prompt_text, self.context())

    def _post_tactic(self, value: Any) -> Any:
        """Post decorators on a nested query's value may change its value, not its text (the
        text is already in the prompt)."""
        assert self.decorators is not None
        new, _ = self.decorators.post(value, str(value), self.context())
        return new

    def _finish(self, value: Any) -> None:
        run = self.run
        run.hole_ends.append(len(run.ids))
        run.variables[self.hole.name] = value
        run.emit(VariableFinished(self.hole.name, value, run.index))

    def _stream_to_decorators(self) -> None:
        """Route the hole's text events through the streaming decorators while it is generated
        (`after` puts the run's own callback back)."""
        if self.decorators is None:
            return
        self._on_event = outer = self.run.on_event
        decorators, name, partial = self.decorators, self.hole.name, [""]

        def on_event(event: QueryEvent) -> None:
            if isinstance(event, TextAppended) and event.variable == name:
                partial[0] += event.text
                decorators.stream(partial[0], self.context())
            if outer is not None:
                outer(event)

        self.run.on_event = on_event
