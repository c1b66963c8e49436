"""LMQL's stock output writers as cogql event callbacks, for `output_writer=` / `output=`.

LMQL's writers receive the interpreter's whole state on every step; cogql's receive its events,
so these print the same thing from less: `printing` streams the prompt, `stream("VAR")` streams
the text of the named variables, `silent` and `headless` print nothing.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .events import QueryEvent, TextAppended, VariableFinished


class PrintingWriter:
    """Streams the prompt of the first result to a file (stdout) as it is written."""

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file

    def __call__(self, event: QueryEvent) -> None:
        out = self.file or sys.stdout
        if isinstance(event, TextAppended) and event.run == 0:
            out.write(event.text)
            out.flush()


class StreamWriter:
    """Streams only the named variables' text, a line break after each finished value."""

    def __init__(self, variables: str | list[str], file: TextIO | None = None) -> None:
        self.variables = {variables} if isinstance(variables, str) else set(variables)
        self.file = file

    def __call__(self, event: QueryEvent) -> None:
        out = self.file or sys.stdout
        if not isinstance(event, TextAppended | VariableFinished) or event.run != 0:
            return
        if isinstance(event, TextAppended) and event.variable in self.variables:
            out.write(event.text)
            out.flush()
        elif isinstance(event, VariableFinished) and event.name in self.variables:
            out.write("\n")
            out.flush()


def silent(event: QueryEvent) -> None:
    """No output."""


headless = silent  # LMQL's headless also refuses input(); cogql has no input() yet
printing = PrintingWriter()


def stream(variables: str | list[str]) -> StreamWriter:
    """LMQL's `lmql.stream("VAR")` writer (in `cogql.compat`; `cogql.stream` iterates events)."""
    return StreamWriter(variables)
