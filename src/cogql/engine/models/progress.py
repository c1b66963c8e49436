"""What a user sees while a model converts or loads: a step list for the one-time GGUF
conversion, and transformers' own bars and warnings kept out of the way."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["Step", "Steps", "gguf_tensors_counted", "no_progress_bars", "quiet_transformers"]

from ...locations import progress_shown

log = logging.getLogger("cogql.engine.models")


class Steps:
    """Progress for the one-time conversion: a rich step list on a terminal (or when
    COGQL_PROGRESS=1), else a single line, so logs in CI stay readable."""

    def __init__(self, title: str, *, progress: bool) -> None:
        self.title = title
        self.live = progress and progress_shown()
        self.progress = progress
        self._bar: Any = None

    def __enter__(self) -> Steps:
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            console = Console(file=sys.stderr)
            console.print(f"[bold]cogql[/]: {self.title} (one-time)")
            self._bar = Progress(
                SpinnerColumn(finished_text="[green]✓[/]"),
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TimeElapsedColumn(),
                console=console,
                redirect_stderr=False,
                redirect_stdout=False,
            )
            self._bar.start()
        elif self.progress:
            print(f"cogql: {self.title} (one-time)...", file=sys.stderr, flush=True)
        log.info("%s", self.title)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[Step]:
        task = self._bar.add_task(description, total=1) if self._bar is not None else None
        started = time.perf_counter()
        step = Step(self._bar, task, description)
        yield step
        step.finish()
        log.debug("%s: %.1f s", description, time.perf_counter() - started)


class Step:
    """One step's line: a bar of its parts once it knows how many there are (`measure`), else
    a spinner until it ends."""

    def __init__(self, bar: Any, task: Any, description: str) -> None:
        self._bar, self._task, self._description = bar, task, description
        self._done = self._total = 0
        self._unit = ""

    def measure(self, total: int, unit: str) -> None:
        self._total, self._unit = total, unit
        self._show()

    def advance(self) -> None:
        self._done += 1
        self._show()

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=1, completed=1)

    def _show(self) -> None:
        if self._bar is not None and self._total:
            text = f"{self._description} ({self._done}/{self._total} {self._unit})"
            self._bar.update(self._task, description=text, total=self._total, completed=self._done)


@contextlib.contextmanager
def gguf_tensors_counted(step: Step) -> Iterator[None]:
    """transformers dequantises a GGUF tensor by tensor under a tqdm bar of its own, which
    `quiet_transformers` hides (it would tear the step list apart): the same loop is counted
    into the step's bar instead."""
    from transformers import modeling_gguf_pytorch_utils as gguf_loading

    original = gguf_loading.tqdm

    def counted(tensors: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        step.measure(len(tensors), "tensors")
        for tensor in tensors:
            yield tensor
            step.advance()

    gguf_loading.tqdm = counted
    try:
        yield
    finally:
        gguf_loading.tqdm = original


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers prints tqdm bars and warnings while loading a GGUF; they would tear our own
    display apart, so silence them for the duration (errors still raise)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stderr(sink):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if sink.getvalue():
            log.debug("transformers output during conversion:\n%s", sink.getvalue())


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """A load from a converted folder takes a second; transformers' per-tensor bar is noise
    in the middle of a query's output."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
